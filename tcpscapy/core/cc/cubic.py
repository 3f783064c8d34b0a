"""CUBIC (RFC 9438) with HyStart++ (RFC 9406): Linux's default controller.

In congestion avoidance the window follows W_cubic(t) = C (t - K)^3 + W_max
(segments, t in seconds since the epoch began), but never falls below W_est,
the window Reno with CUBIC's beta would have (the Reno-friendly region, §4.3).
"""

from __future__ import annotations

from .base import AckSample, CongestionControl
from .hystart import HyStart

C = 0.4
BETA = 0.7
ALPHA_FRIENDLY = 3 * (1 - BETA) / (1 + BETA)  # §4.3


class Cubic(CongestionControl):
    name = "cubic"
    __slots__ = ("_acked_frac", "cwnd_epoch", "epoch", "hystart", "k", "w_est", "w_max")

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self.hystart = HyStart()
        self.epoch: float | None = None  # start of the current congestion-avoidance epoch
        self.w_max = 0.0  # segments
        self.k = 0.0
        self.cwnd_epoch = 0.0
        self.w_est = 0.0
        self._acked_frac = 0.0  # segment fractions acked within the epoch (W_est growth)

    def w_cubic(self, t: float) -> float:
        """RFC 9438 (1): the window in segments t seconds into the epoch."""
        return C * (t - self.k) ** 3 + self.w_max

    def on_ack(self, ack: AckSample) -> None:
        if not ack.acked:
            return
        mss = self.mss
        if self.cwnd < self.ssthresh:
            self.cwnd += min(ack.acked, mss) // self.hystart.growth_divisor()
            if self.hystart.on_ack(ack.snd_una, ack.snd_nxt, ack.rtt):
                self.ssthresh = self.cwnd  # HyStart++: CSS done, on to CA
            return
        now = ack.now
        segs = self.cwnd / mss
        if self.epoch is None:  # §4.2: the epoch starts with the first ACK in CA
            self.epoch = now
            if self.w_max < segs:  # no reduction before (e.g. CA from HyStart++)
                self.w_max, self.k = segs, 0.0
            else:
                self.k = ((self.w_max - segs) / C) ** (1 / 3)
            self.cwnd_epoch = self.w_est = segs
        t = now - self.epoch
        rtt = ack.min_rtt or 0.0
        # Reno-friendly estimate (§4.3): alpha per window's worth of ACKed segments.
        alpha = 1.0 if self.w_est >= self.w_max else ALPHA_FRIENDLY
        self.w_est += alpha * (ack.acked / mss) / segs
        target = min(max(self.w_cubic(t + rtt), segs), 1.5 * segs)  # §4.2
        if self.w_cubic(t) < self.w_est:  # the Reno-friendly region
            new = self.w_est
        else:  # concave / convex: close (target - cwnd) over one window
            new = segs + (target - segs) * (ack.acked / mss) / segs
        if new > segs:
            self.cwnd = int(new * mss)

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        segs = self.cwnd / self.mss
        # Fast convergence (§4.7): yield to newer flows when the window keeps shrinking.
        self.w_max = segs * (1 + BETA) / 2 if segs < self.w_max else segs
        self.ssthresh = max(int(self.cwnd * BETA), 2 * self.mss)
        self.k = ((self.w_max - self.ssthresh / self.mss) / C) ** (1 / 3)
        self.epoch = None
        self.hystart.in_css = False

    def on_recovery_end(self, now: float) -> None:
        super().on_recovery_end(now)
        self.epoch = None  # the epoch restarts with the next ACK (W_max, K kept)

    def on_rto(self, now: float, in_flight: int) -> None:
        # §4.8: as a congestion event, then one segment.
        self.on_congestion_event(now, in_flight)
        self.cwnd = self.mss
        self.hystart.reset()
