"""TCP Fast Open against the Linux kernel, both ways, inside a lab.

(a) A kernel client (MSG_FASTOPEN, net.ipv4.tcp_fastopen=1) connects twice to
    tcpscapy.listen(tfo=True): a cookie, then data in the SYN that our SYN-ACK
    acknowledges; the client kernel counts an active Fast Open and no failure.
(b) `tcpscapy connect --tfo` twice to a kernel server (tcp_fastopen=2,
    TCP_FASTOPEN on the socket): a cookie cached in a file, then stdin's first
    bytes in the SYN; the server kernel counts a passive Fast Open.
(c) tcpscapy.connect(tfo=True) with a stale cookie: the kernel acknowledges
    only the SYN and hands out a fresh cookie; our data follows the handshake.
(d) The cache file: a corrupt one is tolerated, and a kernel server with Fast
    Open off is negatively cached: the second SYN asks for no cookie.
Kernel counters are read from the namespace's /proc/net/netstat (nstat's source).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tcpscapy
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.core.state import State
from tcpscapy.core.tfo import CookieKeys, FastOpen
from tcpscapy.io.driver import close_all
from tcpscapy.io.tfo_cache import TfoCache
from tcpscapy.lab import Lab
from tcpscapy.trace import TraceEntry
from tests.wire.cli_helpers import TCPSCAPY, finish, json_objects, segments, tcpscapy_run

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsk"
SERVER, CLIENT = "10.77.0.2", "10.77.0.1"
PORT = 8080
SYN_ROOM = 1460 - 40  # data a SYN may carry to a 1460-byte MSS server (Linux keeps 40 spare)

# A kernel client: one Fast Open connection per argument, each sends its text and
# prints what came back. The first fetches a cookie; the later ones use it.
TFO_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for text in sys.argv[3:]:
    with socket.socket() as s:
        s.sendto(text.encode(), socket.MSG_FASTOPEN, (host, port))  # blocks until connected
        s.settimeout(10)  # not before: a timeout makes sendto non-blocking (EINPROGRESS)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        print(got.decode(), flush=True)
"""

# A kernel echo server that takes Fast Open (with net.ipv4.tcp_fastopen=2): prints its
# port, then echoes each connection until EOF.
TFO_SERVER = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], 0), backlog=64)
srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
print(srv.getsockname()[1], flush=True)
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The lab; afterwards every driver and CLI run is gone and no guard rule is left."""
    try:
        yield lab
    finally:
        close_all(linger=1.0)
        finish(lab)
    assert [t.name for t in threading.enumerate() if t.name.startswith("tcpscapy")] == []


def tcp_ext(lab: Lab, host: str) -> dict[str, int]:
    """The TcpExt counters of `host`'s namespace (TCPFastOpenActive, ...)."""
    text = lab.run(host, ["cat", "/proc/net/netstat"], capture_output=True, text=True,
                   check=True).stdout
    names, values = [line.split()[1:] for line in text.splitlines()
                     if line.startswith("TcpExt:")]
    return dict(zip(names, map(int, values), strict=True))


