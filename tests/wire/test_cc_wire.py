"""Congestion control, loss recovery and ECN against kernel peers, through real loss.

Loss is made on the lab's switch as in test_robustness_faults (br_netfilter; iptables
FORWARD `-m statistic --mode random --probability P -j DROP`, both directions). Each
controller moves 1 MB to a kernel echo server and back, byte for byte, at 0, 1, 2 and
5 % loss: our sender (with the controller under test) and our receiver both see the
loss. ECN is checked both ways with the kernel's net.ipv4.tcp_ecn=1: negotiation,
ECT(0) on data (counted by an iptables `-m ecn` rule on the switch), and CE marks set
by the switch (mangle `-j TOS --set-tos 0x03/0x03`) answered by the other side.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

import tcpscapy
from tcpscapy import errors
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import CLIENT, SERVER, finish, kernel_server
from tests.wire.test_robustness_faults import bridge_filters, dropped, switch_iptables

pytestmark = pytest.mark.wire
LAB_PREFIX = "cc"
SIZE = 1_000_000
# The kernel's RTO floor is 200 ms; at 5 % loss each way a retransmission and its ACK
# are sometimes lost together: let the kernel retry sooner, as the faults test does.
KERNEL_ROUTE = ["ip", "route", "replace", "10.77.0.0/24", "dev", "eth0", "rto_min", "20ms"]


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    try:
        yield lab
    finally:
        close_all(linger=0.5)
    finish(lab)


def set_loss(lab: Lab, loss: float) -> None:
    switch_iptables(lab, "-F", "FORWARD")
    for host in ("client", "server"):
        if loss:
            switch_iptables(lab, "-A", "FORWARD", "-s", lab.addr(host), "-m", "statistic",
                            "--mode", "random", "--probability", str(loss), "-j", "DROP")


def echo_round_trip(conn: tcpscapy.Connection, data: bytes) -> bytes:
    """Send `data` from a thread and read the echo here (neither side may block the other)."""
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            conn.sendall(data, timeout=120)
            conn.shutdown()
        except BaseException as exc:  # re-raised below, in the test's thread
            failure.append(exc)

    sender = threading.Thread(target=upload)
    sender.start()
    got = bytearray()
    while chunk := conn.recv(timeout=120):
        got += chunk
    sender.join(timeout=120)
    assert not failure, failure
    return bytes(got)


@pytest.mark.parametrize("cc", ["newreno", "cubic", "bbr"])
def test_each_controller_moves_1mb_byte_exact_through_loss(net: Lab, cc: str) -> None:
    bridge_filters(net)
    net.run("server", KERNEL_ROUTE, check=True)
    port = kernel_server(net, "echo")
    for loss in (0.0, 0.01, 0.02, 0.05):
        set_loss(net, loss)
        data = os.urandom(SIZE)
        with net.enter("client"):
            conn = tcpscapy.connect(SERVER, port, timeout=20, cc=cc, retries=20)
        try:
            got = echo_round_trip(conn, data)
        except errors.TimedOut as exc:
            raise AssertionError(f"{cc} at {loss:.0%}: the echo stalled") from exc
        assert got == data, f"{cc} at {loss:.0%}: {len(got)} bytes back, not the same"
        engine = conn.engine
        assert engine.cc.name == cc
        if loss >= 0.02:  # real loss, both ways, and repaired by us
            lost = dropped(net)
            assert lost[CLIENT] > 0 and lost[SERVER] > 0, lost  # (~1,400 packets each way)
            assert engine.retransmissions > 0
        conn.close()


def ecn_counters(lab: Lab) -> dict[str, int]:
    """Packets with ECT(0) and with CWR that each host sent, from the switch's counters."""
    counts: dict[str, int] = {}
    for line in switch_iptables(lab, "-L", "FORWARD", "-v", "-x", "-n").splitlines()[2:]:
        words = line.split()
        if words[2] == "ACCEPT":
            key = ("cwr " if "CWR" in line.upper() else "ect0 ") + words[7]
            counts[key] = counts.get(key, 0) + int(words[0])
    return counts


