"""HyStart++ (RFC 9406): leave slow start on a rising RTT, before the losses do."""

from __future__ import annotations

from ..seq import seq_ge

MIN_RTT_THRESH, MAX_RTT_THRESH = 0.004, 0.016  # seconds
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5
INF = float("inf")


class HyStart:
    """Per-round RTT minima; says when to go Conservative Slow Start (CSS) and then CA."""

    __slots__ = ("css_baseline", "css_rounds", "current_min", "enabled", "in_css", "last_min",
                 "samples", "window_end")

    def __init__(self) -> None:
        self.enabled = True
        self.window_end: int | None = None  # the round ends when this is acknowledged
        self.last_min = self.current_min = INF
        self.samples = 0
        self.in_css = False
        self.css_baseline = INF
        self.css_rounds = 0

    def growth_divisor(self) -> int:
        return CSS_GROWTH_DIVISOR if self.in_css else 1

    def on_ack(self, snd_una: int, snd_nxt: int, rtt: float | None) -> bool:
        """Called in slow start; True when slow start should end (CSS rounds done)."""
        if not self.enabled:
            return False
        if self.window_end is None or seq_ge(snd_una, self.window_end):  # a new round
            self.window_end = snd_nxt
            self.last_min, self.current_min, self.samples = self.current_min, INF, 0
            if self.in_css:
                self.css_rounds += 1
                if self.css_rounds >= CSS_ROUNDS:
                    return True
        if rtt is not None:
            self.current_min = min(self.current_min, rtt)
            self.samples += 1
        if self.samples < N_RTT_SAMPLE or self.last_min == INF or self.current_min == INF:
            return False
        if not self.in_css:
            thresh = min(max(self.last_min / MIN_RTT_DIVISOR, MIN_RTT_THRESH), MAX_RTT_THRESH)
            if self.current_min >= self.last_min + thresh:
                self.in_css, self.css_baseline, self.css_rounds = True, self.current_min, 0
        elif self.current_min < self.css_baseline:  # the rise was a false alarm
            self.in_css, self.css_baseline = False, INF
        return False

    def reset(self) -> None:
        enabled = self.enabled
        self.__init__()  # type: ignore[misc]
        self.enabled = enabled
