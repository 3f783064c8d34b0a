"""Fast IPv6/TCP codec and ICMPv6 error parser, byte-identical to Scapy's build.

The IPv6 twin of codec.py (whose checksum and option helpers it shares): a
40-byte fixed header (RFC 8200 §3), optional extension headers in front of
TCP, and the TCP checksum over the IPv6 pseudo-header (RFC 8200 §8.1: source,
destination, 32-bit upper-layer length, three zero bytes, next header 6).

On receive, extension headers are walked to TCP (RFC 8200 §4): hop-by-hop
(first only), routing (with no segments left: a host is the final
destination, so the IPv6 destination is the one the checksum covers) and
destination options. A fragment header rejects the packet with the reason
FRAGMENT, which the driver counts: we never reassemble (a TCP sender doing
path MTU discovery has no reason to fragment). Any other next header (ESP,
AH, no next header, unknown) is "not TCP".

`decode_icmp6` reads ICMPv6 errors (RFC 4443 §3: destination unreachable,
packet too big, time exceeded, parameter problem) quoting one of our TCP
segments into an `Icmp6Error` (None for ICMPv6 that is no business of TCP's, a
reason in words for a malformed one), never raising on any bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from socket import AF_INET6, inet_ntop, inet_pton
from typing import TYPE_CHECKING, Any, NamedTuple

from tcpscapy.core.options import NO_OPTIONS, parse_options
from tcpscapy.core.segment import Segment
from tcpscapy.io.codec import (
    Decoded,
    _checksum_field,
    _options_in,
    _options_out,
    _sum16,
    decode_ex,
    encode,
    from_scapy,
    gso_runs,
    scapy_options,
    to_scapy,
)

if TYPE_CHECKING:
    from scapy.packet import Packet

__all__ = [
    "FRAGMENT",
    "ExtHeader",
    "Icmp6Error",
    "decode6",
    "decode6_ex",
    "decode_any_ex",
    "decode_icmp6",
    "encode6",
    "encode6_offload",
    "encode6_run",
    "encode_any",
    "from_scapy6",
    "from_scapy_any",
    "gso_runs6",
    "pad_options",
    "to_scapy6",
    "to_scapy_any",
]

IPPROTO_TCP = 6
HOP_BY_HOP, ROUTING, FRAGMENT_HDR, ICMPV6, NO_NEXT, DEST_OPTS = 0, 43, 44, 58, 59, 60
_WALKED = frozenset({HOP_BY_HOP, ROUTING, DEST_OPTS})  # length in 8-octet units past the first 8
FRAGMENT = "IPv6 fragment"  # the reject reason a driver counts as a dropped fragment

_IP6_HDR = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next, hops, addrs
_TCP_HDR = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_MAX_PAYLOAD = 0xFFFF  # no jumbograms (RFC 2675)
Bytes = bytes | bytearray | memoryview
_MAX_EXT = 16  # extension headers walked before giving up (each costs >= 8 bytes anyway)


@lru_cache(maxsize=4096)
def _aton6(addr: str) -> bytes:
    return inet_pton(AF_INET6, addr)


@lru_cache(maxsize=4096)
def _ntoa6(packed: bytes) -> str:
    return inet_ntop(AF_INET6, packed)


# --- extension headers ------------------------------------------------------------------

class ExtHeader(NamedTuple):
    """An extension header to send: its type and the bytes after its first two.

    The codec writes the next-header and length bytes; `body` must make the
    header a multiple of 8 bytes long (`pad_options` pads an option list).
    """

    kind: int  # HOP_BY_HOP, ROUTING or DEST_OPTS
    body: bytes


def pad_options(options: bytes) -> bytes:
    """Hop-by-hop or destination options padded as RFC 8200 §4.2 and Scapy do:
    Pad1 for one missing byte, else PadN, so the header ends on 8 bytes."""
    missing = -(2 + len(options)) % 8
    if missing == 1:
        return options + b"\x00"
    if missing:
        return options + bytes((1, missing - 2)) + bytes(missing - 2)
    return options


def _ext_bytes(ext: Sequence[ExtHeader]) -> tuple[bytes, int]:
    """The extension headers chained in front of TCP, and the first next-header value."""
    chunks = []
    for i, (kind, body) in enumerate(ext):
        if kind not in _WALKED:
            raise ValueError(f"cannot send extension header {kind}: only 0, 43 and 60")
        size = 2 + len(body)
        if size % 8 or size > 2048:
            raise ValueError(f"extension header of {size} bytes: a multiple of 8 up to 2048")
        if kind == ROUTING and body[1]:
            # The pseudo-header would need the final destination from the route.
            raise ValueError("cannot send a routing header with segments left")
        following = ext[i + 1].kind if i + 1 < len(ext) else IPPROTO_TCP
        chunks.append(bytes((following, size // 8 - 1)) + body)
    return b"".join(chunks), ext[0].kind if ext else IPPROTO_TCP


# --- build ---------------------------------------------------------------------------------

def _build6(seg: Segment, payload: bytes, flags: int, offload: bool, hlim: int, tc: int,
            fl: int, ext: Sequence[ExtHeader]) -> bytes:
    opts = _options_out(seg.options)
    tcp_len = 20 + len(opts) + len(payload)
    ext_raw, first = _ext_bytes(ext)
    plen = len(ext_raw) + tcp_len
    if plen > _MAX_PAYLOAD:
        raise ValueError(f"IPv6 payload of {plen} bytes is longer than {_MAX_PAYLOAD}")
    try:
        src, dst = _aton6(seg.src), _aton6(seg.dst)
        tcp_hdr = _TCP_HDR.pack(seg.sport, seg.dport, seg.seq, seg.ack, (5 + len(opts) // 4) << 4,
                                flags, seg.window, 0, seg.urgent)
        ip_hdr = _IP6_HDR.pack(6 << 28 | tc << 20 | fl, plen, first, hlim, src, dst)
    except (struct.error, OSError) as exc:
        raise ValueError(f"cannot encode segment {seg}: {exc}") from None
    total = int.from_bytes(src + dst, "big") + tcp_len + IPPROTO_TCP  # the pseudo-header
    tcp = bytearray(tcp_hdr)
    if offload:
        _U16.pack_into(tcp, 16, (total % 0xFFFF) or 0xFFFF)
    else:
        total += int.from_bytes(tcp_hdr, "big") + int.from_bytes(opts, "big") + _sum16(payload)
        _U16.pack_into(tcp, 16, _checksum_field(total))
    return b"".join((ip_hdr, ext_raw, tcp, opts, payload))


def encode6(seg: Segment, *, hlim: int = 64, tc: int = 0, fl: int = 0,
            ext: Sequence[ExtHeader] = ()) -> bytes:
    """An IPv6 packet carrying `seg` behind the extension headers `ext`, checksum filled in.

    Raises ValueError when a field does not fit or the payload would exceed 65535 bytes.
    """
    return _build6(seg, seg.payload, seg.flags, False, hlim, tc, fl, ext)


def encode6_offload(seg: Segment) -> bytes:
    """As `encode6`, the TCP checksum field holding only the pseudo-header sum for the
    kernel to complete (VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start 40, csum_offset 16)."""
    return _build6(seg, seg.payload, seg.flags, True, 64, 0, 0, ())


def encode6_run(run: Sequence[Segment]) -> bytes:
    """One packet that the kernel's TCPv6 segmentation (GSO, SKB_GSO_TCPV6) cuts back
    into `run`, as codec.encode_run for IPv4: the first segment's header, the last one's
    flags, all payloads joined, the checksum left to the kernel. Group with
    `gso_runs6`. Each piece is byte-identical to `encode6` of its segment."""
    first = run[0]
    if len(run) == 1:
        return encode6_offload(first)
    return _build6(first, b"".join(seg.payload for seg in run), run[-1].flags, True, 64, 0, 0,
                   ())


def gso_runs6(segments: Sequence[Segment]) -> list[list[Segment]]:
    """codec.gso_runs for IPv6, whose 65535-byte limit is on the payload (TCP header and
    data), not on the packet: 20 bytes more room than IPv4 has."""
    return gso_runs(segments, _MAX_PAYLOAD + 20)  # gso_runs counts 40 bytes of headers


def encode_any(seg: Segment) -> bytes:
    """`codec.encode` or `encode6`, by the segment's address family."""
    return encode6(seg) if ":" in seg.src else encode(seg)


