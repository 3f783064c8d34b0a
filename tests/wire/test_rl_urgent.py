"""Urgent data against the Linux kernel, both ways (MSG_OOB), inside a lab.

Linux reads TCP's urgent pointer as BSD does: the byte just before it is the
"out-of-band" byte, which recv(MSG_OOB) returns and the normal stream skips
(SO_OOBINLINE off). tcpscapy keeps every byte in the stream and reports where
the urgent data ended (Connection.urgent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

import tcpscapy
from tcpscapy.core.segment import URG
from tcpscapy.lab import Lab
from tcpscapy.trace import ladder, to_json_lines
from tests.wire.cli_helpers import close_and_check_nothing_left

pytestmark = pytest.mark.wire
LAB_PREFIX = "rl"
SERVER = "10.77.0.2"

# Kernel server: prints its port; reads the normal bytes before the mark, then the
# OOB byte (waiting for it), then the rest to EOF; prints what it got as JSON.
OOB_SERVER = r"""
import fcntl, json, select, socket, struct, sys
SIOCATMARK = 0x8905
def at_mark(s):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCATMARK, bytes(4)))[0]
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
c.settimeout(20)
assert select.select([], [], [c], 20)[2], "no urgent data announced"
before = bytearray()
while not at_mark(c):  # a normal read stops at the mark
    before += c.recv(65536)
oob = c.recv(1, socket.MSG_OOB)
rest = bytearray()
while chunk := c.recv(65536):
    rest += chunk
print(json.dumps({"before": before.decode(), "oob": oob.decode(), "rest": rest.decode()}),
      flush=True)
"""

# Kernel client: b"abc", then b"X" as MSG_OOB, then b"def", then closes.
OOB_CLIENT = r"""
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as s:
    s.sendall(b"abc")
    time.sleep(0.2)
    s.send(b"X", socket.MSG_OOB)
    time.sleep(0.2)
    s.sendall(b"def")
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    try:
        yield lab
    finally:
        close_and_check_nothing_left(lab)


def test_we_send_urgent_data_and_the_kernel_reads_it_with_msg_oob(net: Lab) -> None:
    proc = net.popen("server", [sys.executable, "-c", OOB_SERVER, SERVER],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=10, msl=0.2)
    with conn:
        conn.sendall(b"hello ")
        conn.sendall(b"world!", urgent=True)
        conn.sendall(b" after")
        conn.shutdown()
        out, _ = proc.communicate(timeout=30)
    assert json.loads(out) == {"before": "hello world", "oob": "!", "rest": " after"}
    urgent = [s for s in conn.trace.segments("out") if s.flags & URG]
    assert urgent and all(s.payload or s.urgent for s in urgent)


def test_the_kernel_sends_msg_oob_and_we_learn_where_it_ends(net: Lab) -> None:
    with net.enter("server"):
        server = tcpscapy.listen(0, SERVER, msl=0.2)
    with server:
        client = net.popen("client", [sys.executable, "-c", OOB_CLIENT, SERVER,
                                      str(server.local[1])], stderr=subprocess.PIPE, text=True)
        conn = server.accept(timeout=15)
        got = bytearray()
        while chunk := conn.recv(timeout=20):
            got += chunk
        conn.close()
        _, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert bytes(got) == b"abcXdef"  # inline, in order
    assert conn.urgent == [4]  # the urgent data ended after "abcX"
    segs = [s for s in conn.trace.segments("in") if s.flags & URG]
    assert segs and segs[0].payload == b"X" and segs[0].urgent == 1
    # The ladder and the JSON lines show the URG flag and the pointer.
    assert "urg=1 len=1" in ladder(conn.trace, width=200)
    objs = [json.loads(line) for line in to_json_lines(conn.trace)]
    assert any(o.get("urg") == 1 and "U" in o["flags"] and o["dir"] == "in" for o in objs)
