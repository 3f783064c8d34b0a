"""The IPv6 packet filter, run by a small classic-BPF interpreter (the kernel's wire test
is in tests/wire: v6_helpers.Wire attaches it)."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address
from socket import AF_INET6, inet_pton

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpscapy.io.bpf6 import ETH_P_IPV6, ipv6_dst_filter


def run_bpf(program: bytes, frame: bytes) -> int:
    """The bytes classic BPF keeps of `frame` (ldh/ld absolute, jeq k, ret k only)."""
    insns = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code in (0x28, 0x20):
            size = 2 if code == 0x28 else 4
            if k + size > len(frame):
                return 0  # the kernel drops on an out-of-bounds load
            acc = int.from_bytes(frame[k : k + size], "big")
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def frame(dst: str, ethertype: int = ETH_P_IPV6) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, 0, 6, 64, bytes(16), inet_pton(AF_INET6, dst))
    return bytes(12) + struct.pack("!H", ethertype) + ip


ADDRESSES6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=50, deadline=None)
@given(st.lists(ADDRESSES6, min_size=1, max_size=15), ADDRESSES6)
def test_keeps_exactly_the_frames_to_our_addresses(ours: list[str], other: str) -> None:
    program = ipv6_dst_filter(ours)
    for address in ours:
        assert run_bpf(program, frame(address)) > 0
        assert run_bpf(program, frame(address, 0x0800)) == 0
    kept = run_bpf(program, frame(other)) > 0
    assert kept == (inet_pton(AF_INET6, other) in {inet_pton(AF_INET6, a) for a in ours})


def test_near_misses_in_each_word_are_dropped() -> None:
    program = ipv6_dst_filter(["fd77::1", "fd77::99"])
    packed = inet_pton(AF_INET6, "fd77::1")
    for byte in (0, 5, 9, 15):
        near = bytearray(packed)
        near[byte] ^= 1
        assert run_bpf(program, frame(str(IPv6Address(bytes(near))))) == 0
    assert run_bpf(program, frame("fd77::1")[:40]) == 0  # too short to hold the address


def test_address_count_is_bounded() -> None:
    with pytest.raises(ValueError, match="1 to 15"):
        ipv6_dst_filter([])
    with pytest.raises(ValueError, match="1 to 15"):
        ipv6_dst_filter(["::1"] * 16)