def decode_any_ex(packet: bytes | bytearray | memoryview, *,
                  verify_checksum: bool = True) -> Decoded:
    """`codec.decode_ex` or `decode6_ex`, by the IP version in the first byte."""
    if packet[:1] and packet[0] >> 4 == 6:
        return decode6_ex(packet, verify_checksum=verify_checksum)
    return decode_ex(packet, verify_checksum=verify_checksum)


# --- parse ---------------------------------------------------------------------------------

def _walk(packet: Bytes, nh: int, at: int, end: int) -> tuple[int, int] | str:
    """(upper-layer protocol, its offset) past the extension headers, or a reject reason."""
    for count in range(_MAX_EXT + 1):
        if nh == FRAGMENT_HDR:
            return FRAGMENT
        if nh not in _WALKED:
            return nh, at
        if nh == HOP_BY_HOP and count:
            return "hop-by-hop header not first"
        if at + 8 > end:
            return "truncated extension header"
        size = (packet[at + 1] + 1) * 8
        if at + size > end:
            return "truncated extension header"
        if nh == ROUTING and packet[at + 3]:
            return "routing header with segments left"  # not at its final destination
        nh, at = packet[at], at + size
    return "too many extension headers"


def _parse6(packet: bytes | bytearray | memoryview, verify_checksum: bool) -> Segment | str:
    size = len(packet)
    if size < 40:
        return "truncated IPv6 header"
    vtf, plen, nh, _hlim, src, dst = _IP6_HDR.unpack_from(packet)
    if vtf >> 28 != 6:
        return "not IPv6"
    end = 40 + plen
    if end > size:
        return "truncated IPv6 packet"
    if plen == 0 and nh == HOP_BY_HOP:
        return "jumbogram"  # RFC 2675: payload length 0; never on our links
    found = _walk(packet, nh, 40, end)
    if isinstance(found, str):
        return found
    proto, at = found
    if proto != IPPROTO_TCP:
        return "not TCP"
    tcp_len = end - at
    if tcp_len < 20:
        return "truncated TCP header"
    sport, dport, seq, ack, offset, flags, window, _sum, urgent = _TCP_HDR.unpack_from(packet, at)
    data_at = at + (offset >> 4) * 4
    if offset < 0x50 or data_at > end:
        return "bad TCP data offset"
    if verify_checksum:
        total = int.from_bytes(src + dst, "big") + tcp_len + IPPROTO_TCP + _sum16(packet[at:end])
        if total % 0xFFFF:
            return "bad TCP checksum"
    opts = _options_in(bytes(packet[at + 20 : data_at])) if data_at > at + 20 else NO_OPTIONS
    return Segment(_ntoa6(src), _ntoa6(dst), sport, dport, seq, ack, flags, window, opts,
                   bytes(packet[data_at:end]), urgent)


