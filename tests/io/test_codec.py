"""The struct codec against Scapy's build and dissect, round trips and hostile bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption
from scapy.packet import Raw

from tcpscapy.core.options import EXPERIMENTAL, MAX_OPTIONS_LEN, TFO_MAGIC, Options
from tcpscapy.core.segment import ACK, PSH, SYN, Segment
from tcpscapy.io.codec import decode, decode_ex, encode, from_scapy, scapy_options, to_scapy

U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 2**16 - 1)
ADDRESSES = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
KNOWN_KINDS = {0, 1, 2, 3, 4, 5, 8, 34, 254}
UNKNOWN_KINDS = st.integers(2, 255).filter(lambda k: k not in KNOWN_KINDS)
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def options(draw: st.DrawFn) -> Options:
    """Any Options that encode_options lays out whole (no SACK block left out)."""
    fields: dict[str, object] = {}
    used = 0
    if draw(st.booleans()):
        fields["mss"] = draw(U16)
        used += 4
    fields["sack_permitted"] = draw(st.booleans())
    if draw(st.booleans()):
        fields["timestamps"] = (draw(U32), draw(U32))
        used += 12
    elif fields["sack_permitted"]:
        used += 4
    if draw(st.booleans()):
        fields["wscale"] = draw(st.integers(0, 255))
        used += 4
    if draw(st.booleans()):
        cookie = draw(st.binary(max_size=16))
        experimental = draw(st.booleans())
        fields["tfo_cookie"], fields["tfo_experimental"] = cookie, experimental
        used += len(cookie) + (4 if experimental else 2)
        used += -used % 4
    unknown = []
    for _ in range(draw(st.integers(0, 3))):
        room = MAX_OPTIONS_LEN - used - 2
        if room < 0:
            break
        kind = draw(UNKNOWN_KINDS | st.just(EXPERIMENTAL))
        body = draw(st.binary(max_size=min(room, 10)))
        if kind == EXPERIMENTAL and body[:2] == TFO_MAGIC:
            continue  # that would be TFO, not an unknown option
        unknown.append((kind, body))
        used += 2 + len(body)
    fields["unknown"] = tuple(unknown)
    room = (MAX_OPTIONS_LEN - used - 4) // 8
    if room > 0:
        fields["sack_blocks"] = tuple(draw(st.lists(st.tuples(U32, U32), max_size=min(room, 4))))
    return Options(**fields)  # type: ignore[arg-type]


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    return Segment(
        src=draw(ADDRESSES), dst=draw(ADDRESSES), sport=draw(U16), dport=draw(U16),
        seq=draw(U32), ack=draw(U32), flags=draw(st.integers(0, 255)), window=draw(U16),
        options=draw(options()), payload=draw(st.binary(max_size=1500)), urgent=draw(U16),
    )


def scapy_reference(seg: Segment, ip_id: int, ttl: int, df: bool) -> bytes:
    """Scapy's own build of the same fields, written out without our to_scapy."""
    pkt = IP(src=seg.src, dst=seg.dst, id=ip_id, ttl=ttl, flags="DF" if df else 0) / TCP(
        sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags,
        window=seg.window, urgptr=seg.urgent, options=scapy_options(seg.options),
    ) / Raw(seg.payload)
    return bytes(pkt)


@SETTINGS
@given(segments(), U16, st.integers(0, 255), st.booleans())
def test_encode_is_byte_identical_to_scapy(seg: Segment, ip_id: int, ttl: int, df: bool) -> None:
    assert encode(seg, ip_id=ip_id, ttl=ttl, df=df) == scapy_reference(seg, ip_id, ttl, df)


@SETTINGS
@given(segments())
def test_to_scapy_defaults_match_encode_defaults(seg: Segment) -> None:
    assert bytes(to_scapy(seg)) == encode(seg)


@SETTINGS
@given(segments())
def test_round_trip(seg: Segment) -> None:
    assert decode(encode(seg)) == seg


@SETTINGS
@given(segments())
def test_from_scapy_agrees_with_decode(seg: Segment) -> None:
    built = to_scapy(seg)
    wire = bytes(built)
    assert from_scapy(built) == decode(wire) == seg
    assert from_scapy(IP(wire)) == seg  # dissected, including Scapy-lossy option kinds


def test_from_scapy_reads_what_scapy_could_not_dissect() -> None:
    """Scapy 2.8 gives up on a 1-byte kind-29 (TCP-AO) option and leaves Raw; we still read it."""
    seg = Segment("0.0.0.0", "0.0.0.0", 0, 0, 0, 0, 0, 0, Options(unknown=((29, b"\x00"),)))
    assert from_scapy(IP(encode(seg))) == seg


