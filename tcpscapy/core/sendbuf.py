"""The send buffer: bytes from SND.UNA's data onwards, acked bytes dropped."""

from __future__ import annotations

from .seq import MASK, seq_diff


class SendBuffer:
    __slots__ = ("_data", "capacity", "start")

    def __init__(self, start: int, capacity: int) -> None:
        self._data = bytearray()
        self.start = start  # sequence number of the first byte held
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._data)

    @property
    def end(self) -> int:
        """Sequence number just after the last byte queued."""
        return (self.start + len(self._data)) & MASK

    @property
    def space(self) -> int:
        return max(self.capacity - len(self._data), 0)

    def append(self, data: bytes) -> int:
        """Queue as much of `data` as fits; return how many bytes were taken."""
        taken = min(len(data), self.space)
        self._data += data[:taken]
        return taken

    def get(self, seq: int, size: int) -> bytes:
        off = seq_diff(seq, self.start)
        return bytes(self._data[off : off + size])

    def ack_to(self, seq: int) -> int:
        """Drop bytes before `seq`; return how many were dropped."""
        n = min(max(seq_diff(seq, self.start), 0), len(self._data))
        if n:
            del self._data[:n]  # CPython trims a bytearray's head in O(1)
            self.start = (self.start + n) & MASK
        return n
