"""Urgent data (RFC 9293 §3.8.5; MUST-30, 31, 32): the urgent pointer, both ways.

The pointer marks where urgent data *ends*: SEG.UP is the offset from SEG.SEQ of the
octet following it (RFC 9293 settles the old ambiguity this way, as Linux does).
Urgent bytes stay in the stream -- we deliver everything in order, as a BSD socket
with SO_OOBINLINE does -- and the application is told where the urgent data ends;
a BSD/Linux peer's `recv(MSG_OOB)` takes the last urgent byte out of its stream.
"""

from __future__ import annotations

from .seq import MASK, seq_diff, seq_ge, seq_gt

MAX_POINTER = 0xFFFF  # the field's limit: farther urgent data is announced as "beyond"


class UrgentPointer:
    """SND.UP and RCV.UP of one connection (None: not in urgent mode)."""

    __slots__ = ("rcv_up", "snd_up")

    def __init__(self) -> None:
        self.snd_up: int | None = None
        self.rcv_up: int | None = None

    # -- sending (MUST-30) --------------------------------------------------------------

    def mark(self, end: int) -> None:
        """Urgent data was queued up to sequence number `end` (exclusive)."""
        self.snd_up = end & MASK

    def pointer_for(self, seq: int, snd_una: int) -> int | None:
        """The urgent pointer of a segment starting at `seq`, or None (no URG).

        Every segment sent before SND.UP carries it, so a lost segment does not
        lose the signal; urgent mode ends once the peer has acknowledged SND.UP.
        """
        up = self.snd_up
        if up is None:
            return None
        if seq_ge(snd_una, up):
            self.snd_up = None
            return None
        if not seq_gt(up, seq):
            return None
        return min(seq_diff(up, seq), MAX_POINTER)

    # -- receiving (MUST-31, MUST-32) ---------------------------------------------------

    def received(self, seg_seq: int, pointer: int) -> int | None:
        """Take SEG.UP of an acceptable URG segment (RCV.UP = max(RCV.UP, SEG.SEQ +
        SEG.UP)); the new RCV.UP if it moved, for the application to be told, else None."""
        up = (seg_seq + pointer) & MASK
        if self.rcv_up is not None and not seq_gt(up, self.rcv_up):
            return None
        self.rcv_up = up
        return up
