"""ICMPv6 packet too big from a kernel router (RFC 8201's signal), read by codec6.

The routed lab with IPv6 on: client fd78:1::2 — router (forwarding, a 1280-byte
route MTU toward the server's subnet) — server fd78:2::2. A 1400-byte segment
that codec6 builds and the client sends through the router draws the router's
packet too big, which decode_icmp6 reads back to our segment with MTU 1280;
a segment that fits reaches the server (its SYN-ACK comes back through the
router), so the router does forward IPv6.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.io.codec6 import PACKET_TOO_BIG, Icmp6Error, decode6, decode_icmp6, encode6
from tcpscapy.routed import ROUTER, RoutedLab, router_iface
from tests.wire.v6_helpers import ETH_P_IPV6, Wire, ipv6_on, mac_of

pytestmark = pytest.mark.wire
LAB_PREFIX = "v6"
CLIENT6, GATEWAY6, SERVER6 = "fd78:1::2", "fd78:1::1", "fd78:2::2"


@pytest.fixture
def routed6(unique_prefix: str) -> Iterator[RoutedLab]:
    lab = RoutedLab(unique_prefix)
    try:
        lab.up()
        ipv6_on(lab, ROUTER, {router_iface("client"): f"{GATEWAY6}/64",
                              router_iface("server"): "fd78:2::1/64"})
        lab.sysctl(ROUTER, "net.ipv6.conf.all.forwarding", "1")
        subprocess.run(["ip", "-n", lab.ns(ROUTER), "-6", "route", "replace", "fd78:2::/64",
                        "dev", router_iface("server"), "metric", "256", "mtu", "1280"],
                       check=True)  # metric 256: the connected route itself
        for host, addr, gateway in (("client", CLIENT6, GATEWAY6),
                                    ("server", SERVER6, "fd78:2::1")):
            ipv6_on(lab, host, {"eth0": f"{addr}/64"})
            subprocess.run(["ip", "-n", lab.ns(host), "-6", "route", "replace", "default",
                            "via", gateway], check=True)
        yield lab
    finally:
        lab.down()


class ToRouter(Wire):
    """Frames from the client's eth0 to the router's MAC."""

    def __init__(self, lab: RoutedLab) -> None:
        with lab.enter("client"):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
            self.sock.bind(("eth0", ETH_P_IPV6))
        router_mac = subprocess.run(
            ["ip", "-n", lab.ns(ROUTER), "-br", "link", "show", "dev", router_iface("client")],
            capture_output=True, text=True, check=True).stdout.split()[2]
        self.header = (bytes.fromhex(router_mac.replace(":", "")) + mac_of(lab, "client")
                       + ETH_P_IPV6.to_bytes(2, "big"))


def test_a_kernel_router_says_packet_too_big_and_we_read_it(routed6: RoutedLab) -> None:
    with routed6.enter("server"):
        srv = socket.socket(socket.AF_INET6)
        srv.bind((SERVER6, 0))
        srv.listen(4)
    wire = ToRouter(routed6)
    with srv:
        dport = srv.getsockname()[1]
        try:
            syn = Segment(CLIENT6, SERVER6, 40010, dport, 5000, 0, SYN, 64800, Options(mss=1440))
            wire.send(encode6(syn))
            synack = wire.wait(lambda p: seg if (seg := decode6(p)) is not None
                               and seg.dport == 40010 else None)
            assert isinstance(synack, Segment) and synack.flags == SYN | ACK, "not forwarded"
            big = Segment(CLIENT6, SERVER6, 40010, dport, 5001, synack.seq + 1, ACK, 64800,
                          payload=bytes(1400))
            wire.send(encode6(big))
            error = wire.wait(lambda p: e if isinstance(e := decode_icmp6(p), Icmp6Error) else None)
        finally:
            wire.close()
    assert error == Icmp6Error(PACKET_TOO_BIG, 0, GATEWAY6, CLIENT6, SERVER6, 40010, dport,
                               5001, 1280, 40 + 20 + 1400)
