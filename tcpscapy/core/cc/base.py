"""The interface every congestion controller offers the sender (aioquic-style).

Windows are in bytes. The sender tells the controller what each ACK delivered
(`AckSample`), when a congestion event starts and ends (loss or ECN-Echo), and
when the retransmission timer fires; it reads back `cwnd` and, for a pacing
controller, `pacing_rate`. Loss *detection* is not the controller's job
(recovery.py); during loss recovery the sender's window follows PRR (RFC 6937)
towards `ssthresh` for a controller with `uses_prr`.
"""

from __future__ import annotations

from dataclasses import dataclass

INFINITE_SSTHRESH = 1 << 30


@dataclass(slots=True)
class AckSample:
    """What one ACK told the sender."""

    now: float
    acked: int  # bytes newly covered by the cumulative ACK
    delivered: int  # acked plus bytes newly SACKed
    rtt: float | None  # this ACK's RTT sample, if it gave one
    min_rtt: float | None
    in_flight: int  # bytes in flight after the ACK
    snd_una: int
    snd_nxt: int
    delivery_rate: float | None = None  # bytes/s over the newest delivered segment's flight
    prior_delivered: int = 0  # total delivered when that segment was sent (BBR's rounds)
    total_delivered: int = 0
    app_limited: bool = False


class CongestionControl:
    """Base: slow start and the bookkeeping every controller shares."""

    name = "base"
    uses_prr = True  # the sender follows PRR in recovery; BBR keeps its own window

    __slots__ = ("_saved", "cwnd", "mss", "ssthresh")

    def __init__(self, mss: int, initial_window: int) -> None:
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = INFINITE_SSTHRESH
        self._saved: tuple[int, int] | None = None

    @property
    def phase(self) -> str:
        return "slow-start" if self.cwnd < self.ssthresh else "congestion-avoidance"

    def pacing_rate(self) -> float | None:
        """Bytes per second to pace at, or None: send as the window allows."""
        return None

    def set_mss(self, mss: int) -> None:
        """The MSS changed (path MTU): the window keeps its bytes (the path did not congest)."""
        if mss > 0:
            self.mss = mss

    def on_ack(self, ack: AckSample) -> None:
        raise NotImplementedError

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """Loss detected or ECN-Echo: set ssthresh (the window PRR steers to)."""
        raise NotImplementedError

    def on_recovery_end(self, now: float) -> None:
        """Recovery is over: continue from ssthresh (RFC 6937 end of recovery)."""
        self.cwnd = max(self.ssthresh, 2 * self.mss)

    def on_rto(self, now: float, in_flight: int) -> None:
        """RFC 5681 (4): one segment, ssthresh from the flight (first timeout only)."""
        self.cwnd = self.mss

    # Spurious-timeout undo (Eifel, RFC 4015): remember, then restore.
    def save(self) -> None:
        self._saved = (self.cwnd, self.ssthresh)

    def undo(self) -> None:
        if self._saved is not None:
            self.cwnd, self.ssthresh = max(self._saved[0], self.cwnd), self._saved[1]
            self._saved = None
