"""ICMPv4 errors that quote a TCP segment: bytes to core.icmp.IcmpError, and back.

`decode_icmp` never raises. ICMP that is fine but none of TCP's business (an
echo request, an error about a UDP datagram) comes back as None; anything else
that is not a well-formed ICMP error quoting an IPv4/TCP header (RFC 792: the
IP header and at least the first 8 bytes of the segment, which hold the ports
and the sequence number) as the reason in words, for the driver's
`icmp_malformed` counter.

`encode_icmp` builds one (tests, the bench's spoofing checks), the way a
router does: IP header from `reporter`, ICMP header, then the start of the
offending packet.
"""

from __future__ import annotations

import struct
from socket import AF_INET, inet_ntop, inet_pton

from tcpscapy.core.icmp import DEST_UNREACHABLE, FRAG_NEEDED, IcmpError

__all__ = ["decode_icmp", "encode_icmp"]

IPPROTO_ICMP, IPPROTO_TCP = 1, 6
_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time, parameter
_IP = struct.Struct("!BBHHHBBH4s4s")
_ICMP = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU
_QUOTED_TCP = struct.Struct("!HHI")  # ports, sequence number
_MF_OR_OFFSET = 0x3FFF


def _csum_ok(data: bytes | memoryview) -> bool:
    size = len(data)
    total = int.from_bytes(data, "big") << (8 * (size & 1))
    return total % 0xFFFF == 0


def decode_icmp(packet: bytes | bytearray | memoryview) -> IcmpError | str | None:
    """The ICMP error about a TCP segment in an IPv4 packet; None for other ICMP; else
    why it is malformed."""
    data = bytes(packet)
    size = len(data)
    if size < 20:
        return "truncated IP header"
    ver_ihl, _tos, ip_len, _id, frag, _ttl, proto, _sum, src, _dst = _IP.unpack_from(data)
    ihl = (ver_ihl & 0xF) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or ip_len < ihl + 8 or ip_len > size:
        return "bad or truncated IP header"
    if proto != IPPROTO_ICMP:
        return "not ICMP"
    if frag & _MF_OR_OFFSET:
        return "IP fragment"
    icmp = data[ihl:ip_len]
    if not _csum_ok(icmp):
        return "bad ICMP checksum"
    type_, code, _csum, _unused, mtu = _ICMP.unpack_from(icmp)
    if type_ not in _ERROR_TYPES:
        return None  # echo, timestamp, ...: no error
    quoted = icmp[8:]
    if len(quoted) < 20 + 8:
        return "ICMP error quotes too little"
    q_ver_ihl, _, q_len, _, _, _, q_proto, _, q_src, q_dst = _IP.unpack_from(quoted)
    q_ihl = (q_ver_ihl & 0xF) * 4
    if q_ver_ihl >> 4 != 4 or q_ihl < 20 or len(quoted) < q_ihl + 8:
        return "ICMP error quotes a bad IP header"
    if q_proto != IPPROTO_TCP:
        return None  # about UDP or another protocol
    sport, dport, seq = _QUOTED_TCP.unpack_from(quoted, q_ihl)
    if not (type_ == DEST_UNREACHABLE and code == FRAG_NEEDED):
        mtu = 0
    return IcmpError(type_, code, inet_ntop(AF_INET, src), inet_ntop(AF_INET, q_src),
                     inet_ntop(AF_INET, q_dst), sport, dport, seq, mtu, q_len)


def _checksum(data: bytes) -> int:
    total = int.from_bytes(data, "big") << (8 * (len(data) & 1))
    rest = total % 0xFFFF
    return 0xFFFF - rest if rest else 0


def encode_icmp(type_: int, code: int, reporter: str, offending: bytes, *,
                mtu: int = 0, quote: int = 28) -> bytes:
    """An ICMP error from `reporter` about the IPv4 packet `offending` (its first
    `quote` bytes are quoted; 28 = IP header + 8, as RFC 792 asks at the least)."""
    quoted = offending[:quote]
    body = struct.pack("!BBHHH", type_, code, 0, 0, mtu) + quoted
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    dst = offending[12:16]  # back to the sender of the offending packet
    header = bytearray(_IP.pack(0x45, 0xC0, 20 + len(body), 0, 0, 64, IPPROTO_ICMP, 0,
                                inet_pton(AF_INET, reporter), dst))
    struct.pack_into("!H", header, 10, _checksum(bytes(header)))
    return bytes(header) + body
