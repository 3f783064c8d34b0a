"""Raw-socket links and port reservations against the real kernel, inside a lab."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from scapy.all import IP, TCP, UDP, raw

from tcpscapy.io import guard
from tcpscapy.io.ports import PortError, PortInUse, reserve_port
from tcpscapy.io.rawsock import DEFAULT_MARK, Link, LinkError, NoRoute, open_link
from tcpscapy.lab import Lab

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsa"
WAIT_S = 2.0  # upper bound for an answer that normally takes well under a millisecond


def wait_for(link: Link, match: Callable[[IP], bool], timeout: float = WAIT_S) -> IP | None:
    """The first received packet that `match`es, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        select.select([link], [], [], min(left, 0.1))
        for got in link.recv_many():
            pkt = IP(got.packet)
            if match(pkt):
                return pkt
    return None


def syn(link: Link, sport: int, dport: int, seq: int, dst: str | None = None) -> bytes:
    pkt = IP(src=link.src_ip, dst=dst or link.dst_ip) / TCP(
        sport=sport, dport=dport, flags="S", seq=seq, window=65535
    )
    return bytes(pkt)


def synack_for(sport: int, dport: int, seq: int) -> Callable[[IP], bool]:
    def match(pkt: IP) -> bool:
        return (TCP in pkt and pkt[TCP].sport == dport and pkt[TCP].dport == sport
                and pkt[TCP].flags == "SA" and pkt[TCP].ack == seq + 1)
    return match


def mac_of(ns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


def listen(lab: Lab, host: str, ip: str) -> socket.socket:
    with lab.enter(host):
        return socket.create_server((ip, 0))


def test_syn_to_a_kernel_listener_gets_its_synack_over_the_lab_link(lab: Lab) -> None:
    server = listen(lab, "server", lab.addr("server"))
    dport = server.getsockname()[1]
    with lab.enter("client"):
        reservation = reserve_port(lab.addr("client"))
        link = open_link(lab.addr("server"))
    with server, reservation, link:
        assert (link.iface, link.src_ip, link.is_loopback) == ("eth0", "10.77.0.1", False)
        assert link.dst_mac == mac_of(lab.ns("server"), "eth0")
        assert link.src_mac == mac_of(lab.ns("client"), "eth0")
        link.send(syn(link, reservation.port, dport, 1000))
        answer = wait_for(link, synack_for(reservation.port, dport, 1000))
        assert answer is not None and answer.src == lab.addr("server")


def test_one_link_serves_many_handshakes(lab: Lab) -> None:
    server = listen(lab, "server", lab.addr("server"))
    dport = server.getsockname()[1]
    with lab.enter("client"):
        link = open_link(lab.addr("server"))
        ports = [reserve_port(lab.addr("client")) for _ in range(5)]
    fd = link.fileno()
    with server, link:
        for i, reservation in enumerate(ports):
            with reservation:
                link.send(syn(link, reservation.port, dport, 5000 * i))
                assert wait_for(link, synack_for(reservation.port, dport, 5000 * i)) is not None
        assert link.fileno() == fd


def test_loopback_link_sends_marked_packets_through_a_raw_ip_socket(lab: Lab) -> None:
    mark = 0x5A5
    with lab.enter("client"):
        server = socket.create_server(("127.0.0.1", 0))
        dport = server.getsockname()[1]
        # Counting rule, in the lab's own namespace: matches our marked SYNs in OUTPUT.
        subprocess.run(["iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--dport",
                        str(dport), "-m", "mark", "--mark", hex(mark)], check=True)
        link = open_link("127.0.0.1", mark=mark)
        reservation = reserve_port("127.0.0.1")
    with server, reservation, link:
        assert (link.iface, link.is_loopback, link.dst_mac) == ("lo", True, None)
        link.send(syn(link, reservation.port, dport, 77))
        assert wait_for(link, synack_for(reservation.port, dport, 77)) is not None
    with lab.enter("client"):
        rules = subprocess.run(["iptables", "-t", "mangle", "-L", "OUTPUT", "-v", "-x", "-n"],
                               capture_output=True, text=True, check=True).stdout
    counted = [line.split()[0] for line in rules.splitlines() if f"dpt:{dport}" in line]
    assert counted == ["1"]


def test_default_mark_is_the_one_the_rst_guard_excludes() -> None:
    assert DEFAULT_MARK == guard.DEFAULT_MARK


def test_a_local_address_takes_the_loopback_path(lab: Lab) -> None:
    server = listen(lab, "client", lab.addr("client"))
    dport = server.getsockname()[1]
    with lab.enter("client"):
        link = open_link(lab.addr("client"))
        reservation = reserve_port(lab.addr("client"))
    with server, reservation, link:
        assert (link.iface, link.is_loopback) == ("lo", True)
        link.send(syn(link, reservation.port, dport, 9))
        assert wait_for(link, synack_for(reservation.port, dport, 9)) is not None


def test_receive_filter_keeps_only_tcp_to_our_address(lab: Lab) -> None:
    with lab.enter("client"):
        link = open_link("127.0.0.1", src_ip="127.0.0.5")  # receives TCP for 127.0.0.5
    with link:
        assert link.recv() is None
        link.send(raw(IP(src="127.0.0.9", dst="127.0.0.5") / TCP(sport=1, dport=2, flags="S")))
        link.send(raw(IP(src="127.0.0.9", dst="127.0.0.5") / UDP(sport=1, dport=2)))
        link.send(raw(IP(src="127.0.0.9", dst="127.0.0.6") / TCP(sport=1, dport=3, flags="S")))
        time.sleep(0.2)
        got = [IP(r.packet) for r in link.recv_many()]
        assert [(p.src, p.dst, p[TCP].dport) for p in got] == [("127.0.0.9", "127.0.0.5", 2)]
        assert link.recv() is None


def test_kernel_segments_on_lo_are_flagged_and_large_ones_arrive_whole(lab: Lab) -> None:
    with lab.enter("server"):
        link = open_link("127.0.0.1")
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname(), timeout=2)
    peer, _ = server.accept()
    with link, server, client, peer:
        client.sendall(b"x" * 40000)
        assert len(peer.recv(40000, socket.MSG_WAITALL)) == 40000
        time.sleep(0.1)  # let the last ACK land too
        got = link.recv_many(1000)
        payloads = [len(IP(r.packet)[TCP].payload) for r in got]
        assert sum(payloads) == 40000 and max(payloads) > 1500
        assert all(IP(r.packet).len == len(r.packet) for r in got)
        # All built by the kernel, checksums left to "hardware": flagged, not dropped.
        assert all(r.skip_csum_check for r in got)


