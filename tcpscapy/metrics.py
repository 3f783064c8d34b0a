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

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["DEFAULT_CAPACITY", "MetricsRecorder", "Sample", "read_sample", "reader"]

DEFAULT_CAPACITY = 1024  # the plots draw ~1000 pixel columns
_NO_SSTHRESH = 1 << 29  # an "infinite" initial ssthresh is not drawn


class Sample(NamedTuple):
    time: float
    cwnd: int | None  # bytes
    ssthresh: int | None  # bytes; None while still "infinite"
    bytes_in_flight: int | None
    srtt: float | None  # seconds
    rto: float | None  # seconds
    phase: str  # "slow-start", "congestion-avoidance", "recovery", "startup", … or ""


def _phase(conn: Any, cwnd: int | None, ssthresh: int | None) -> str:
    """The phase as the engine before congestion-control objects tells it."""
    recovery = getattr(conn, "recovery", None)
    name = str(getattr(recovery, "value", recovery) or "none")
    if name not in ("none", "None"):
        return "recovery" if name == "fast" else "rto-recovery" if name == "timeout" else name
    if cwnd is None:
        return ""
    return "slow-start" if ssthresh is None or cwnd < ssthresh else "congestion-avoidance"


def _getter(obj: Any, *paths: str) -> Callable[[], Any]:
    """A function reading the first of the attribute `paths` ("rtt.srtt") that `obj` has,
    calling it if it is a method; None when it has none. Found once, so sampling costs
    no failed lookups."""
    for path in paths:
        owner, names = obj, path.split(".")
        for name in names[:-1]:
            owner = getattr(owner, name, None)
        last = names[-1]
        if owner is None or not hasattr(owner, last):
            continue
        if callable(getattr(owner, last)):
            return getattr(owner, last)  # type: ignore[no-any-return]
        if len(names) == 1:
            return lambda: getattr(obj, last)
        first = names[0]
        return lambda: getattr(getattr(obj, first), last)
    return lambda: None


def reader(conn: Any) -> Callable[[float], Sample]:
    """A function giving the connection's sender state at `now` (None for what it does
    not expose), its attribute names looked up once."""
    cwnd = _getter(conn, "cwnd")
    ssthresh = _getter(conn, "ssthresh")
    flight = _getter(conn, "bytes_in_flight", "pipe")
    srtt = _getter(conn, "srtt", "rtt.srtt")
    rto = _getter(conn, "rto", "rtt.rto")
    has_phase = hasattr(conn, "cc_phase")

    def read(now: float) -> Sample:
        window, threshold = cwnd(), ssthresh()
        if threshold is not None and threshold >= _NO_SSTHRESH:
            threshold = None
        phase = conn.cc_phase if has_phase else None
        if not isinstance(phase, str):
            phase = _phase(conn, window, threshold)
        return Sample(now, window, threshold, flight(), srtt(), rto(), phase)
    return read


def read_sample(conn: Any, now: float) -> Sample:
    """The connection's sender state now (None for what it does not expose)."""
    return reader(conn)(now)


class MetricsRecorder:
    """Calls read_sample(conn, now) at most `capacity` times' worth, thinning as it goes."""

    __slots__ = ("_last", "_read", "_step", "capacity", "conn", "samples")

    def __init__(self, conn: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, not {capacity}")
        self.conn = conn
        self._read = reader(conn)
        self.capacity = capacity
        self.samples: list[Sample] = []
        self._last = float("-inf")
        self._step = 0.0  # minimum seconds between samples: 0 until the first thinning

    def __call__(self, now: float) -> None:
        if now - self._last < self._step:
            return
        try:
            sample = self._read(now)
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
