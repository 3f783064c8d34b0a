"""Retransmission timeout from RTT samples, RFC 6298."""

from __future__ import annotations

ALPHA, BETA, K = 1 / 8, 1 / 4, 4
CLOCK_GRANULARITY = 0.001  # G: our clock ticks in milliseconds (timestamps)


class RttEstimator:
    __slots__ = ("backoff", "base_rto", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(self, initial: float, rto_min: float, rto_max: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.base_rto = initial  # (2.1) before any sample
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.backoff = 0  # doublings since the last fresh sample (5.5)

    @property
    def rto(self) -> float:
        return min(self.base_rto * (1 << self.backoff), self.rto_max)

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None:  # (2.2)
            self.srtt, self.rttvar = rtt, rtt / 2
        else:  # (2.3): RTTVAR first, with the old SRTT
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        rto = self.srtt + max(CLOCK_GRANULARITY, K * self.rttvar)
        self.base_rto = min(max(rto, self.rto_min), self.rto_max)  # (2.4), (2.5)
        self.backoff = 0

    def back_off(self) -> None:
        """(5.5): double the RTO after a timeout, up to rto_max."""
        if self.base_rto * (1 << self.backoff) < self.rto_max:
            self.backoff += 1
