"""The offload side of the codec: kernel-completed checksums, GSO runs, the fast sum.

`kernel_gso` is a reference model of what Linux does with a packet sent with a
virtio_net_hdr (NEEDS_CSUM, GSO TCPV4): cut the payload into `gso_size` pieces,
copy the headers with seq advanced, keep PSH/FIN on the last piece only, count
the IP id up, and fill in both checksums (RFC 1071, written out independently).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, FIN, PSH, SYN, Segment
from tcpscapy.io import codec
from tcpscapy.io.codec import decode, encode, encode_offload, encode_run, gso_runs

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TS = Options(timestamps=(1000, 2000))
MSS = 1448


def rfc1071(data: bytes) -> int:
    """The Internet checksum, word by word."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def complete_checksum(packet: bytes) -> bytes:
    """What the kernel does for NEEDS_CSUM: the sum from the TCP header on, field included."""
    ihl = (packet[0] & 0xF) * 4
    tcp = bytearray(packet[ihl:])
    struct.pack_into("!H", tcp, 16, rfc1071(bytes(tcp)))
    return packet[:ihl] + bytes(tcp)


def pseudo_sum(packet: bytes) -> int:
    """The folded pseudo-header sum (not inverted) of an IPv4/TCP packet."""
    ihl = (packet[0] & 0xF) * 4
    pseudo = packet[12:20] + struct.pack("!HH", 6, len(packet) - ihl)
    return ~rfc1071(pseudo) & 0xFFFF


def kernel_gso(packet: bytes, gso_size: int) -> list[bytes]:
    """Reference model of Linux software GSO for TCPv4 (see the module docstring)."""
    ihl = (packet[0] & 0xF) * 4
    thl = (packet[ihl + 12] >> 4) * 4
    header, payload = packet[: ihl + thl], packet[ihl + thl :]
    seq = struct.unpack_from("!I", header, ihl + 4)[0]
    ip_id = struct.unpack_from("!H", header, 4)[0]
    pieces = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
    out = []
    for n, piece in enumerate(pieces):
        hdr = bytearray(header)
        struct.pack_into("!H", hdr, 2, ihl + thl + len(piece))
        struct.pack_into("!H", hdr, 4, (ip_id + n) & 0xFFFF)
        struct.pack_into("!I", hdr, ihl + 4, (seq + n * gso_size) & 0xFFFFFFFF)
        if n < len(pieces) - 1:
            hdr[ihl + 13] &= ~(PSH | FIN) & 0xFF
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, rfc1071(bytes(hdr[:ihl])))
        struct.pack_into("!H", hdr, ihl + 16, 0)
        tcp = bytes(hdr[ihl:]) + piece
        check = rfc1071(bytes(hdr[12:20]) + struct.pack("!HH", 6, len(tcp)) + tcp)
        struct.pack_into("!H", hdr, ihl + 16, check)
        out.append(bytes(hdr) + piece)
    return out


def with_ip_id(packet: bytes, ip_id: int) -> bytes:
    """`packet` with another IP id and its IP checksum redone."""
    hdr = bytearray(packet[:20])
    struct.pack_into("!HH", hdr, 4, ip_id, struct.unpack_from("!H", hdr, 6)[0])
    struct.pack_into("!H", hdr, 10, 0)
    struct.pack_into("!H", hdr, 10, rfc1071(bytes(hdr)))
    return bytes(hdr) + packet[20:]


def data(seq: int, size: int = MSS, flags: int = ACK, **fields: object) -> Segment:
    base: dict[str, object] = dict(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80,
                                   seq=seq & 0xFFFFFFFF, ack=7, flags=flags, window=512,
                                   options=TS, payload=bytes([seq % 251]) * size)
    base.update(fields)
    return Segment(**base)  # type: ignore[arg-type]


def train(n: int, start: int = 1000, last_flags: int = ACK | PSH, last_size: int = MSS
          ) -> list[Segment]:
    """n contiguous data segments, the last one `last_size` bytes with `last_flags`."""
    segs = [data(start + i * MSS) for i in range(n - 1)]
    return [*segs, data(start + (n - 1) * MSS, last_size, last_flags)]


