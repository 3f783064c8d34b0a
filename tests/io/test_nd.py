"""Neighbour discovery frames against Scapy's build, and hostile bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    in6_getnsma,
    in6_getnsmac,
)
from scapy.pton_ntop import inet_pton

from tcpscapy.io.nd import Advert, Solicit, advert, multicast_mac, parse_nd, solicit, solicited_node

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ADDRESSES6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
MACS = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))


@SETTINGS
@given(ADDRESSES6, MACS, ADDRESSES6)
def test_solicit_is_scapys(src: str, mac: str, target: str) -> None:
    dst_mac, packet = solicit(src, mac, target)
    group = in6_getnsma(inet_pton(10, target))
    assert dst_mac == bytes.fromhex(in6_getnsmac(group).replace(":", ""))
    theirs = IPv6(src=src, dst=solicited_node(target), hlim=255) / ICMPv6ND_NS(tgt=target) / (
        ICMPv6NDOptSrcLLAddr(lladdr=mac))
    assert packet == bytes(theirs)
    assert parse_nd(packet) == Solicit(IPv6(packet).src, IPv6(packet).tgt, mac)


@SETTINGS
@given(ADDRESSES6, MACS, ADDRESSES6, st.booleans(), st.booleans(), st.booleans())
def test_advert_is_scapys(src: str, mac: str, dst: str, solicited: bool, override: bool,
                          router: bool) -> None:
    packet = advert(src, mac, dst, solicited=solicited, override=override, router=router)
    theirs = IPv6(src=src, dst=dst, hlim=255) / ICMPv6ND_NA(
        tgt=src, R=router, S=solicited, O=override) / ICMPv6NDOptDstLLAddr(lladdr=mac)
    assert packet == bytes(theirs)
    found = parse_nd(packet)
    assert found == Advert(IPv6(packet).src, IPv6(packet).src, mac, solicited, override, router)


def test_solicited_node_group_and_mac() -> None:
    assert solicited_node("fd77::1:2:3") == "ff02::1:ff02:3"
    assert multicast_mac("ff02::1:ff02:3") == bytes.fromhex("3333ff020003")


def test_what_a_receiver_must_drop() -> None:
    packet = advert("fd77::2", "02:00:00:00:00:02", "fd77::1")
    routed = bytearray(packet)
    routed[7] = 254  # hop limit below 255: it crossed a router
    bad_sum = bytearray(packet)
    bad_sum[-1] ^= 1
    zero_option = bytearray(packet)
    zero_option[-7] = 0  # option length 0 would loop forever
    for wire in (bytes(routed), bytes(bad_sum), bytes(zero_option), packet[:63]):
        assert parse_nd(wire) is None
    assert parse_nd(packet) is not None  # the control: unharmed, it parses


@SETTINGS
@given(st.binary(max_size=120))
def test_parse_never_raises(data: bytes) -> None:
    parse_nd(data)
    parse_nd(advert("fd77::2", "02:00:00:00:00:02", "fd77::1")[:64] + data)