def decode6_ex(packet: bytes | bytearray | memoryview, *,
               verify_checksum: bool = True) -> Decoded:
    """Parse an IPv6/TCP packet and say why when it is rejected; never raises on any bytes.

    Rejected with `reason` in words: not IPv6, not TCP, a fragment (`FRAGMENT`),
    truncated or inconsistent headers, a bad TCP checksum. Padding past the
    payload length is ignored.
    """
    result = _parse6(packet, verify_checksum)
    return Decoded(None, result) if isinstance(result, str) else Decoded(result)


def decode6(packet: bytes | bytearray | memoryview, *,
            verify_checksum: bool = True) -> Segment | None:
    """The segment in an IPv6/TCP packet, or None (see `decode6_ex`)."""
    result = _parse6(packet, verify_checksum)
    return None if isinstance(result, str) else result


# --- ICMPv6 errors -----------------------------------------------------------------------

DEST_UNREACHABLE, PACKET_TOO_BIG, TIME_EXCEEDED, PARAMETER_PROBLEM = 1, 2, 3, 4
_ERROR_TYPES = frozenset({DEST_UNREACHABLE, PACKET_TOO_BIG, TIME_EXCEEDED, PARAMETER_PROBLEM})
_ICMP_HDR = struct.Struct("!BBHI")  # type, code, checksum, MTU / pointer / unused
_QUOTED_TCP = struct.Struct("!HHI")  # ports and sequence number: all we need of the quote


