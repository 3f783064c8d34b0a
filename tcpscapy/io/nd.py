"""Neighbour discovery frames (RFC 4861 §4.3, §4.4), IPv6's ARP, byte-identical to Scapy's.

A link to an IPv6 peer needs the next hop's MAC: we multicast a neighbour
solicitation to the target's solicited-node address (RFC 4291 §2.7.1) and
read the advertisement that answers it. Both carry hop limit 255, which a
receiver checks to know the packet was not routed (RFC 4861 §7.1). We also
answer solicitations for addresses only we own (an engine address no kernel
has), so a peer can reach them. Parsing never raises.
"""

from __future__ import annotations

import struct
from socket import AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple

from tcpscapy.io.codec import _checksum_field, _sum16

__all__ = ["Advert", "Solicit", "advert", "multicast_mac", "parse_nd", "solicit",
           "solicited_node"]

ICMPV6 = 58
NS, NA = 135, 136
SRC_LLADDR, TGT_LLADDR = 1, 2  # option types
HOP_LIMIT = 255
_ROUTER, _SOLICITED, _OVERRIDE = 0x80, 0x40, 0x20
_IP6 = struct.Struct("!IHBB16s16s")


def solicited_node(target: str) -> str:
    """ff02::1:ffXX:XXXX, the multicast group a node joins for each of its addresses."""
    low = inet_pton(AF_INET6, target)[13:]
    return inet_ntop(AF_INET6, bytes.fromhex("ff02" + "00" * 9 + "01ff") + low)


def multicast_mac(group: str) -> bytes:
    """33:33 and the group's last four bytes (RFC 2464 §7)."""
    return b"\x33\x33" + inet_pton(AF_INET6, group)[12:]


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return raw


def _packet(src: str, dst: str, icmp: bytes) -> bytes:
    s, d = inet_pton(AF_INET6, src), inet_pton(AF_INET6, dst)
    total = int.from_bytes(s + d, "big") + len(icmp) + ICMPV6 + _sum16(icmp)
    icmp = icmp[:2] + struct.pack("!H", _checksum_field(total)) + icmp[4:]
    return _IP6.pack(6 << 28, len(icmp), ICMPV6, HOP_LIMIT, s, d) + icmp


def solicit(src: str, src_mac: str, target: str) -> tuple[bytes, bytes]:
    """(destination MAC, IPv6 packet) of a solicitation for `target`'s MAC."""
    group = solicited_node(target)
    icmp = (struct.pack("!BBHI", NS, 0, 0, 0) + inet_pton(AF_INET6, target)
            + bytes((SRC_LLADDR, 1)) + _mac(src_mac))
    return multicast_mac(group), _packet(src, group, icmp)


def advert(src: str, src_mac: str, dst: str, *, solicited: bool = True,
           override: bool = True, router: bool = False) -> bytes:
    """The IPv6 packet advertising that `src` is at `src_mac`, to `dst`."""
    flags = (_ROUTER if router else 0) | (_SOLICITED if solicited else 0) | (
        _OVERRIDE if override else 0)
    icmp = (struct.pack("!BBHI", NA, 0, 0, flags << 24) + inet_pton(AF_INET6, src)
            + bytes((TGT_LLADDR, 1)) + _mac(src_mac))
    return _packet(src, dst, icmp)


class Solicit(NamedTuple):
    """A neighbour solicitation: who asks (and its MAC if it said), for which address."""

    src: str
    target: str
    src_mac: str | None


class Advert(NamedTuple):
    """A neighbour advertisement: `target` is at `mac` (None if it carried no option)."""

    src: str
    target: str
    mac: str | None
    solicited: bool
    override: bool
    router: bool


def parse_nd(packet: bytes | bytearray | memoryview) -> Solicit | Advert | None:
    """The solicitation or advertisement in an IPv6 packet, or None; never raises.

    Checks what RFC 4861 §7.1.1/§7.1.2 require of a receiver: hop limit 255,
    code 0, at least 24 bytes, a valid checksum, option lengths that are not 0
    and fit.
    """
    if len(packet) < 40 + 24:
        return None
    vtf, plen, nh, hlim, src, dst = _IP6.unpack_from(packet)
    end = 40 + plen
    if vtf >> 28 != 6 or nh != ICMPV6 or hlim != HOP_LIMIT or end > len(packet) or plen < 24:
        return None
    kind, code = packet[40], packet[41]
    if kind not in (NS, NA) or code:
        return None
    if (int.from_bytes(src + dst, "big") + plen + ICMPV6 + _sum16(packet[40:end])) % 0xFFFF:
        return None
    mac = None
    at = 64
    while at + 2 <= end:
        size = packet[at + 1] * 8
        if size == 0 or at + size > end:
            return None
        if packet[at] == (SRC_LLADDR if kind == NS else TGT_LLADDR) and size >= 8:
            mac = bytes(packet[at + 2 : at + 8]).hex(":")
        at += size
    target = inet_ntop(AF_INET6, bytes(packet[48:64]))
    if kind == NS:
        return Solicit(inet_ntop(AF_INET6, src), target, mac)
    flags = packet[44]
    return Advert(inet_ntop(AF_INET6, src), target, mac, bool(flags & _SOLICITED),
                  bool(flags & _OVERRIDE), bool(flags & _ROUTER))