def count_ecn(lab: Lab) -> None:
    switch_iptables(lab, "-F", "FORWARD")
    for host in ("client", "server"):
        switch_iptables(lab, "-A", "FORWARD", "-s", lab.addr(host), "-m", "ecn",
                        "--ecn-ip-ect", "2", "-j", "ACCEPT")
        switch_iptables(lab, "-I", "FORWARD", "-s", lab.addr(host), "-p", "tcp", "-m", "ecn",
                        "--ecn-tcp-cwr", "-j", "ACCEPT")


def mark_ce(lab: Lab, host: str, every: int) -> None:
    """The switch marks CE on every `every`-th ECN-capable packet from `host`."""
    switch_iptables(lab, "-t", "mangle", "-F", "FORWARD")
    switch_iptables(lab, "-t", "mangle", "-A", "FORWARD", "-s", lab.addr(host), "-m", "ecn",
                    "--ecn-ip-ect", "2", "-m", "statistic", "--mode", "nth", "--every",
                    str(every), "--packet", "0", "-j", "TOS", "--set-tos", "0x03/0x03")


def test_ecn_with_a_kernel_server_that_accepts_it(net: Lab) -> None:
    """We ask (ecn="on"); the kernel (tcp_ecn=1) agrees, echoes our CE marks, we react."""
    bridge_filters(net)
    net.sysctl("server", "net.ipv4.tcp_ecn", "1")
    port = kernel_server(net, "echo")
    count_ecn(net)
    mark_ce(net, "client", every=50)  # some of our data reaches the kernel marked CE
    data = os.urandom(SIZE)
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=10, ecn="on")
    synack = next(s for s in conn.trace.segments("in") if s.flags & 0x12 == 0x12)
    assert synack.flags & 0xC0 == 0x40  # ECE, not CWR: the ECN-setup SYN-ACK
    assert conn.engine.ecn_ok
    assert echo_round_trip(conn, data) == data
    counts = ecn_counters(net)
    assert counts.get(f"ect0 {CLIENT}", 0) > 100  # our data went out ECT(0)
    assert counts.get(f"ect0 {SERVER}", 0) > 100  # and the kernel's echo too
    echoes = sum(1 for s in conn.trace.segments("in") if s.flags & 0x40)
    our_cwr = sum(1 for s in conn.trace.segments("out") if s.flags & 0x80)
    assert echoes > 0 and our_cwr > 0  # it echoed the marks; we reduced and said so
    assert conn.engine.ssthresh < 1 << 30
    conn.close()


def test_ecn_with_a_kernel_client_that_asks_for_it(net: Lab) -> None:
    """A kernel client (tcp_ecn=1) asks; our listener (default: passive) agrees and
    echoes the CE marks the switch puts on the kernel's data; the kernel answers CWR."""
    bridge_filters(net)
    net.sysctl("client", "net.ipv4.tcp_ecn", "1")
    count_ecn(net)
    mark_ce(net, "client", every=50)
    with net.enter("server"):
        listener = tcpscapy.listen(7300, SERVER)
    data = os.urandom(SIZE)
    result: list[bytes] = []

    def kernel_client() -> None:
        with net.enter("client"), socket.create_connection((SERVER, 7300), 20) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := sock.recv(1 << 16):
                got += chunk
            result.append(bytes(got))

    client = threading.Thread(target=kernel_client)
    client.start()
    conn = listener.accept(timeout=20)
    assert conn.engine.ecn_ok
    got = bytearray()
    while chunk := conn.recv(timeout=60):
        got += chunk
    conn.sendall(b"got %d" % len(got))
    conn.close()
    client.join(timeout=60)
    assert bytes(got) == data and result == [b"got %d" % SIZE]
    syn = next(s for s in conn.trace.segments("in") if s.flags & 0x02)
    synack = next(s for s in conn.trace.segments("out") if s.flags & 0x12 == 0x12)
    assert syn.flags & 0xC0 == 0xC0 and synack.flags & 0xC0 == 0x40
    counts = ecn_counters(net)
    assert counts.get(f"ect0 {CLIENT}", 0) > 100
    assert any(s.flags & 0x40 for s in conn.trace.segments("out"))  # we echoed CE
    assert counts.get(f"cwr {CLIENT}", 0) > 0  # and the kernel reduced: CWR
    listener.close()