def test_from_scapy_ignores_link_padding() -> None:
    seg = Segment("10.0.0.1", "10.0.0.2", 1, 2, 3, 4, PSH | ACK, 5, payload=b"hi")
    padded = encode(seg) + bytes(12)
    assert from_scapy(IP(padded)) == decode(padded) == seg


def test_from_scapy_rejects_non_tcp() -> None:
    with pytest.raises(ValueError, match="not an IPv4/TCP packet"):
        from_scapy(IP(dst="10.0.0.2") / Raw(b"x"))


def test_scapy_options_leaves_out_sack_blocks_like_encode_options() -> None:
    opts = Options(timestamps=(1, 2), sack_blocks=tuple((i, i + 10) for i in range(4)))
    seg = Segment("1.2.3.4", "5.6.7.8", 1, 2, 3, 4, ACK, 5, opts)
    sack = [value for name, value in scapy_options(opts) if name == "SAck"]
    assert sack == [(0, 10, 1, 11, 2, 12)]  # 12 + 4 + 3 * 8 = 40 bytes: the 4th is dropped
    assert encode(seg) == scapy_reference(seg, 0, 64, True)
    assert decode(encode(seg)).options.sack_blocks == ((0, 10), (1, 11), (2, 12))


def rfc1071(data: bytes) -> int:
    """The Internet checksum the slow, obvious way: 16-bit words, end-around carry."""
    data += b"\x00" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@SETTINGS