class Icmp6Error(NamedTuple):
    """An ICMPv6 error about one of our TCP segments.

    The fields, in order, are those of the ICMPv4 `IcmpError` of core/icmp.py
    (branch icmp), so both families share one shape; `type` and `code` are
    ICMPv6's own (RFC 4443), `v4_equivalent` maps them onto ICMPv4's.
    """

    type: int
    code: int
    reporter: str  # the ICMPv6 packet's source: the router or host that complained
    src: str  # quoted IPv6 source: our address
    dst: str  # quoted IPv6 destination: the peer
    sport: int
    dport: int
    seq: int  # quoted TCP sequence number
    mtu: int = 0  # packet too big: the next-hop MTU
    quoted_len: int = 0  # the quoted packet's length, 40 + its payload length field

    def __str__(self) -> str:
        text = f"ICMPv6 {describe6(self)} from {self.reporter}"
        if self.type == PACKET_TOO_BIG:
            text += f" (mtu {self.mtu})"
        return text


_UNREACHABLE6 = {0: "no route to destination", 1: "administratively prohibited",
                 2: "beyond scope of source address", 3: "address unreachable",
                 4: "port unreachable", 5: "source address failed policy",
                 6: "reject route to destination", 7: "error in source routing header"}
_PARAM6 = {0: "erroneous header field", 1: "unrecognized next header",
           2: "unrecognized IPv6 option", 3: "incomplete header chain"}


def describe6(err: Icmp6Error) -> str:
    """The error in words, as RFC 4443 names it."""
    if err.type == DEST_UNREACHABLE:
        return _UNREACHABLE6.get(err.code, f"destination unreachable (code {err.code})")
    if err.type == PACKET_TOO_BIG:
        return "packet too big"
    if err.type == TIME_EXCEEDED:
        return "hop limit exceeded" if err.code == 0 else "fragment reassembly time exceeded"
    if err.type == PARAMETER_PROBLEM:
        return "parameter problem: " + _PARAM6.get(err.code, f"code {err.code}")
    return f"type {err.type} code {err.code}"


# ICMPv4 (type, code) with the same meaning for TCP, as Linux's icmpv6_err_convert
# judges them: administratively prohibited, port unreachable, failed policy and
# reject route are fatal (hard); the rest soft. ICMPv4 has no hard parameter
# problem, so Linux's fatal EPROTO for it is kept as "protocol unreachable".
_TO_V4 = {
    (DEST_UNREACHABLE, 0): (3, 0), (DEST_UNREACHABLE, 1): (3, 13),
    (DEST_UNREACHABLE, 2): (3, 1), (DEST_UNREACHABLE, 3): (3, 1),
    (DEST_UNREACHABLE, 4): (3, 3), (DEST_UNREACHABLE, 5): (3, 13),
    (DEST_UNREACHABLE, 6): (3, 13), (DEST_UNREACHABLE, 7): (3, 5),
}


def v4_equivalent(err: Icmp6Error) -> tuple[int, int]:
    """The ICMPv4 (type, code) meaning the same to TCP, for core/icmp.py's `classify`:
    packet too big is fragmentation needed (3, 4), hop limit exceeded is time
    exceeded (11, code), parameter problem is (3, 2) (Linux: fatal)."""
    if err.type == PACKET_TOO_BIG:
        return 3, 4
    if err.type == TIME_EXCEEDED:
        return 11, min(err.code, 1)
    if err.type == PARAMETER_PROBLEM:
        return 3, 2
    return _TO_V4.get((err.type, err.code), (3, 1))


def decode_icmp6(packet: bytes | bytearray | memoryview, *,
                 verify_checksum: bool = True) -> Icmp6Error | str | None:
    """The ICMPv6 error about a TCP segment in an IPv6 packet; None for ICMPv6 that is no
    business of TCP's (echo, neighbour discovery, an error about UDP); else why it is
    malformed, in words, for a counter. Never raises.

    The same contract as the ICMPv4 decoder (io/icmp_codec.py on branch icmp). The
    quote must hold the IPv6 header, any extension headers and the TCP ports and
    sequence number (RFC 4443 §2.4 asks for as much as fits in 1280 bytes).
    """
    try:
        return _icmp6_error(packet, verify_checksum)
    except (IndexError, struct.error):  # defensive: every read below is bounds-checked
        return "truncated ICMPv6 error"


