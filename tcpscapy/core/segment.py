"""The TCP segment as the engine sees it: a small frozen value."""

from __future__ import annotations

from typing import Any, NamedTuple

from .options import NO_OPTIONS, Options

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
# IP ECN codepoints (RFC 3168 §5): the low two bits of the TOS byte.
NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
_FLAG_LETTERS = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "A"), (URG, "U"),
                 (ECE, "E"), (CWR, "C"))


def flag_str(flags: int) -> str:
    """Scapy's notation: 'S', 'SA', 'FA', 'PA', 'R', '' for none."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)


def parse_flags(text: str) -> int:
    """Inverse of flag_str: 'SA' -> SYN|ACK."""
    bits = {letter: bit for bit, letter in _FLAG_LETTERS}
    try:
        return sum(bits[ch] for ch in set(text.upper()))
    except KeyError as exc:
        raise ValueError(f"unknown TCP flag {exc.args[0]!r} in {text!r}") from None


class Segment(NamedTuple):
    """One TCP segment with its addresses. A NamedTuple: immutable and cheap to build."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: Options = NO_OPTIONS
    payload: bytes = b""
    urgent: int = 0
    ecn: int = 0  # the IP header's ECN field: the engine sets ECT(0), the driver reports CE

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: data plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    def replace(self, **changes: Any) -> Segment:
        return self._replace(**changes)

    def __str__(self) -> str:
        text = (f"{self.src}:{self.sport} > {self.dst}:{self.dport} [{flag_str(self.flags)}] "
                f"seq={self.seq} ack={self.ack} win={self.window}")
        if self.payload:
            text += f" len={len(self.payload)}"
        return text
