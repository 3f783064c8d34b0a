"""ICMP errors in bytes (tcpscapy/io/icmp_codec.py): parsed as Scapy builds them; bad
input never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror

from tcpscapy.core.icmp import IcmpError
from tcpscapy.core.segment import ACK, Segment
from tcpscapy.io import codec
from tcpscapy.io.icmp_codec import decode_icmp, encode_icmp

SEG = Segment("10.1.0.2", "10.2.0.2", 40000, 5001, 123456789, 42, ACK, 502, payload=b"x" * 1400)
OFFENDING = codec.encode(SEG)


def test_frag_needed_round_trip() -> None:
    packet = encode_icmp(3, 4, "10.1.0.1", OFFENDING, mtu=1280)
    assert decode_icmp(packet) == IcmpError(3, 4, "10.1.0.1", "10.1.0.2", "10.2.0.2", 40000,
                                            5001, 123456789, 1280, len(OFFENDING))


def test_what_scapy_builds_is_read_the_same() -> None:
    pkt = IP(src="10.1.0.1", dst="10.1.0.2") / ICMP(type=3, code=4, nexthopmtu=1280) / \
        IPerror(src="10.1.0.2", dst="10.2.0.2", len=1480) / TCPerror(
            sport=40000, dport=5001, seq=7)
    got = decode_icmp(bytes(pkt))
    assert isinstance(got, IcmpError)
    assert (got.type, got.code, got.reporter, got.sport, got.dport, got.seq, got.mtu,
            got.quoted_len) == (3, 4, "10.1.0.1", 40000, 5001, 7, 1280, 1480)
    port = IP(src="10.2.0.2", dst="10.1.0.2") / ICMP(type=3, code=3) / IP(OFFENDING)
    got = decode_icmp(bytes(port))
    assert isinstance(got, IcmpError) and got.mtu == 0 and got.code == 3


def test_not_our_business_is_said_in_words() -> None:
    echo = bytes(IP(src="1.2.3.4", dst="10.1.0.2") / ICMP(type=8))
    assert decode_icmp(echo) is None  # fine, but none of TCP's business
    udp = bytes(IP(src="1.2.3.4", dst="10.1.0.2") / ICMP(type=3, code=3) /
                IP(src="10.1.0.2", dst="1.2.3.4", proto=17) / (b"\0" * 8))
    assert decode_icmp(udp) is None
    tcp = bytes(IP() / TCP())
    assert decode_icmp(tcp) == "not ICMP"
    bad = bytearray(encode_icmp(3, 4, "10.1.0.1", OFFENDING, mtu=1280))
    bad[-1] ^= 0xFF
    assert decode_icmp(bytes(bad)) == "bad ICMP checksum"


def test_every_truncation_is_rejected_without_raising() -> None:
    packet = encode_icmp(3, 4, "10.1.0.1", OFFENDING, mtu=1280)
    for cut in range(len(packet)):
        assert isinstance(decode_icmp(packet[:cut]), str)
    short_quote = encode_icmp(3, 1, "10.1.0.1", OFFENDING, quote=27)  # RFC 792 asks 28
    assert decode_icmp(short_quote) == "ICMP error quotes too little"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = decode_icmp(data)
    assert result is None or isinstance(result, IcmpError | str)


@settings(max_examples=300, deadline=None)
@given(st.integers(20, 60), st.binary(min_size=1, max_size=8))
def test_corrupted_errors_never_raise(at: int, junk: bytes) -> None:
    packet = bytearray(encode_icmp(3, 4, "10.1.0.1", OFFENDING, mtu=1280))
    packet[at : at + len(junk)] = junk
    result = decode_icmp(bytes(packet))
    assert result is None or isinstance(result, IcmpError | str)


def test_every_segment_we_send_has_df_set() -> None:
    """Path MTU discovery needs DF on all of them, GSO runs included (the kernel copies the
    header onto each piece it cuts)."""
    run = [SEG._replace(seq=SEG.seq + i * 1400) for i in range(3)]
    for packet in (codec.encode(SEG), codec.encode_offload(SEG), codec.encode_run(run)):
        assert int.from_bytes(packet[6:8], "big") & 0x4000
    assert str(codec.to_scapy(SEG).flags) == "DF"
