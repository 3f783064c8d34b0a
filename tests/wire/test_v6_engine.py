"""The engine's IPv6 cookies against the Linux kernel, through codec6 (v6_helpers.EngineHost).

- A kernel client connects over IPv6 to our listener with SYN cookies always on:
  the connection is rebuilt from the cookie (IPv6 MSS table) and echoes.
- A kernel client (net.ipv4.tcp_fastopen=1, which covers IPv6) gets a Fast Open
  cookie from our listener and uses it: its second SYN's data is accepted.
- Our client gets a cookie from a kernel server with a fixed key, equal to
  tfo.make_cookie over the two IPv6 addresses, and its next SYN's data is
  acknowledged by the kernel's SYN-ACK.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tcpscapy.core import Config, State
from tcpscapy.core import events as ev
from tcpscapy.core.connection import Connection
from tcpscapy.core.segment import ACK, SYN
from tcpscapy.core.stack import Listener, Stack
from tcpscapy.core.tfo import make_cookie, parse_key
from tcpscapy.lab import Lab
from tests.wire.v6_helpers import KERNEL6, EngineHost, enable_ipv6

pytestmark = pytest.mark.wire
LAB_PREFIX = "v6"
OURS6 = "fd77::99"  # our engine's address; no kernel in the lab has it
PORT = 8080
TFO_KEY = "a0bf63f7-ed803d81-cd641d30-cebc4a90"
CFG = Config(secret=b"v6-wire-test", mss=1440)

# A kernel client: one connection per text argument, sent with MSG_FASTOPEN when
# argv[3] is "tfo" (else offering MSS 1430); prints what came back until the server closed.
CLIENT = r"""
import socket, sys
host, port, tfo = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tfo"
for text in sys.argv[4:]:
    with socket.socket(socket.AF_INET6) as s:
        if tfo:
            s.sendto(text.encode(), socket.MSG_FASTOPEN, (host, port))
        else:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1430)  # SYN offers MSS 1430
            s.settimeout(15)
            s.connect((host, port))
            s.sendall(text.encode())
        s.settimeout(15)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        print(got.decode(), flush=True)
"""


@pytest.fixture
def server(lab: Lab) -> Iterator[EngineHost]:
    enable_ipv6(lab, "client", "server")
    host = EngineHost(lab, "server", "client", OURS6, Stack(CFG))
    try:
        yield host
    finally:
        host.close()


def echo(listener: Listener, accepted: list[Connection]) -> None:
    """The application: accept, echo every byte back, close after the peer's FIN."""
    while (conn := listener.accept()) is not None:
        accepted.append(conn)
    for conn in accepted:
        while (event := conn.next_event()) is not None:
            if isinstance(event, ev.DataReceived):
                conn.data_consumed(len(event.data))
                conn.send(event.data)
            elif isinstance(event, ev.PeerClosed):
                conn.close()


def run_kernel_client(lab: Lab, engine: EngineHost, listener: Listener, mode: str,
                      *texts: str) -> tuple[str, list[Connection]]:
    proc = lab.popen("client", [sys.executable, "-c", CLIENT, OURS6, str(PORT), mode, *texts],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accepted: list[Connection] = []
    finished = engine.run_until(lambda: proc.poll() is not None,
                                app=lambda: echo(listener, accepted))
    if not finished:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    assert finished and proc.returncode == 0, err
    # Let our side finish its close (the client's last ACK) before the test looks.
    engine.run_until(lambda: all(c.state in (State.CLOSED, State.TIME_WAIT) for c in accepted),
                     seconds=5, app=lambda: echo(listener, accepted))
    return out, accepted


def test_syn_cookies_over_ipv6_with_a_kernel_client(lab: Lab, server: EngineHost) -> None:
    listener = server.stack.listen(OURS6, PORT, config=CFG.with_(syncookies="always"))
    out, accepted = run_kernel_client(lab, server, listener, "plain", "hello over six")
    assert out == "hello over six\n"
    assert listener.counters["cookies_sent"] == listener.counters["cookies_validated"] == 1
    # 1430 falls to 1420 in the IPv6 table (1480 - 60); IPv4's would give 1300.
    assert accepted[0].snd_mss == 1420
    synack = next(s for s in server.sent if s.flags == SYN | ACK)
    assert synack.options.mss == 1440


def test_a_kernel_client_gets_our_fast_open_cookie_and_uses_it(lab: Lab,
                                                                server: EngineHost) -> None:
    lab.sysctl("client", "net.ipv4.tcp_fastopen", "1")
    key = parse_key(TFO_KEY)
    listener = server.stack.listen(OURS6, PORT, config=CFG.with_(tfo_server=True, tfo_key=key))
    out, _ = run_kernel_client(lab, server, listener, "tfo", "first", "second")
    assert out == "first\nsecond\n"
    cookie = make_cookie(key, KERNEL6["client"], OURS6)
    syns = [s for s in server.received if s.flags & (SYN | ACK) == SYN]
    assert [s.options.tfo_cookie for s in syns] == [b"", cookie]  # a request, then ours
    assert syns[1].payload == b"second"
    assert listener.counters["tfo_passive"] == 1 and listener.counters["tfo_cookie_requests"] == 1


KERNEL_SERVER = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
srv.listen(16)
print("ready", flush=True)
for _ in range(2):
    conn, _ = srv.accept()
    with conn:
        print(conn.recv(100).decode(), flush=True)
"""


def test_our_client_gets_and_uses_a_kernel_fast_open_cookie(lab: Lab) -> None:
    enable_ipv6(lab, "client", "server")
    lab.sysctl("server", "net.ipv4.tcp_fastopen", "2")
    lab.sysctl("server", "net.ipv4.tcp_fastopen_key", TFO_KEY)
    proc = lab.popen("server", [sys.executable, "-c", KERNEL_SERVER, KERNEL6["server"],
                                str(PORT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    client = EngineHost(lab, "client", "server", OURS6, Stack(CFG))
    remote = (KERNEL6["server"], PORT)
    try:
        first = client.stack.connect((OURS6, 40001), remote, 0.0, data=b"one", tfo_cookie=b"")
        got: list[ev.Event] = []

        def collect(conn: Connection) -> None:
            while (event := conn.next_event()) is not None:
                got.append(event)

        assert client.run_until(lambda: first.state is State.ESTABLISHED,
                                app=lambda: collect(first))
        collect(first)
        cookies = [e for e in got if isinstance(e, ev.TfoCookieReceived)]
        assert [c.cookie for c in cookies] == [make_cookie(parse_key(TFO_KEY), OURS6, remote[0])]
        first.close()
        second = client.stack.connect((OURS6, 40002), remote, 1.0, data=b"two",
                                      tfo_cookie=cookies[0].cookie, tfo_mss=cookies[0].mss)
        assert client.run_until(lambda: second.state is State.ESTABLISHED)
        assert second.tfo is not None and second.tfo.data_acked == 3  # the SYN's data taken
        second.close()
        assert client.run_until(lambda: first.state in (State.CLOSED, State.TIME_WAIT)
                                and second.state in (State.CLOSED, State.TIME_WAIT))
        out, _ = proc.communicate(timeout=10)
        assert out.split() == ["one", "two"]
    finally:
        client.close()
