"""Option encoding and parsing (RFC 9293 MUST-4..7, 64, 68, 69; RFC 7323; RFC 7413)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcpscapy.core.options import (
    MAX_OPTIONS_LEN,
    NO_OPTIONS,
    Options,
    encode_options,
    parse_options,
)

u32 = st.integers(0, 2**32 - 1)
KNOWN_KINDS = {0, 1, 2, 3, 4, 5, 8, 34, 254}
unknown_kind = st.integers(6, 253).filter(lambda k: k not in KNOWN_KINDS)


@st.composite
def options(draw: st.DrawFn) -> Options:
    """Options that fit the 40-byte space, as a SYN or a data segment could carry."""
    syn = draw(st.booleans())
    ts = draw(st.none() | st.tuples(u32, u32))
    if syn:
        cookie = draw(st.none() | st.sampled_from([b"", b"abcd", b"\x00\xab\xaa\xab\xe8\xe9T\xc2"]))
        return Options(mss=draw(st.none() | st.integers(0, 65535)),
                       wscale=draw(st.none() | st.integers(0, 14)),
                       sack_permitted=draw(st.booleans()), timestamps=ts, tfo_cookie=cookie,
                       tfo_experimental=cookie is not None and draw(st.booleans()))
    blocks = draw(st.lists(st.tuples(u32, u32), max_size=3 if ts else 4))
    unknown = () if blocks else tuple(draw(st.lists(
        st.tuples(unknown_kind, st.binary(max_size=6)), max_size=2)))
    return Options(timestamps=ts, sack_blocks=tuple(blocks), unknown=unknown)


@given(options())
def test_options_round_trip(opts: Options) -> None:
    wire = encode_options(opts)
    assert len(wire) % 4 == 0 and len(wire) <= MAX_OPTIONS_LEN
    assert parse_options(wire) == opts


@given(st.binary(max_size=60))
def test_parsing_never_raises_on_any_bytes(data: bytes) -> None:
    parsed = parse_options(data)
    assert isinstance(parsed, Options)


def test_linux_syn_layout() -> None:
    opts = Options(mss=1460, sack_permitted=True, timestamps=(1, 0), wscale=7)
    assert encode_options(opts).hex() == "020405b40402080a0000000100000000" + "01030307"


def test_eol_ends_the_list_and_nops_are_skipped() -> None:
    assert parse_options(bytes([1, 1, 2, 4, 5, 0xB4, 0, 3, 3, 7])) == Options(mss=1460)


def test_illegal_lengths_stop_parsing_without_raising() -> None:
    zero = parse_options(bytes([2, 4, 5, 0xB4, 8, 0, 1, 1]))  # MUST-7: length zero
    assert zero.mss == 1460 and zero.malformed
    too_long = parse_options(bytes([3, 9, 7]))  # runs past the end
    assert too_long.malformed and too_long.wscale is None
    dangling = parse_options(bytes([1, 2]))  # kind with no length byte
    assert dangling.malformed


def test_known_kind_with_a_wrong_length_is_kept_as_unknown() -> None:
    parsed = parse_options(bytes([2, 3, 5, 1]))  # MSS must be 4 long
    assert parsed.mss is None and parsed.unknown == ((2, b"\x05"),)


def test_unknown_kinds_are_kept_raw() -> None:
    parsed = parse_options(bytes([99, 4, 0xAB, 0xCD, 2, 4, 1, 0]))
    assert parsed.unknown == ((99, b"\xab\xcd"),) and parsed.mss == 256


def test_tfo_cookie_in_both_formats() -> None:
    cookie = bytes.fromhex("00abaaabe8e954c2")
    iana = encode_options(Options(tfo_cookie=cookie))
    assert iana[:2] == bytes([34, 10]) and iana[2:10] == cookie
    exp = encode_options(Options(tfo_cookie=cookie, tfo_experimental=True))
    assert exp[:4] == bytes([254, 12, 0xF9, 0x89]) and exp[4:12] == cookie
    assert parse_options(exp) == Options(tfo_cookie=cookie, tfo_experimental=True)
    request = parse_options(bytes([34, 2, 1, 1]))
    assert request.tfo_cookie == b""
    other_experiment = parse_options(bytes([254, 4, 0x12, 0x34]))
    assert other_experiment.tfo_cookie is None and other_experiment.unknown


def test_sack_blocks_that_do_not_fit_are_left_out() -> None:
    blocks = tuple((i, i + 1) for i in range(4))
    wire = encode_options(Options(timestamps=(1, 2), sack_blocks=blocks))
    assert parse_options(wire).sack_blocks == blocks[:3]


def test_empty() -> None:
    assert encode_options(NO_OPTIONS) == b"" and parse_options(b"") == NO_OPTIONS
    assert not NO_OPTIONS and Options(mss=1)