def _icmp6_error(packet: Bytes, verify_checksum: bool) -> Icmp6Error | str | None:
    if len(packet) < 40:
        return "truncated IPv6 header"
    vtf, plen, nh, _hlim, src, dst = _IP6_HDR.unpack_from(packet)
    end = 40 + plen
    if vtf >> 28 != 6 or end > len(packet):
        return "bad or truncated IPv6 header"
    found = _walk(packet, nh, 40, end)
    if isinstance(found, str):
        return found
    if found[0] != ICMPV6:
        return "not ICMPv6"
    at = found[1]
    if end - at < 8:
        return "truncated ICMPv6 header"
    if verify_checksum and (int.from_bytes(src + dst, "big") + (end - at) + ICMPV6
                            + _sum16(packet[at:end])) % 0xFFFF:
        return "bad ICMPv6 checksum"
    kind, code, _sum, rest = _ICMP_HDR.unpack_from(packet, at)
    if kind not in _ERROR_TYPES:
        return None  # informational (echo, neighbour discovery, ...) or an unknown error
    quote = packet[at + 8 : end]
    if len(quote) < 40 + 8:
        return "ICMPv6 error quotes too little"
    q_vtf, q_plen, q_nh, _q_hlim, q_src, q_dst = _IP6_HDR.unpack_from(quote)
    if q_vtf >> 28 != 6:
        return "ICMPv6 error quotes a bad IPv6 header"
    # The quote is cut short by design: walk its headers within what was quoted.
    inner = _walk(quote, q_nh, 40, len(quote))
    if isinstance(inner, str):
        return None if inner == FRAGMENT else "ICMPv6 error quotes a bad header chain"
    if inner[0] != IPPROTO_TCP:
        return None  # about UDP or another protocol
    if inner[1] + 8 > len(quote):
        return "ICMPv6 error quotes too little"
    sport, dport, seq = _QUOTED_TCP.unpack_from(quote, inner[1])
    return Icmp6Error(kind, code, _ntoa6(src), _ntoa6(q_src), _ntoa6(q_dst), sport, dport,
                      seq, rest if kind == PACKET_TOO_BIG else 0, 40 + q_plen)


# --- Scapy bridge (lazy imports) ---------------------------------------------------------

def to_scapy6(seg: Segment, ext: Sequence[ExtHeader] = (), **ip_fields: Any) -> Packet:
    """`IPv6()[/extension headers]/TCP()[/Raw()]` with the same fields as `seg`;
    `bytes(to_scapy6(seg, ext)) == encode6(seg, ext=ext)`."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
    from scapy.packet import Raw

    layers = {HOP_BY_HOP: IPv6ExtHdrHopByHop, DEST_OPTS: IPv6ExtHdrDestOpt,
              ROUTING: IPv6ExtHdrRouting}
    pkt: Packet = IPv6(src=seg.src, dst=seg.dst, **{"hlim": 64, **ip_fields})
    for kind, body in ext:
        size = 2 + len(body)
        layer = layers[kind](bytes((0, size // 8 - 1)) + body)  # Scapy reads the body
        del layer.nh  # unset: Scapy fills it in from the layer that follows
        if kind != ROUTING:
            layer.autopad = 0  # write the options as read, padding included (as encode6)
        pkt /= layer
    pkt /= TCP(sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags,
               window=seg.window, urgptr=seg.urgent, options=scapy_options(seg.options))
    if seg.payload:
        pkt /= Raw(load=seg.payload)
    return pkt


def from_scapy6(pkt: Packet) -> Segment:
    """The Segment in a Scapy packet holding IPv6 and TCP layers (built or dissected).
    Raises ValueError if there is none."""
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Padding

    if IPv6 not in pkt or TCP not in pkt:
        raise ValueError(f"not an IPv6/TCP packet: {pkt.summary()}")
    ip, tcp = pkt[IPv6], pkt[TCP]
    payload = bytes(tcp.payload)
    padding = tcp.getlayer(Padding)
    if padding is not None:
        payload = payload[: len(payload) - len(bytes(padding))]
    return Segment(src=ip.src, dst=ip.dst, sport=tcp.sport, dport=tcp.dport, seq=tcp.seq,
                   ack=tcp.ack, flags=int(tcp.flags) & 0xFF, window=tcp.window,
                   options=parse_options(tcp.self_build()[20:]), payload=payload,
                   urgent=tcp.urgptr)


def to_scapy_any(seg: Segment) -> Packet:
    """`codec.to_scapy` or `to_scapy6`, by the segment's address family (trace, pcap, shell)."""
    return to_scapy6(seg) if ":" in seg.src else to_scapy(seg)


def from_scapy_any(pkt: Packet) -> Segment:
    """`codec.from_scapy` or `from_scapy6`, by the packet's layers."""
    from scapy.layers.inet6 import IPv6

    return from_scapy6(pkt) if IPv6 in pkt else from_scapy(pkt)
