"""TCP options: a structured value, and its wire encoding and parsing.

Parsing follows RFC 9293 MUST-4..7, MUST-64, MUST-68, MUST-69: EOL, NOP and MSS
are understood anywhere, unknown kinds are kept (and ignored by the engine), and
an illegal length stops parsing without raising; the options read before it are
kept and `malformed` says what happened.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

EOL, NOP, MSS, WSCALE, SACK_PERMITTED, SACK, TIMESTAMPS = 0, 1, 2, 3, 4, 5, 8
TFO, EXPERIMENTAL = 34, 254
TFO_MAGIC = b"\xf9\x89"
MAX_OPTIONS_LEN = 40

_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")


class Options(NamedTuple):
    """The options of one segment. A NamedTuple: immutable, and cheap to build on
    every segment (a frozen dataclass costs four times as much)."""

    mss: int | None = None
    wscale: int | None = None  # the shift as sent; the engine clamps it to 14
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)
    sack_blocks: tuple[tuple[int, int], ...] = ()  # (left edge, right edge)
    tfo_cookie: bytes | None = None  # b"" is a cookie request
    tfo_experimental: bool = False  # kind 254 with magic 0xF989 instead of kind 34
    unknown: tuple[tuple[int, bytes], ...] = ()  # (kind, body) in order of appearance
    malformed: bool = False  # parsing stopped at an illegal option length

    def with_(self, **changes: Any) -> Options:
        return self._replace(**changes)

    def __bool__(self) -> bool:
        return self != NO_OPTIONS

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value, default in
                          zip(self._fields, self, NO_OPTIONS, strict=True) if value != default)
        return f"Options({shown})"


NO_OPTIONS = Options()


def encode_options(opts: Options) -> bytes:
    """Wire bytes, padded with EOL to a multiple of 4 (as Scapy pads).

    The layout is the kernel's: MSS, SACK-permitted with timestamps, window
    scale, TFO, unknown kinds, SACK blocks. SACK blocks that do not fit in the
    40-byte option space are left out (the oldest last, as RFC 2018 allows).
    """
    out = bytearray()
    if opts.mss is not None:
        out += bytes((MSS, 4)) + _U16.pack(opts.mss)
    if opts.timestamps is not None:
        out += bytes((SACK_PERMITTED, 2)) if opts.sack_permitted else bytes((NOP, NOP))
        out += bytes((TIMESTAMPS, 10)) + _U32X2.pack(*opts.timestamps)
    elif opts.sack_permitted:
        out += bytes((NOP, NOP, SACK_PERMITTED, 2))
    if opts.wscale is not None:
        out += bytes((NOP, WSCALE, 3, opts.wscale))
    if opts.tfo_cookie is not None:
        if opts.tfo_experimental:
            out += bytes((EXPERIMENTAL, 4 + len(opts.tfo_cookie))) + TFO_MAGIC
        else:
            out += bytes((TFO, 2 + len(opts.tfo_cookie)))
        out += opts.tfo_cookie
        out += bytes((NOP,)) * (-len(out) % 4)
    for kind, body in opts.unknown:
        out += bytes((kind, 2 + len(body))) + body
    blocks = opts.sack_blocks
    while blocks and len(out) + 4 + 8 * len(blocks) > MAX_OPTIONS_LEN:
        blocks = blocks[:-1]
    if blocks:
        out += bytes((NOP, NOP, SACK, 2 + 8 * len(blocks)))
        for left, right in blocks:
            out += _U32X2.pack(left, right)
    out += bytes(-len(out) % 4)
    if len(out) > MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options need {len(out)} bytes, more than {MAX_OPTIONS_LEN}")
    return bytes(out)


# The two layouts Linux sends on nearly every segment, read without the general loop
# (a SYN flood brings a new TSval in each SYN, so no memo helps there):
# NOP NOP TS on data and ACKs; MSS SACK-permitted TS NOP WS on SYNs and SYN-ACKs.
_TS_ONLY = b"\x01\x01\x08\x0a"
_SYN_MSS, _SYN_SACK_TS, _SYN_WS = b"\x02\x04", b"\x04\x02\x08\x0a", b"\x01\x03\x03"


def parse_options(data: bytes) -> Options:
    """Parse option bytes; never raises, whatever the bytes."""
    if not data:
        return NO_OPTIONS
    size = len(data)
    if size == 12 and data[:4] == _TS_ONLY:
        return Options(None, None, False, _U32X2.unpack_from(data, 4))
    if size == 20 and data[:2] == _SYN_MSS and data[4:8] == _SYN_SACK_TS \
            and data[16:19] == _SYN_WS:
        return Options(_U16.unpack_from(data, 2)[0], data[19], True, _U32X2.unpack_from(data, 8))
    return _parse_any(data)


def _parse_any(data: bytes) -> Options:
    fields: dict[str, object] = {}
    unknown: list[tuple[int, bytes]] = []
    i, end = 0, len(data)
    while i < end:
        kind = data[i]
        if kind == EOL:
            break
        if kind == NOP:
            i += 1
            continue
        if i + 1 >= end:
            fields["malformed"] = True
            break
        length = data[i + 1]
        if length < 2 or i + length > end:
            fields["malformed"] = True
            break
        body = data[i + 2 : i + length]
        i += length
        if kind == MSS and len(body) == 2:
            fields["mss"] = _U16.unpack(body)[0]
        elif kind == WSCALE and len(body) == 1:
            fields["wscale"] = body[0]
        elif kind == SACK_PERMITTED and not body:
            fields["sack_permitted"] = True
        elif kind == TIMESTAMPS and len(body) == 8:
            fields["timestamps"] = _U32X2.unpack(body)
        elif kind == SACK and body and len(body) % 8 == 0:
            fields["sack_blocks"] = tuple(
                _U32X2.unpack_from(body, off) for off in range(0, len(body), 8)
            )
        elif kind == TFO:
            fields["tfo_cookie"] = body
            fields["tfo_experimental"] = False
        elif kind == EXPERIMENTAL and body[:2] == TFO_MAGIC:
            fields["tfo_cookie"] = body[2:]
            fields["tfo_experimental"] = True
        else:
            unknown.append((kind, body))
    if unknown:
        fields["unknown"] = tuple(unknown)
    return Options(**fields) if fields else NO_OPTIONS  # type: ignore[arg-type]