@given(segments())
def test_checksums_match_the_rfc1071_reference(seg: Segment) -> None:
    wire = encode(seg)
    header, tcp = wire[:20], wire[20:]
    assert struct.unpack_from("!H", header, 10)[0] == rfc1071(header[:10] + b"\0\0" + header[12:])
    pseudo = header[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert struct.unpack_from("!H", tcp, 16)[0] == rfc1071(pseudo + tcp[:16] + b"\0\0" + tcp[18:])


def test_syn_layout() -> None:
    """Every byte of a SYN, checksums zeroed (checked above), written out by hand."""
    seg = Segment("10.0.0.1", "10.0.0.2", 40000, 80, 1, 0, SYN, 64240, Options(mss=1460))
    wire = encode(seg, ip_id=0x1234)
    masked = wire[:10] + b"\0\0" + wire[12:36] + b"\0\0" + wire[38:]
    expected = (
        "45 00 002c 1234 4000 40 06 0000 0a000001 0a000002"  # len 44, DF, ttl 64, TCP
        "9c40 0050 00000001 00000000 60 02 faf0 0000 0000"  # offset 6, SYN, window 64240
        "02 04 05b4"  # MSS 1460
    )
    assert masked.hex() == expected.replace(" ", "")
    assert decode(wire) == seg


# --- hostile input --------------------------------------------------------------------

VALID = encode(Segment("192.0.2.1", "198.51.100.7", 443, 51000, 7, 9, PSH | ACK, 100,
                       Options(timestamps=(5, 6), sack_blocks=((1, 2),)), b"payload!"))


@SETTINGS
@given(st.binary(max_size=120))
def test_decode_never_raises_on_random_bytes(data: bytes) -> None:
    for verify in (True, False):
        assert decode(data, verify_checksum=verify) is None or data[0] >> 4 == 4


@SETTINGS
@given(st.binary(min_size=40, max_size=120), st.integers(5, 15), st.integers(0, 15))
def test_decode_never_raises_on_plausible_headers(rest: bytes, ihl: int, doff: int) -> None:
    """Random bytes behind a header that passes the first checks, to reach option parsing."""
    data = bytearray(rest)
    data[0] = 0x40 | ihl
    struct.pack_into("!H", data, 2, len(data))
    data[6:8] = b"\x00\x00"
    data[9] = 6
    if ihl * 4 + 12 < len(data):
        data[ihl * 4 + 12] = doff << 4
    result = decode_ex(bytes(data), verify_checksum=False)
    assert (result.segment is None) != (result.reason == "")


@SETTINGS
@given(st.data())
def test_decode_never_raises_on_mutations(data: st.DataObject) -> None:
    packet = bytearray(VALID)
    mutation = data.draw(st.sampled_from(["truncate", "flip", "doff", "ihl", "len", "junk"]))
    if mutation == "truncate":
        del packet[data.draw(st.integers(0, len(packet) - 1)) :]
    elif mutation == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            bit = data.draw(st.integers(0, 8 * len(packet) - 1))
            packet[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "doff":
        packet[32] = data.draw(st.integers(0, 15)) << 4 | (packet[32] & 0xF)
    elif mutation == "ihl":
        packet[0] = 0x40 | data.draw(st.integers(0, 15))
    elif mutation == "len":
        struct.pack_into("!H", packet, 2, data.draw(U16))
    else:
        packet += data.draw(st.binary(max_size=20))
    for verify in (True, False):
        result = decode_ex(bytes(packet), verify_checksum=verify)
        assert (result.segment is None) != (result.reason == "")
    if mutation == "junk":  # bytes past the IP total length are link-layer padding
        assert decode(bytes(packet)) == decode(VALID)


@SETTINGS
@given(segments(), st.data())
def test_checksum_catches_a_flipped_payload_bit(seg: Segment, data: st.DataObject) -> None:
    if not seg.payload:
        seg = seg.replace(payload=b"\x00")
    packet = bytearray(encode(seg))
    bit = data.draw(st.integers(0, 8 * len(seg.payload) - 1))
    packet[len(packet) - len(seg.payload) + bit // 8] ^= 1 << (bit % 8)
    assert decode_ex(bytes(packet)) == (None, "bad TCP checksum")
    unchecked = decode(bytes(packet), verify_checksum=False)
    assert unchecked is not None and unchecked.payload != seg.payload


@pytest.mark.parametrize(("offset", "value", "reason"), [
    (0, 0x65, "not IPv4"),
    (0, 0x44, "bad IP header length"),
    (8, 63, "bad IP checksum"),  # ttl changed, IP checksum left alone
    (9, 17, "not TCP"),
    (6, 0x20, "IP fragment"),  # more-fragments bit
    (7, 0x01, "IP fragment"),  # offset 8
    (32, 0x40, "bad TCP data offset"),
    (32, 0xF0, "bad TCP data offset"),
])
def test_decode_says_why(offset: int, value: int, reason: str) -> None:
    packet = bytearray(VALID)
    packet[offset] = value
    assert decode_ex(bytes(packet)) == (None, reason)


def test_decode_length_reasons() -> None:
    assert decode_ex(VALID[:19]).reason == "truncated IP header"
    assert decode_ex(VALID[:-1]).reason == "truncated IP packet"
    short = bytearray(VALID)
    struct.pack_into("!H", short, 2, 30)
    assert decode_ex(bytes(short), verify_checksum=False).reason == "truncated TCP header"
    struct.pack_into("!H", short, 2, 10)
    assert decode_ex(bytes(short), verify_checksum=False).reason == "bad IP total length"


def test_decode_accepts_ip_options_and_memoryview() -> None:
    """IHL 6 (one IP option word): Scapy builds it, we skip it."""
    seg = decode(VALID)
    assert seg is not None
    wire = bytes(to_scapy(seg, options=[IPOption(b"\x01\x01\x01\x00")]))
    assert wire[0] == 0x46
    assert decode(memoryview(wire)) == seg


@pytest.mark.parametrize("bad", [
    {"sport": 70000}, {"seq": -1}, {"src": "10.0.0"}, {"dst": "example.org"},
    {"payload": bytes(65536)},
])
def test_encode_rejects_fields_that_do_not_fit(bad: dict[str, object]) -> None:
    seg = Segment("10.0.0.1", "10.0.0.2", 1, 2, 3, 4, ACK, 5).replace(**bad)
    with pytest.raises(ValueError):
        encode(seg)


def test_from_scapy_uses_the_option_bytes_scapy_read() -> None:
    """Scapy dissects a 1-byte kind-25 ("Mood") option as b'' and would rebuild it wrong."""
    seg = Segment("1.2.3.4", "5.6.7.8", 1, 2, 3, 4, ACK, 5, Options(unknown=((25, b"\x07"),)))
    assert from_scapy(IP(encode(seg))) == seg


@SETTINGS
@given(segments())
def test_checksums_that_come_out_zero(seg: Segment) -> None:
    """Choose a payload word and an IP id that make both sums 0xFFFF: the fields must be 0."""
    seg = seg.replace(payload=seg.payload[: len(seg.payload) & ~1] + b"\0\0")
    first = encode(seg)
    tcp_sum, ip_sum = struct.unpack_from("!H", first, 36)[0], struct.unpack_from("!H", first, 10)[0]
    seg = seg.replace(payload=seg.payload[:-2] + struct.pack("!H", tcp_sum))
    wire = encode(seg, ip_id=ip_sum)
    assert struct.unpack_from("!H", wire, 36)[0] == 0 == struct.unpack_from("!H", wire, 10)[0]
    assert wire == scapy_reference(seg, ip_sum, 64, True)
    assert decode(wire) == seg