def test_veth_segments_carry_real_checksums(lab: Lab) -> None:
    server = listen(lab, "server", lab.addr("server"))
    with lab.enter("client"):
        link = open_link(lab.addr("server"))
        client = socket.create_connection(server.getsockname(), timeout=2)
    peer, _ = server.accept()
    with link, server, client, peer:
        peer.sendall(b"y" * 3000)
        deadline = time.monotonic() + WAIT_S
        got: list[bytes] = []
        while sum(len(IP(p)[TCP].payload) for p in got) < 3000 and time.monotonic() < deadline:
            select.select([link], [], [], 0.1)
            got += [r.packet for r in link.recv_many() if not r.skip_csum_check]
        assert sum(len(IP(p)[TCP].payload) for p in got) == 3000
        for packet in got:  # offloads are off, so the kernel filled in real checksums
            pkt = IP(packet)
            sent = pkt[TCP].chksum
            del pkt[TCP].chksum
            assert IP(raw(pkt))[TCP].chksum == sent


def test_link_errors(lab: Lab) -> None:
    with lab.enter("client"):
        with pytest.raises(NoRoute, match=r"no route to 192\.0\.2\.1"):
            open_link("192.0.2.1")  # the lab hosts have no default route
        with pytest.raises(NoRoute, match=r"no ARP reply from next hop 10\.77\.0\.9"):
            open_link("10.77.0.9")  # on the link, but nobody has it
        with pytest.raises(ValueError, match="bad destination address"):
            open_link("10.77.0")
        link = open_link("127.0.0.1")
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        link.send(b"\x60" + bytes(39))
    link.close()
    link.close()
    with pytest.raises(LinkError, match="closed"):
        link.recv()


def test_open_link_without_root_is_a_permission_error() -> None:
    code = (
        "from tcpscapy.io.rawsock import open_link\n"
        "try:\n    open_link('127.0.0.1')\n"
        "except PermissionError as e:\n    print(type(e).__name__, e)\n"
    )
    res = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.stdout == "LinkNeedsRoot raw sockets need root (CAP_NET_RAW and CAP_NET_ADMIN)\n"


# -- port reservation ----------------------------------------------------------------


def test_reservation_blocks_other_binds_and_is_released(lab: Lab) -> None:
    with lab.enter("client"):
        with reserve_port(lab.addr("client")) as held:
            assert 1024 <= held.port <= 65535
            with pytest.raises(PortInUse, match=f"{held.port} is already in use"):
                reserve_port(lab.addr("client"), held.port)
            with pytest.raises(OSError), socket.socket() as other:
                other.bind(("0.0.0.0", held.port))
        assert held.closed
        with reserve_port(lab.addr("client"), held.port) as again:
            assert again.port == held.port


def test_reserved_port_accepts_no_connection(lab: Lab) -> None:
    with lab.enter("server"):
        held = reserve_port(lab.addr("server"))
    with held, lab.enter("client"), pytest.raises(ConnectionRefusedError):
        socket.create_connection((lab.addr("server"), held.port), timeout=2)


def test_reservation_errors(lab: Lab) -> None:
    with lab.enter("client"):
        with pytest.raises(PortError, match="not an address of this host"):
            reserve_port(lab.addr("server"))
        with pytest.raises(ValueError, match="bad address"):
            reserve_port("nonsense")
        with pytest.raises(ValueError, match="bad port"):
            reserve_port("127.0.0.1", 70000)