def grew(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {name: after[name] - before[name] for name in names}


def kernel_tfo_server(lab: Lab, mode: str) -> int:
    """A kernel echo server in the server host with net.ipv4.tcp_fastopen=`mode`."""
    lab.sysctl("server", "net.ipv4.tcp_fastopen", mode)
    proc = lab.popen("server", [sys.executable, "-c", TFO_SERVER, SERVER],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def handshake(entries: list[TraceEntry] | list[Segment]) -> tuple[Segment, Segment]:
    """The first SYN and SYN-ACK of a trace (entries) or of a list of segments."""
    segs = [e if isinstance(e, Segment) else e.segment for e in entries]
    syn = next(s for s in segs if s is not None and s.flags & (SYN | ACK) == SYN)
    synack = next(s for s in segs if s is not None and s.flags & (SYN | ACK) == SYN | ACK)
    return syn, synack


def json_handshake(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first SYN and SYN-ACK of a --json run."""
    segs = segments(objs)
    return (next(o for o in segs if o["flags"] == "S"),
            next(o for o in segs if o["flags"] == "SA"))


def connect_cli(lab: Lab, port: int, cache: Path, *args: str,
                input: bytes | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """`tcpscapy connect --tfo --json` in the client host: (stdout, JSON objects)."""
    result = tcpscapy_run(lab, "client", "connect", f"{SERVER}:{port}", "--tfo", "--tfo-cache",
                          str(cache), "--json", *args, input=input, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout, json_objects(result.stderr)


def fast_open_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["type"] == "fast_open")


# -- (a) the kernel's client, our server ---------------------------------------------------


def test_kernel_client_sends_data_in_the_syn_to_our_listener(net: Lab) -> None:
    net.sysctl("client", "net.ipv4.tcp_fastopen", "1")
    first, second = "cookie please", "fast open " + "0123456789abcdef" * 60
    with net.enter("server"):
        server = tcpscapy.listen(PORT, SERVER, tfo=True, msl=0.2)
    served: list[tuple[FastOpen | None, bytes, list[TraceEntry], str]] = []

    def serve_two() -> None:
        for _ in range(2):
            with server.accept(timeout=20) as conn:
                got = b""
                while chunk := conn.recv(timeout=20):
                    got += chunk
                conn.sendall(got)  # echo, then close
                conn.wait_closed(5)
                served.append((conn.fast_open, got, list(conn.trace), str(conn.trace)))

    before = tcp_ext(net, "client")
    thread = threading.Thread(target=serve_two)
    thread.start()
    result = net.run("client", [sys.executable, "-c", TFO_CLIENT, SERVER, str(PORT), first,
                                second], capture_output=True, text=True, timeout=30)
    thread.join(20)
    assert result.stdout.splitlines() == [first, second], result.stderr
    assert len(served) == 2
    key = CookieKeys.from_config(server.engine.config)
    cookie = key.cookie(CLIENT, SERVER)  # SipHash-2-4 of the addresses, as Linux makes it

    fo, got, trace, text = served[0]  # the cookie request
    syn, synack = handshake(trace)
    assert syn.options.tfo_cookie == b"" and syn.payload == b""
    assert synack.options.tfo_cookie == cookie and synack.ack == syn.seq + 1
    assert got == first.encode()
    assert fo is not None and not fo.accepted

    fo, got, trace, text = served[1]  # data in the SYN
    syn, synack = handshake(trace)
    assert syn.options.tfo_cookie == cookie and syn.payload == second.encode()
    assert synack.ack == (syn.seq + 1 + len(second)) % 2**32  # our SYN-ACK acks the data
    assert synack.options.tfo_cookie is None  # the client's cookie is current
    assert got == second.encode()  # the application got it, byte for byte
    assert fo is not None and fo.accepted and fo.syn_data == len(second)
    assert f"{len(second)} bytes rode in the SYN and were acknowledged by the SYN-ACK " \
           "(1 RTT saved)" in text

    counters = server.engine
    assert (counters.tfo_cookie_requests, counters.tfo_passive, counters.tfo_passive_fail) \
        == (1, 1, 0)
    server.close()
    # The client kernel: one active Fast Open (its SYN data acknowledged), no failure.
    assert grew(before, tcp_ext(net, "client"), "TCPFastOpenActive",
                "TCPFastOpenActiveFail") == {"TCPFastOpenActive": 1, "TCPFastOpenActiveFail": 0}


# -- (b) our client, the kernel's server -----------------------------------------------------


def test_connect_tfo_gets_a_cookie_then_sends_data_in_the_syn(net: Lab, tmp_path: Path) -> None:
    port = kernel_tfo_server(net, "2")
    cache = tmp_path / "tfo.json"
    svg = tmp_path / "ladder.svg"
    before = tcp_ext(net, "server")

    out, objs = connect_cli(net, port, cache, "--send", r"first\x00connection")
    assert out == b"first\x00connection"
    syn, synack = json_handshake(objs)
    assert syn["options"]["tfo_cookie"] == "" and syn["len"] == 0
    fast_open = fast_open_of(objs)
    cookie = fast_open["cookie_received"]
    assert fast_open["cookie_sent"] == "" and isinstance(cookie, str) and len(cookie) == 16
    entry = json.loads(cache.read_text())["servers"][SERVER]
    assert (entry["cookie"], entry["mss"], entry["experimental"]) == (cookie, 1460, False)
    assert oct(cache.stat().st_mode & 0o777) == "0o600"

    payload = os.urandom(5000)  # stdin: its first bytes ride in the SYN, the rest follows
    out, objs = connect_cli(net, port, cache, "--ladder-svg", str(svg), input=payload)
    assert out == payload  # echoed byte for byte
    syn, synack = json_handshake(objs)
    assert syn["options"]["tfo_cookie"] == cookie and syn["len"] == SYN_ROOM
    assert synack["ack"] == (syn["seq"] + 1 + SYN_ROOM) % 2**32
    assert "tfo_cookie" not in synack["options"]  # our cookie is current
    fast_open = fast_open_of(objs)
    assert (fast_open["syn_data"], fast_open["data_acked"]) == (SYN_ROOM, SYN_ROOM)
    assert fast_open["cache"] == f"cookie {cookie} accepted by {SERVER}"
    drawing = svg.read_text()
    assert "1 RTT saved" in drawing and "[TFO: data in the SYN]" in drawing

    assert grew(before, tcp_ext(net, "server"), "TCPFastOpenCookieReqd", "TCPFastOpenPassive",
                "TCPFastOpenPassiveFail") == {"TCPFastOpenCookieReqd": 1,
                                              "TCPFastOpenPassive": 1,
                                              "TCPFastOpenPassiveFail": 0}


def test_the_ladder_tells_the_fast_open_story(net: Lab, tmp_path: Path) -> None:
    port = kernel_tfo_server(net, "2")
    cache = tmp_path / "tfo.json"
    lines = []
    for _ in range(2):
        result = net.run("client", [*TCPSCAPY, "connect", f"{SERVER}:{port}", "--tfo",
                                    "--tfo-cache", str(cache), "--send", "x" * 120],
                         capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "250"})  # no wrapped arrows
        assert result.returncode == 0, result.stderr.decode()
        lines.append(result.stderr.decode())
    cookie = json.loads(cache.read_text())["servers"][SERVER]["cookie"]
    assert "[TFO cookie request]" in lines[0] and "[TFO cookie]" in lines[0]
    assert f"Fast Open: cookie requested; the SYN-ACK carried cookie {cookie}" in lines[0]
    assert f"Fast Open cache: cookie {cookie} cached for {SERVER}" in lines[0]
    assert "[TFO: data in the SYN]" in lines[1] and "[acks 120 bytes of SYN data]" in lines[1]
    assert "Fast Open: 120 bytes rode in the SYN and were acknowledged by the SYN-ACK " \
           "(1 RTT saved)" in lines[1]


# -- (c) a stale cookie ----------------------------------------------------------------------


def test_a_stale_cookie_gets_a_fresh_one_and_the_data_after_the_handshake(
        net: Lab, tmp_path: Path) -> None:
    port = kernel_tfo_server(net, "2")
    cache = TfoCache(tmp_path / "tfo.json")
    stale = bytes.fromhex("0123456789abcdef")
    cache.store_cookie(SERVER, stale, 1460)
    payload = os.urandom(3000)
    before = tcp_ext(net, "server")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, tfo=True, tfo_cache=cache,
                                data=payload, msl=0.2)
    with conn:
        conn.shutdown()
        got = b""
        while chunk := conn.recv(timeout=5):
            got += chunk
        assert got == payload
        fo = conn.fast_open
        assert fo is not None and fo.cookie_sent == stale and fo.syn_data == SYN_ROOM
        assert fo.data_acked == 0  # the kernel acknowledged only the SYN
        fresh = fo.cookie_received
        assert fresh is not None and len(fresh) == 8 and fresh != stale
        syn, synack = handshake(conn.trace.segments())
        assert synack.ack == syn.seq + 1 and synack.options.tfo_cookie == fresh
        assert conn.tfo_note == f"cookie {fresh.hex()} cached for {SERVER} (ours was stale)"
    entry = cache.get(SERVER)
    assert entry is not None and entry.cookie == fresh and entry.ignored_until == 0.0
    assert grew(before, tcp_ext(net, "server"), "TCPFastOpenPassiveFail",
                "TCPFastOpenPassive") == {"TCPFastOpenPassiveFail": 1, "TCPFastOpenPassive": 0}

    with net.enter("client"):  # the fresh cookie works
        conn = tcpscapy.connect(SERVER, port, timeout=5, tfo=True, tfo_cache=cache,
                                data=payload[:100], msl=0.2)
    with conn:
        assert conn.fast_open is not None and conn.fast_open.data_acked == 100
        assert conn.recv(timeout=5) == payload[:100]
    assert tcp_ext(net, "server")["TCPFastOpenPassive"] == before["TCPFastOpenPassive"] + 1


# -- (d) the cache file -----------------------------------------------------------------------


def test_a_corrupt_cache_file_is_tolerated(net: Lab, tmp_path: Path) -> None:
    port = kernel_tfo_server(net, "2")
    cache = tmp_path / "tfo.json"
    cache.write_bytes(b'{"servers": {"10.77.0.2": \x00\xff garbage')
    out, objs = connect_cli(net, port, cache, "--send", "hello")
    assert out == b"hello"
    assert fast_open_of(objs)["cookie_sent"] == ""  # as with no cache: asks for a cookie
    cookie = fast_open_of(objs)["cookie_received"]
    assert json.loads(cache.read_text())["servers"][SERVER]["cookie"] == cookie


def test_a_server_without_fast_open_is_negatively_cached(net: Lab, tmp_path: Path) -> None:
    port = kernel_tfo_server(net, "0")  # Fast Open off: the option is ignored
    cache = tmp_path / "tfo.json"
    notes, syns = [], []
    for text in (b"one", b"two"):
        with net.enter("client"):
            conn = tcpscapy.connect(SERVER, port, timeout=5, tfo=True, tfo_cache=cache,
                                    data=text, msl=0.2)
        with conn:
            conn.shutdown()
            assert conn.recv(timeout=5) == text
            notes.append(conn.tfo_note)
            syns.append(handshake(conn.trace.segments())[0])
            assert conn.state in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2,
                                  State.TIME_WAIT)
            fast_open = conn.fast_open
    assert syns[0].options.tfo_cookie == b""  # asked once...
    assert notes[0] == (f"{SERVER} ignored Fast Open (no cookie for our request): "
                        "no Fast Open to it for 60 min")
    assert syns[1].options.tfo_cookie is None  # ...then a plain SYN, no cookie request
    assert fast_open is None  # Fast Open played no part
    assert notes[1].startswith(f"{SERVER} ignored Fast Open (no cookie for our request); "
                               "plain SYN for another")
    entry = json.loads(cache.read_text())["servers"][SERVER]
    assert entry["cookie"] is None and entry["ignored_until"] > time.time() + 3500
