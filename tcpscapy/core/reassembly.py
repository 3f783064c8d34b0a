"""Out-of-order queue for received data (RFC 9293 §3.10.7.4, step 7)."""

from __future__ import annotations

from .seq import MASK, seq_diff


class Reassembly:
    """Segments that arrived ahead of RCV.NXT, merged into disjoint runs.

    Runs are [start seq, bytes] sorted by distance from RCV.NXT; there is one
    run per hole, so the list stays short and only neighbours are merged.
    """

    __slots__ = ("_recent", "_runs")

    def __init__(self) -> None:
        self._runs: list[tuple[int, bytes]] = []
        self._recent: list[int] = []  # run starts, most recently changed first (RFC 2018)

    def __bool__(self) -> bool:
        return bool(self._runs)

    @property
    def buffered(self) -> int:
        return sum(len(data) for _, data in self._runs)

    def add(self, rcv_nxt: int, seq: int, data: bytes) -> None:
        """Store `data` at `seq` (ahead of rcv_nxt); bytes already held are kept."""
        start = seq_diff(seq, rcv_nxt)
        end = start + len(data)
        runs = self._runs
        i = 0
        while i < len(runs) and seq_diff(runs[i][0], rcv_nxt) + len(runs[i][1]) < start:
            i += 1
        # runs[i:j] touch or overlap [start, end): fold them into one run.
        j = i
        new_start, pieces = start, [data]
        while j < len(runs) and seq_diff(runs[j][0], rcv_nxt) <= end:
            r_start = seq_diff(runs[j][0], rcv_nxt)
            r_data = runs[j][1]
            if r_start < new_start:  # keep the older bytes before ours
                pieces.insert(0, r_data[: new_start - r_start])
                new_start = r_start
            r_end = r_start + len(r_data)
            if r_end > end:
                pieces.append(r_data[end - r_start :])
                end = r_end
            j += 1
        if j > i:  # bytes held already win inside the overlap
            merged = bytearray(b"".join(pieces))
            for r_seq, r_data in runs[i:j]:
                off = seq_diff(r_seq, rcv_nxt) - new_start
                merged[off : off + len(r_data)] = r_data
            run = ((rcv_nxt + new_start) & MASK, bytes(merged))
        else:
            run = (seq, bytes(data))
        dropped = {r[0] for r in runs[i:j]}
        runs[i:j] = [run]
        self._recent = [run[0]] + [s for s in self._recent if s not in dropped and s != run[0]]

    def pop_ready(self, rcv_nxt: int) -> bytes:
        """Remove and return the bytes that now continue from rcv_nxt."""
        out = []
        while self._runs:
            seq, data = self._runs[0]
            off = seq_diff(rcv_nxt, seq)  # how far rcv_nxt already is into this run
            if off < 0:
                break
            self._runs.pop(0)
            if seq in self._recent:
                self._recent.remove(seq)
            if off < len(data):
                out.append(data[off:])
                rcv_nxt = (rcv_nxt + len(data) - off) & MASK
        return b"".join(out)

    def sack_blocks(self, limit: int) -> tuple[tuple[int, int], ...]:
        """Up to `limit` (left, right) edges, the most recently changed run first."""
        ends = {s: (s + len(d)) & MASK for s, d in self._runs}
        order = self._recent + [s for s in ends if s not in self._recent]
        return tuple((s, ends[s]) for s in order[:limit])
