"""Samples of a connection's sender state over time, for the plots.

A `MetricsRecorder` is set as a Trace's `sampler`: the trace calls it with `now`
after each segment or state change it records, and it reads the connection's
cwnd, ssthresh, bytes in flight, smoothed RTT, RTO and congestion-control phase.
It keeps at most `capacity` samples: when full, every other one is dropped and
the minimum spacing between samples doubles, so a long transfer costs a float
comparison per segment and a few hundred kilobytes in all.

The names are read with fallbacks, so this works with the engine's congestion
control objects (`cwnd`, `ssthresh`, `bytes_in_flight`, `srtt`, `rto`,
`cc_phase`) and with the older spellings (`pipe()`, `rtt.srtt`, `rtt.rto`,
`recovery`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["DEFAULT_CAPACITY", "MetricsRecorder", "Sample", "read_sample"]

DEFAULT_CAPACITY = 4096
_NO_SSTHRESH = 1 << 29  # an "infinite" initial ssthresh is not drawn


class Sample(NamedTuple):
    time: float
    cwnd: int | None  # bytes
    ssthresh: int | None  # bytes; None while still "infinite"
    bytes_in_flight: int | None
    srtt: float | None  # seconds
    rto: float | None  # seconds
    phase: str  # "slow-start", "congestion-avoidance", "recovery", "startup", … or ""


def _number(value: Any) -> Any:
    if callable(value):
        value = value()
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _phase(conn: Any, cwnd: int | None, ssthresh: int | None) -> str:
    phase = getattr(conn, "cc_phase", None)
    if isinstance(phase, str):
        return phase
    recovery = getattr(conn, "recovery", None)
    name = str(getattr(recovery, "value", recovery) or "none")
    if name not in ("none", "None"):
        return "recovery" if name == "fast" else "rto-recovery" if name == "timeout" else name
    if cwnd is None:
        return ""
    return "slow-start" if ssthresh is None or cwnd < ssthresh else "congestion-avoidance"


def read_sample(conn: Any, now: float) -> Sample:
    """The connection's sender state now (None for what it does not expose)."""
    rtt = getattr(conn, "rtt", None)
    cwnd = _number(getattr(conn, "cwnd", None))
    ssthresh = _number(getattr(conn, "ssthresh", None))
    if ssthresh is not None and ssthresh >= _NO_SSTHRESH:
        ssthresh = None
    flight = getattr(conn, "bytes_in_flight", None)
    if flight is None:
        flight = getattr(conn, "pipe", None)
    srtt = getattr(conn, "srtt", None)
    if srtt is None and rtt is not None:
        srtt = getattr(rtt, "srtt", None)
    rto = getattr(conn, "rto", None)
    if rto is None and rtt is not None:
        rto = getattr(rtt, "rto", None)
    return Sample(now, cwnd, ssthresh, _number(flight), _number(srtt), _number(rto),
                  _phase(conn, cwnd, ssthresh))


class MetricsRecorder:
    """Calls read_sample(conn, now) at most `capacity` times' worth, thinning as it goes."""

    __slots__ = ("_last", "_step", "capacity", "conn", "samples")

    def __init__(self, conn: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, not {capacity}")
        self.conn = conn
        self.capacity = capacity
        self.samples: list[Sample] = []
        self._last = float("-inf")
        self._step = 0.0  # minimum seconds between samples: 0 until the first thinning

    def __call__(self, now: float) -> None:
        if now - self._last < self._step:
            return
        try:
            sample = read_sample(self.conn, now)
        except Exception:  # a half-built connection must never stop the recording
            return
        self._last = now
        samples = self.samples
        samples.append(sample)
        if len(samples) >= self.capacity:
            kept = samples[::2]
            if kept[-1] is not sample:
                kept.append(sample)  # the newest stays
            self.samples = kept
            span = sample.time - kept[0].time
            self._step = max(2 * self._step, 2 * span / self.capacity)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"<MetricsRecorder {len(self.samples)} samples>"