# -- the checksum sum ------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=3000))
def test_sum16_is_the_rfc1071_sum(blob: bytes) -> None:
    expected = ~rfc1071(blob) & 0xFFFF  # the folded sum; 0xFFFF and 0 are both "zero"
    assert codec._sum16(blob) % 0xFFFF == expected % 0xFFFF


def test_sum16_of_all_ones_and_odd_sizes_around_the_split() -> None:
    for size in (254, 255, 256, 257, 1447, 1448, 1449):
        for blob in (b"\xff" * size, bytes(range(256)) * 6):
            blob = blob[:size]
            assert codec._sum16(blob) % 0xFFFF == (~rfc1071(blob) & 0xFFFF) % 0xFFFF


# -- kernel-completed checksums ------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=1460), st.integers(0, 2**32 - 1), st.sampled_from([ACK, ACK | PSH, SYN]))
def test_encode_offload_completed_by_the_kernel_is_encode(payload: bytes, seq: int,
                                                          flags: int) -> None:
    seg = data(seq, flags=flags, payload=payload)
    partial = encode_offload(seg)
    assert struct.unpack_from("!H", partial, 36)[0] % 0xFFFF == pseudo_sum(partial) % 0xFFFF
    assert complete_checksum(partial) == encode(seg)


# -- GSO runs ------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(2, 45), st.integers(1, MSS), st.sampled_from([ACK, ACK | PSH, ACK | FIN]),
       st.integers(0, 2**32 - 1))
def test_a_run_segmented_by_the_kernel_is_each_segment(n: int, last_size: int, last_flags: int,
                                                        start: int) -> None:
    run = train(n, start, last_flags, last_size)
    assert gso_runs(run) == [run]
    pieces = kernel_gso(encode_run(run), MSS)
    assert len(pieces) == n
    for ip_id, (piece, seg) in enumerate(zip(pieces, run, strict=True)):
        assert piece == with_ip_id(encode(seg), ip_id)
        assert decode(piece) == seg


def test_runs_are_cut_at_64_kilobytes() -> None:
    segs = train(100)
    runs = gso_runs(segs)
    assert [len(run) for run in runs] == [45, 45, 10]
    assert [seg for run in runs for seg in run] == segs
    assert all(len(encode_run(run)) <= 0xFFFF for run in runs)
    assert len(encode_run(segs[:45])) + MSS > 0xFFFF  # a 46th would not fit


def test_a_short_or_pushed_segment_ends_a_run() -> None:
    short = [data(1000), data(1000 + MSS, 100), data(1100 + MSS), data(1100 + 2 * MSS)]
    assert [len(run) for run in gso_runs(short)] == [2, 2]
    pushed = [data(1000), data(1000 + MSS, flags=ACK | PSH), data(1000 + 2 * MSS)]
    assert [len(run) for run in gso_runs(pushed)] == [2, 1]


def test_segments_that_differ_in_more_than_seq_are_not_merged() -> None:
    base = data(1000)
    nxt = 1000 + MSS
    for other in (data(nxt, ack=8), data(nxt, window=511), data(nxt, options=Options(
            timestamps=(1001, 2000))), data(nxt, sport=40001), data(nxt, dst="10.0.0.3"),
            data(nxt + 1), data(nxt, urgent=1), data(nxt, size=MSS + 1)):
        assert gso_runs([base, other]) == [[base], [other]], other


def test_control_segments_and_pure_acks_go_alone() -> None:
    ack = data(1000, 0)
    syn = data(999, 0, SYN)
    first_pushed = data(1000, flags=ACK | PSH)
    segs = [syn, ack, ack, first_pushed, data(1000 + MSS)]
    assert gso_runs(segs) == [[seg] for seg in segs]


def test_interleaved_connections_make_separate_runs() -> None:
    a1, a2 = data(1000), data(1000 + MSS)
    b1 = data(5000, sport=40001)
    assert gso_runs([a1, b1, a2]) == [[a1], [b1], [a2]]
    assert gso_runs([a1, a2, b1]) == [[a1, a2], [b1]]


def test_a_run_across_the_sequence_wrap() -> None:
    run = train(3, start=2**32 - MSS)
    assert gso_runs(run) == [run]
    assert [decode(p) for p in kernel_gso(encode_run(run), MSS)] == run


def test_a_run_of_one_is_a_single_offloaded_segment() -> None:
    seg = data(1000)
    assert encode_run([seg]) == encode_offload(seg)
