"""Classic BPF for the IPv6 packet sockets: keep only frames for our addresses.

The IPv4 filter (rawsock.tcp_dst_filter) also checks the protocol; over IPv6 the
TCP header may sit behind extension headers, and ICMPv6 errors (packet too big)
and neighbour discovery matter too, so this one checks only the EtherType and
the destination address, and codec6 / nd.py sort out the rest. Each address
costs four 32-bit compares; the kernel runs the program before copying a frame.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from socket import AF_INET6, inet_pton

from tcpscapy.io.rawsock import ETH_HLEN, RECV_BUFFER, _attach_filter

__all__ = ["ETH_P_IPV6", "attach", "ipv6_dst_filter"]

ETH_P_IPV6 = 0x86DD
_DST = ETH_HLEN + 24  # the destination address in an Ethernet frame
_LDH, _LD, _JEQ, _RET = 0x28, 0x20, 0x15, 0x06


def ipv6_dst_filter(addresses: Sequence[str]) -> bytes:
    """A program keeping IPv6 frames to any of `addresses` (up to 15), dropping the rest."""
    if not 1 <= len(addresses) <= 15:
        raise ValueError("an IPv6 filter takes 1 to 15 addresses")  # jumps reach 255 at most
    words = [struct.unpack("!4I", inet_pton(AF_INET6, a)) for a in addresses]
    accept = 2 + 8 * len(words)  # instruction indexes: two per word, after two for the type
    drop = accept + 1
    program = [(_LDH, 0, 0, 12), (_JEQ, 0, drop - 2, ETH_P_IPV6)]
    for n, address in enumerate(words):
        mismatch = 2 + 8 * (n + 1) if n + 1 < len(words) else drop  # the next address
        for i, word in enumerate(address):
            after = len(program) + 2  # jumps count from the instruction after the jeq
            match = accept if i == 3 else after
            program += [(_LD, 0, 0, _DST + 4 * i), (_JEQ, match - after, mismatch - after, word)]
    program += [(_RET, 0, 0, RECV_BUFFER), (_RET, 0, 0, 0)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def attach(sock: socket.socket, addresses: Sequence[str]) -> None:
    """Attach `ipv6_dst_filter(addresses)` to a packet socket (before bind(), so that no
    unfiltered frame slips in)."""
    _attach_filter(sock, ipv6_dst_filter(addresses))
