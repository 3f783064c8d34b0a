"""`tcpscapy listen` as a user runs it: one loop thread for every connection, -q, and
-v ladders whose Fast Open tags wrap whole. Kernel clients in the lab's client host."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscapy.lab import Lab
from tests.wire.cli_helpers import SERVER, finish, read_until, tcpscapy_popen

pytestmark = pytest.mark.wire
LAB_PREFIX = "co"
PORT = 7070
HELD = 20

# Opens HELD echo connections and keeps them; prints "open" once all are up, waits for a
# line on stdin, then checks each one's echo and prints how many were right.
HOLDING_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=30) for _ in range(n)]
for i, s in enumerate(socks):
    s.sendall(b"hello %d" % i)
for i, s in enumerate(socks):
    want, got = b"hello %d" % i, b""
    while len(got) < len(want):
        got += s.recv(100)
print("open", flush=True)
sys.stdin.readline()
ok = 0
for i, s in enumerate(socks):
    s.sendall(b"bye %d" % i)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(100):
        got += chunk
    ok += got == b"bye %d" % i
    s.close()
print(ok, flush=True)
"""

TFO_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for i in range(2):  # the first gets a cookie, the second sends its data in the SYN
    with socket.socket() as s:
        s.sendto(b"fast %d" % i, socket.MSG_FASTOPEN, (host, port))
        s.settimeout(10)
        s.shutdown(socket.SHUT_WR)
        while s.recv(100):
            pass
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


def start(lab: Lab, *args: str) -> subprocess.Popen[bytes]:
    proc = tcpscapy_popen(lab, "server", "listen", f"{SERVER}:{PORT}", *args)
    assert proc.stderr is not None
    read_until(proc.stderr, b"listening")
    return proc


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def test_twenty_open_connections_take_no_thread_each(net: Lab) -> None:
    server = start(net)
    client = net.popen("client", [sys.executable, "-c", HOLDING_CLIENT, SERVER, str(PORT),
                                  str(HELD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline() == b"open\n"
        # main, the driver's background thread, the loop, the reporter: not one per client
        assert threads_of(server.pid) < 8
        client.stdin.write(b"go\n")
        client.stdin.flush()
        assert client.stdout.readline() == f"{HELD}\n".encode()
    finally:
        client.stdin.close()
        client.wait(30)
        client.stdout.close()
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=30)
    assert len([x for x in err.decode().splitlines() if x.startswith("10.77.0.1:")]) == HELD


def test_quiet_prints_errors_only(net: Lab) -> None:
    server = tcpscapy_popen(net, "server", "listen", f"{SERVER}:{PORT}", "-q")
    echo = (r"import socket,sys; s=socket.create_connection((sys.argv[1],int(sys.argv[2])),"
            r"timeout=20); s.sendall(b'hi'); s.shutdown(1); print(s.recv(10))")
    for _ in range(50):  # nothing on stderr says it listens: try until it answers
        got = net.run("client", [sys.executable, "-c", echo, SERVER, str(PORT)],
                      capture_output=True, timeout=30)
        if got.returncode == 0:
            break
    assert got.stdout == b"b'hi'\n"
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=30)
    assert server.returncode == 143
    assert err.decode() == "tcpscapy listen: stopped by SIGTERM\n"


def test_verbose_ladder_keeps_fast_open_tags_whole(net: Lab,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # the default width, 120
    net.sysctl("client", "net.ipv4.tcp_fastopen", "1")
    server = start(net, "--tfo", "-v")
    done = net.run("client", [sys.executable, "-c", TFO_CLIENT, SERVER, str(PORT)],
                   capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=30)
    lines = err.decode().splitlines()
    tagged = [line for line in lines if "[TFO" in line]
    assert any("[TFO: data in the SYN]" in line for line in tagged), err.decode()
    assert all(line.rstrip(" ─▶◀").endswith("]") for line in tagged)
    ladder = [line for line in lines if not line.startswith(("counters:", "listening"))]
    assert max(map(len, ladder)) <= 120, [line for line in ladder if len(line) > 120]
