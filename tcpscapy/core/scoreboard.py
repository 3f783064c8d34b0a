"""The sender's record of what the peer SACKed (RFC 2018, RFC 6675).

Ranges are kept as disjoint, sorted [start, end) sequence numbers above
SND.UNA. All comparisons go through distances from SND.UNA, so wraparound
never matters.
"""

from __future__ import annotations

from .seq import seq_diff, seq_max

DUP_THRESH = 3  # RFC 6675 DupThresh


class Scoreboard:
    __slots__ = ("_ranges", "sacked")

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self.sacked = 0  # bytes covered by _ranges

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def clear(self) -> None:
        self._ranges.clear()
        self.sacked = 0

    def update(self, snd_una: int, snd_nxt: int, blocks: tuple[tuple[int, int], ...]) -> bool:
        """Merge SACK blocks that lie in (SND.UNA, SND.NXT]; True if anything new was learned."""
        before = self.sacked
        limit = seq_diff(snd_nxt, snd_una)
        for left, right in blocks:
            lo, hi = seq_diff(left, snd_una), seq_diff(right, snd_una)
            if not 0 < lo < hi <= limit:
                continue  # stale, inverted or beyond what we sent: ignore (never trust blindly)
            self._insert(snd_una, left, right)
        return self.sacked != before

    def _insert(self, base: int, left: int, right: int) -> None:
        merged: list[tuple[int, int]] = []
        placed = False
        for start, end in self._ranges:
            if seq_diff(end, base) < seq_diff(left, base):
                merged.append((start, end))
            elif seq_diff(right, base) < seq_diff(start, base):
                if not placed:
                    merged.append((left, right))
                    placed = True
                merged.append((start, end))
            else:  # overlapping or touching: absorb
                left = left if seq_diff(left, base) <= seq_diff(start, base) else start
                right = right if seq_diff(right, base) >= seq_diff(end, base) else end
        if not placed:
            merged.append((left, right))
        merged.sort(key=lambda r: seq_diff(r[0], base))
        self._ranges = merged
        self.sacked = sum(seq_diff(e, s) for s, e in merged)

    def ack_to(self, snd_una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        kept = []
        for start, end in self._ranges:
            if seq_diff(end, snd_una) > 0:
                kept.append((seq_max(start, snd_una), end))
        self._ranges = kept
        self.sacked = sum(seq_diff(e, s) for s, e in kept)

    def is_sacked(self, seq: int, base: int) -> bool:
        off = seq_diff(seq, base)
        return any(seq_diff(s, base) <= off < seq_diff(e, base) for s, e in self._ranges)

    def next_hole(self, seq: int, limit: int, base: int) -> tuple[int, int] | None:
        """The first run of un-SACKed sequence space in [seq, limit), or None."""
        off, lim = seq_diff(seq, base), seq_diff(limit, base)
        for start, end in self._ranges:
            s, e = seq_diff(start, base), seq_diff(end, base)
            if off < s:
                break
            if off < e:
                off = e  # inside a SACKed range: skip past it
        if off >= lim:
            return None
        hole_end = lim
        for start, _ in self._ranges:
            s = seq_diff(start, base)
            if s > off:
                hole_end = min(hole_end, s)
                break
        return ((base + off) & 0xFFFFFFFF, (base + hole_end) & 0xFFFFFFFF)

    def unsacked_between(self, lo: int, hi: int, base: int) -> int:
        """Bytes in [lo, hi) not covered by a SACK block."""
        a, b = seq_diff(lo, base), seq_diff(hi, base)
        if b <= a:
            return 0
        covered = 0
        for start, end in self._ranges:
            s, e = max(seq_diff(start, base), a), min(seq_diff(end, base), b)
            if e > s:
                covered += e - s
        return b - a - covered

    def lost_point(self, snd_una: int, mss: int) -> int:
        """Sequence number below which every hole counts as lost (RFC 6675 IsLost).

        A hole is lost once DupThresh SACKed ranges, or more than (DupThresh-1)
        segments' worth of SACKed bytes, lie above it. Returns snd_una if none is.
        """
        above_bytes = 0
        for count, (start, end) in enumerate(reversed(self._ranges), 1):
            above_bytes += seq_diff(end, start)
            if count >= DUP_THRESH or above_bytes > (DUP_THRESH - 1) * mss:
                return start if seq_diff(start, snd_una) > 0 else snd_una
        return snd_una
