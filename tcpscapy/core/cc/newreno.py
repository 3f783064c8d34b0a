"""NewReno window rules (RFC 5681, RFC 6582): what the engine always did."""

from __future__ import annotations

from .base import AckSample, CongestionControl


class NewReno(CongestionControl):
    name = "newreno"
    __slots__ = ()

    def on_ack(self, ack: AckSample) -> None:
        if not ack.acked:
            return
        if self.cwnd < self.ssthresh:  # slow start, RFC 5681 (2), byte counting
            self.cwnd += min(ack.acked, self.mss)
        else:  # congestion avoidance, RFC 5681 (3)
            self.cwnd += max(self.mss * self.mss // self.cwnd, 1)

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        self.ssthresh = max(in_flight // 2, 2 * self.mss)

    def on_rto(self, now: float, in_flight: int) -> None:
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.mss
