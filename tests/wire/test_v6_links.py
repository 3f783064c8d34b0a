"""IPv6 routes and neighbour discovery against the kernel, inside a lab with IPv6 on."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tcpscapy.io.nd import Solicit, advert, parse_nd, solicited_node
from tcpscapy.io.rawsock import NoRoute
from tcpscapy.io.route6 import Route6, neighbour_mac, route6
from tcpscapy.lab import Lab
from tests.wire.v6_helpers import ETH_P_IPV6, KERNEL6, WAIT_S, Wire, enable_ipv6, mac_of

pytestmark = pytest.mark.wire
LAB_PREFIX = "v6"


def link_local(lab: Lab, host: str) -> str:
    out = subprocess.run(["ip", "-n", lab.ns(host), "-6", "-o", "addr", "show", "dev", "eth0",
                          "scope", "link"], capture_output=True, text=True, check=True).stdout
    return out.split()[3].split("/")[0]


def packet_socket(lab: Lab, host: str) -> socket.socket:
    with lab.enter(host):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
        sock.bind(("eth0", ETH_P_IPV6))
    return sock


def test_routes_come_from_the_kernel(lab: Lab) -> None:
    enable_ipv6(lab, "client", "server")
    with lab.enter("client"):
        assert route6(KERNEL6["server"]) == Route6("eth0", KERNEL6["client"], KERNEL6["server"],
                                                   False)
        assert route6("::1").local and route6(KERNEL6["client"]).local
        with pytest.raises(NoRoute, match="no route to 2001:db8::1: Network is unreachable"):
            route6("2001:db8::1")
        with pytest.raises(NoRoute, match="needs an interface"):
            route6("fe80::1")
        peer_ll = link_local(lab, "server")
        scoped = route6(peer_ll, scope_id=socket.if_nametoindex("eth0"))
    assert scoped.iface == "eth0" and scoped.next_hop == peer_ll
    assert scoped.src == link_local(lab, "client")


def test_a_solicitation_finds_the_kernels_mac(lab: Lab) -> None:
    enable_ipv6(lab, "client", "server")
    sock = packet_socket(lab, "client")
    with sock:
        mine = mac_of(lab, "client").hex(":")
        found = neighbour_mac(sock, KERNEL6["client"], mine, KERNEL6["server"])
        assert found == mac_of(lab, "server").hex(":")
        with pytest.raises(NoRoute, match="no neighbour advertisement from fd77::77"):
            neighbour_mac(sock, KERNEL6["client"], mine, "fd77::77", tries=2, wait=0.3)


def test_the_kernel_reaches_an_address_only_we_answer_for(lab: Lab) -> None:
    """The kernel solicits fd77::99, which no kernel has; our advertisement lets it send."""
    enable_ipv6(lab, "client", "server")
    ours, mac = "fd77::99", mac_of(lab, "server").hex(":")
    wire = Wire(lab, "server", "client", accept=[ours, solicited_node(ours)])
    # The kernel client starts ND by sending to our address (UDP, nobody listens).
    with lab.enter("client"), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"ping", (ours, 9))
    try:
        ask = wire.wait(lambda p: found if isinstance(found := parse_nd(p), Solicit)
                        and found.target == ours else None)
        assert isinstance(ask, Solicit) and ask.src_mac == mac_of(lab, "client").hex(":")
        wire.send(advert(ours, mac, ask.src))
        udp_to_us = wire.wait(lambda p: p if p[6] == 17 and p[24:40] == socket.inet_pton(
            socket.AF_INET6, ours) else None)
        assert udp_to_us is not None, f"the kernel never sent the datagram within {WAIT_S} s"
    finally:
        wire.close()


def test_the_packet_filter_keeps_only_our_address(lab: Lab) -> None:
    """Two filtered sockets see the same link: the one for the datagram's address gets it;
    by then the kernel has offered the frame to both, and the other's queue is empty."""
    enable_ipv6(lab, "client", "server")
    seen = Wire(lab, "client", "server", accept=[KERNEL6["client"]])
    blind = Wire(lab, "client", "server", accept=["fd77::5", "fd77::6"])
    try:
        with lab.enter("server"), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (KERNEL6["client"], 9))
        assert seen.wait(lambda p: p if p[6] == 17 else None) is not None
        blind.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            blind.sock.recv(2048)
    finally:
        seen.close()
        blind.close()
