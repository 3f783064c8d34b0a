"""Receive-buffer auto-tuning (as Linux's dynamic right-sizing, tcp_rcv_space_adjust).

The window we offer is the buffer less what the application has not read. A
fixed buffer caps a transfer at buffer/RTT (256 KB over 50 ms: 5 MB/s), so once
per RTT we look at how much the application read: if that is more than half the
buffer, the sender was limited by our window, and the buffer grows to twice
what was read (Linux also doubles), up to `limit`.
"""

from __future__ import annotations


class RecvBuffer:
    __slots__ = ("copied", "limit", "size", "stamp")

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = max(limit, size)
        self.copied = 0  # bytes read since `stamp`
        self.stamp: float | None = None

    def on_read(self, nbytes: int, now: float, rtt: float | None) -> None:
        if self.limit <= self.size or rtt is None:
            return
        if self.stamp is None:
            self.stamp = now
        self.copied += nbytes
        if now - self.stamp < rtt:
            return
        if 2 * self.copied > self.size:
            self.size = min(max(self.size, 4 * self.copied), self.limit)
        self.copied, self.stamp = 0, now
