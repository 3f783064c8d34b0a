"""tcpscapy.connect / tcpscapy.listen against the Linux kernel, inside a lab.

Our engine runs in the client namespace (or the server one, for listen), the
kernel peers are python socket programs started in the other namespace. Each
test checks that the kernel peer never sees an RST from our side: its
TcpEstabResets counter stays put and a capture on its interface finds none,
while the guard's drop counter shows the kernel of our namespace did try.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import tcpscapy
from tcpscapy import errors
from tcpscapy.core.segment import ACK, RST, SYN
from tcpscapy.core.state import State
from tcpscapy.io import iptables
from tcpscapy.io.driver import Driver
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import KERNEL_SERVER as SERVER_CODE
from tests.wire.cli_helpers import close_and_check_nothing_left

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsd"
SERVER, CLIENT = "10.77.0.2", "10.77.0.1"
# Fast retransmissions, short TIME-WAIT, no timestamps.
QUICK = {"rto": 0.2, "msl": 0.2, "timestamps": False}


# Kernel clients: N threads, each sends its own bytes, half-closes, checks the echo.
CLIENTS_CODE = r"""
import os, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = []
def client(i):
    data = os.urandom(20000 + i)
    with socket.create_connection((host, port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    ok.append(got == data)
threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(ok), len(ok))
"""


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The lab; afterwards every driver is closed and nothing of ours is left behind."""
    try:
        yield lab
    finally:
        close_and_check_nothing_left(lab)


def kernel_server(lab: Lab, host: str, ip: str, mode: str = "echo") -> int:
    proc = lab.popen(host, [sys.executable, "-c", SERVER_CODE, ip, mode],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def tcp_counters(lab: Lab, host: str) -> dict[str, int]:
    """The Tcp: line of /proc/net/snmp in `host`'s namespace."""
    text = lab.run(host, ["cat", "/proc/net/snmp"], capture_output=True, text=True,
                   check=True).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    return dict(zip(names, map(int, values), strict=True))


class Capture:
    """Every IPv4/TCP frame on `host`'s eth0, to look for RSTs afterwards."""

    def __init__(self, lab: Lab, host: str) -> None:
        with lab.enter(host):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.sock.bind(("eth0", 0x0800))
        self.sock.setblocking(False)

    def resets_from(self, src: str) -> int:
        count = 0
        packed = socket.inet_aton(src)
        while True:
            try:
                frame = self.sock.recv(65536)
            except BlockingIOError:
                break
            ip = frame[14:]
            if len(ip) >= 40 and ip[9] == 6 and ip[12:16] == packed:
                tcp = ip[(ip[0] & 0xF) * 4:]
                count += bool(tcp[13] & RST)
        self.sock.close()
        return count


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def echo(conn: tcpscapy.Connection, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send `payload` from a thread while reading the echo on this one."""
    errors_seen: list[BaseException] = []

    def send() -> None:
        try:
            conn.sendall(payload, timeout=timeout)
        except BaseException as exc:  # reported below
            errors_seen.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    while len(got) < len(payload):
        chunk = conn.recv(timeout=timeout)
        if not chunk:
            break
        got += chunk
    sender.join(timeout)
    assert errors_seen == []
    return bytes(got)


def guard_dropped(conn: tcpscapy.Connection) -> int:
    guard = conn.driver.guard
    assert guard is not None
    return guard.dropped


# -- connecting to the kernel -------------------------------------------------------


def test_options_follow_the_kernels_synack(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER)
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5)
    with conn:
        synack = next(s for s in conn.trace.segments("in") if s.flags == SYN | ACK)
        syn = conn.trace.segments("out")[0]
        engine = conn.engine
        assert synack.options.mss is not None and syn.options.mss is not None
        assert engine.snd_mss == min(synack.options.mss, syn.options.mss)
        assert engine.ws_ok and engine.snd_wscale == synack.options.wscale
        assert engine.rcv_wscale == syn.options.wscale
        assert engine.sack_ok == synack.options.sack_permitted is True
        assert engine.ts_ok and synack.options.timestamps is not None
        assert synack.options.timestamps[1] == syn.options.timestamps[0]  # echoed TSval
        assert conn.state is State.ESTABLISHED
        assert (conn.local[0], conn.remote) == (CLIENT, (SERVER, port))


def test_trace_shows_a_real_handshake_rtt(net: Lab) -> None:
    """The SYN-ACK is often read in the same loop turn the SYN went out: still stamped apart."""
    from tcpscapy.trace import handshake_rtt

    port = kernel_server(net, "server", SERVER)
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5)
    with conn:
        rtt = handshake_rtt(conn.trace)
        assert rtt is not None and 0 < rtt < 0.5


def test_options_we_leave_out_the_kernel_leaves_out(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER)
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, mss=1000, wscale=None, sack=False,
                                timestamps=False)
    with conn:
        synack = next(s for s in conn.trace.segments("in") if s.flags == SYN | ACK)
        assert synack.options.wscale is None and synack.options.timestamps is None
        assert not synack.options.sack_permitted
        assert not (conn.engine.ws_ok or conn.engine.sack_ok or conn.engine.ts_ok)
        data = os.urandom(30000)
        assert echo(conn, data) == data
        sizes = [len(s.payload) for s in conn.trace.segments("in")]
        assert max(sizes) == 1000  # the kernel honours our MSS


@pytest.mark.parametrize("timestamps", [False, True])
def test_a_megabyte_echoes_intact(net: Lab, timestamps: bool) -> None:
    port = kernel_server(net, "server", SERVER)
    payload = os.urandom(1 << 20)
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, timestamps=timestamps)
    with conn:
        assert echo(conn, payload, timeout=3) == payload  # ~0.1 s when it works
        assert conn.driver.stats.send_errors == 0


# -- closing without a single RST reaching the kernel -----------------------------------


def test_active_close(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER)
    before = tcp_counters(net, "server")
    capture = Capture(net, "server")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, **QUICK)
    assert echo(conn, b"ping" * 1000) == b"ping" * 1000
    conn.close()
    assert wait_for(lambda: conn.state is State.CLOSED)
    states = [e.state_change[1] for e in conn.trace if e.state_change]
    assert states[-4:] == [State.FIN_WAIT_1, State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED] \
        or states[-4:] == [State.FIN_WAIT_1, State.CLOSING, State.TIME_WAIT, State.CLOSED]
    assert capture.resets_from(CLIENT) == 0
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]
    assert guard_dropped(conn) > 0  # the client kernel did try to reset us


def test_passive_close(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER, "greet")
    before = tcp_counters(net, "server")
    capture = Capture(net, "server")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, **QUICK)
    assert conn.recv(timeout=5) == b"hello"
    assert conn.recv(timeout=5) == b""
    assert conn.state is State.CLOSE_WAIT
    conn.close()
    assert wait_for(lambda: conn.state is State.CLOSED)
    states = [e.state_change[1] for e in conn.trace if e.state_change]
    assert states[-3:] == [State.CLOSE_WAIT, State.LAST_ACK, State.CLOSED]
    assert conn.close_reason == "closed: our FIN was acknowledged"
    assert capture.resets_from(CLIENT) == 0
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]
    assert guard_dropped(conn) > 0


def test_half_close(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER, "count")
    before = tcp_counters(net, "server")
    capture = Capture(net, "server")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, **QUICK)
    conn.sendall(b"x" * 50000)
    conn.shutdown()
    with pytest.raises(errors.ConnectionClosed):
        conn.send(b"too late")
    reply = b""
    while chunk := conn.recv(timeout=5):
        reply += chunk
    assert reply == b"got 50000"  # we kept receiving after our FIN
    assert wait_for(lambda: conn.state is State.CLOSED)
    assert State.FIN_WAIT_2 in [e.state_change[1] for e in conn.trace if e.state_change]
    assert capture.resets_from(CLIENT) == 0
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


def test_reset_by_the_kernel_raises_connection_reset(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER, "reset")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, **QUICK)
    conn.sendall(b"provoke")
    with pytest.raises(errors.ConnectionReset) as info:
        conn.recv(timeout=5)
    assert info.value.exit_code == 6
    assert conn.state is State.CLOSED
    assert conn.close_reason == "connection reset by the peer"
    assert conn.trace.segments("in")[-1].flags & RST
    with pytest.raises(errors.ConnectionReset):
        conn.send(b"after the reset")


def test_exiting_without_close_ends_with_fin_not_rst(net: Lab) -> None:
    """At interpreter exit the driver closes (FIN) while the guard still drops RSTs."""
    port = kernel_server(net, "server", SERVER)
    before = tcp_counters(net, "server")
    capture = Capture(net, "server")
    script = ("import sys, tcpscapy\n"
              "conn = tcpscapy.connect(sys.argv[1], int(sys.argv[2]), timeout=5)\n"
              "conn.sendall(b'bye' * 1000)\n"
              "print(conn.recv(timeout=5)[:3].decode())\n")  # no close(): exit does it
    result = net.run("client", [sys.executable, "-c", script, SERVER, str(port)],
                     capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "bye", "")
    assert capture.resets_from(CLIENT) == 0
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]
    with net.enter("client"):
        assert iptables.status() == []  # the exiting process took its rules along


# -- listening for kernel clients ---------------------------------------------------


def test_listener_echoes_to_many_concurrent_kernel_clients(net: Lab) -> None:
    clients = 24
    with net.enter("server"):
        server = tcpscapy.listen(0, backlog=64, **QUICK)
    before = tcp_counters(net, "client")
    capture = Capture(net, "client")
    done: list[bool] = []

    def serve(conn: tcpscapy.Connection) -> None:
        with conn:
            while data := conn.recv(timeout=20):
                conn.sendall(data, timeout=20)
        done.append(True)

    def accept_all() -> None:
        for _ in range(clients):
            threading.Thread(target=serve, args=(server.accept(timeout=20),)).start()

    acceptor = threading.Thread(target=accept_all)
    acceptor.start()
    result = net.run("client", [sys.executable, "-c", CLIENTS_CODE, SERVER, str(server.port),
                                str(clients)], capture_output=True, text=True, timeout=60)
    acceptor.join(20)
    assert result.stdout.split() == [str(clients), str(clients)], result.stderr
    assert wait_for(lambda: len(done) == clients, 10)
    server.close()
    assert capture.resets_from(SERVER) == 0
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]
    assert server.engine.syns_received == clients


def test_listener_with_syn_cookies_only(net: Lab) -> None:
    """Connections rebuilt from a cookie ACK (no SYN-RECEIVED state) are adopted too."""
    with net.enter("server"):
        server = tcpscapy.listen(0, SERVER, syncookies="always", **QUICK)

    def serve_all() -> None:
        for _ in range(5):
            with server.accept(timeout=20) as conn:
                while data := conn.recv(timeout=20):
                    conn.sendall(data, timeout=20)

    acceptor = threading.Thread(target=serve_all)
    acceptor.start()
    result = net.run("client", [sys.executable, "-c", CLIENTS_CODE, SERVER, str(server.port),
                                "5"], capture_output=True, text=True, timeout=60)
    acceptor.join(20)
    assert result.stdout.split() == ["5", "5"], result.stderr
    assert server.engine.cookies_validated == 5
    server.close()


# -- failing to connect -------------------------------------------------------------


def test_closed_port_is_refused(net: Lab) -> None:
    port = 9  # nothing listens in the server namespace
    with net.enter("client"), pytest.raises(errors.ConnectionRefused) as info:
        tcpscapy.connect(SERVER, port, timeout=5)
    assert str(info.value) == f"connection to {SERVER}:{port} refused"


def test_host_that_does_not_answer_arp_is_unreachable(net: Lab) -> None:
    started = time.monotonic()
    with net.enter("client"), pytest.raises(errors.HostUnreachable) as info:
        tcpscapy.connect("10.77.0.9", 80, timeout=10)
    assert "no ARP reply" in str(info.value)
    assert time.monotonic() - started < 8


def test_dropped_syns_time_out_after_the_retries(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER)
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP",
            "-m", "comment", "--comment", "tsd-test"]
    net.run("server", ["iptables", "-I", *rule], check=True)
    try:
        started = time.monotonic()
        with net.enter("client"), pytest.raises(errors.ConnectTimeout) as info:
            tcpscapy.connect(SERVER, port, retries=2, rto=0.2)
        elapsed = time.monotonic() - started
    finally:
        net.run("server", ["iptables", "-D", *rule], check=True)
    assert "no answer to the SYN after 2 retransmissions" in str(info.value)
    assert info.value.exit_code == 5
    assert 0.2 + 0.4 + 0.8 <= elapsed < 4


# -- loopback and the kernel's own connections --------------------------------------


def test_loopback_to_a_kernel_server(net: Lab) -> None:
    port = kernel_server(net, "client", "127.0.0.1")
    before = tcp_counters(net, "client")
    payload = os.urandom(200_000)
    with net.enter("client"):
        conn = tcpscapy.connect("127.0.0.1", port, timeout=5, rto=0.2, msl=0.2)  # TS fits lo
    assert conn.local[0] == "127.0.0.1"
    assert echo(conn, payload) == payload
    conn.close()
    assert wait_for(lambda: conn.state is State.CLOSED)
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]
    assert guard_dropped(conn) > 0


def test_the_kernels_own_connections_are_left_alone(net: Lab) -> None:
    port = kernel_server(net, "server", SERVER)
    with net.enter("client"):
        driver = Driver()  # a private driver, living in the client namespace
        ours = tcpscapy.connect(SERVER, port, timeout=5, driver=driver, **QUICK)
        theirs = socket.create_connection((SERVER, port), timeout=5)
    kernel_port = theirs.getsockname()[1]
    before = tcp_counters(net, "client")
    with ours, theirs:
        for i in range(20):
            data = b"%d" % i * 500
            theirs.sendall(data)
            got = b""
            while len(got) < len(data):
                got += theirs.recv(65536)
            assert got == data
            assert echo(ours, data) == data
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]
    assert driver.stats.foreign > 0  # we saw the kernel's segments and ignored them
    assert not any(kernel_port in (s.sport, s.dport) for s in driver.orphans.segments())
    driver.close()
