"""The impairment model: what happens to each packet in one direction, decided from `now`,
its size and ECN bits, and seeded random streams. No I/O, no clock: the daemon feeds it.

A packet passes these stages in order (each off when its parameter is 0):

1. loss      random with probability `loss`; with `burst` > 1 a two-state Gilbert model
             (a "bad" state that loses every packet) with the same average loss and a mean
             burst of `burst` packets: P(bad→good) = 1/burst, P(good→bad) = loss/(burst(1-loss)).
2. rate      a serialiser at `rate` bit/s holding at most `queue` packets (more: tail drop).
             ECT packets that waited ≥ `ce_threshold` there get CE (a step marker, as DCTCP's
             switches do); `ce` marks that fraction of ECT packets at random besides.
3. delay     `delay` ± uniform `jitter`, first in first out: jitter alone never reorders.
4. reorder   with probability `reorder` a packet is held `reorder_gap` longer, outside the
             FIFO, so packets arriving within that gap overtake it.
5. duplicate with probability `duplicate` a copy leaves right after the packet.

Every stage draws from its own stream, seeded from (seed, direction, stage): the same packets
in the same order meet the same fate, and changing the delay leaves the loss pattern alone.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

DIRECTIONS = ("to-server", "to-client")
MAX_DELAY = 10.0  # seconds: a lab path, not a satellite to Mars
MAX_QUEUE = 100_000
MIN_RATE = 8_000.0  # bit/s: one 1500-byte packet takes 1.5 s


class PathError(ValueError):
    """A bad impairment parameter; the message is one line."""


def _check(name: str, value: Any, low: float, high: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not low <= value <= high:
        raise PathError(f"{name.replace('_', '-')} must be {low:g}..{high:g} {unit}, "
                        f"not {value!r}")


@dataclass(frozen=True)
class PathParams:
    """One direction's impairment. Times in seconds, probabilities 0..1, rate in bit/s."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    burst: float = 1.0  # mean length of a loss burst, in packets; 1 = independent losses
    reorder: float = 0.0
    reorder_gap: float = 0.002
    duplicate: float = 0.0
    rate: float = 0.0  # 0 = unlimited
    queue: int = 1000  # packets the rate limiter holds
    ce_threshold: float = 0.0  # 0 = off
    ce: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("delay", "jitter", "reorder_gap", "ce_threshold"):
            _check(name, getattr(self, name), 0.0, MAX_DELAY, "seconds")
        for name in ("loss", "reorder", "duplicate", "ce"):
            _check(name, getattr(self, name), 0.0, 1.0, "a fraction")
        _check("burst", self.burst, 1.0, 1e6, "packets")
        if self.rate != 0:
            _check("rate", self.rate, MIN_RATE, 1e12, "bit/s")
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) \
                or not 1 <= self.queue <= MAX_QUEUE:
            raise PathError(f"queue must be 1..{MAX_QUEUE} packets, not {self.queue!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PathError(f"seed must be an integer, not {self.seed!r}")
        if self.burst > 1 and self.loss > 0 and self._good_to_bad() > 1:
            raise PathError(f"loss {self.loss:.0%} with bursts of {self.burst:g} is impossible: "
                            "lower the loss or lengthen the bursts")

    def _good_to_bad(self) -> float:
        return 1.0 if self.loss >= 1 else self.loss / (self.burst * (1 - self.loss))

    @property
    def neutral(self) -> bool:
        """True if this direction changes nothing (the seed aside)."""
        return replace(self, seed=NEUTRAL.seed) == NEUTRAL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed(self, **changes: Any) -> PathParams:
        """A copy with `changes`; unknown names are a PathError, not a TypeError."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise PathError(f"unknown path parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def describe(self) -> str:
        """One line, tc-like: 'delay 25ms jitter 5ms loss 1% (bursts of 3) rate 10mbit'."""
        if self.neutral:
            return "no impairment"
        parts = []
        if self.delay or self.jitter:
            parts.append(f"delay {fmt_time(self.delay)}"
                         + (f" ±{fmt_time(self.jitter)}" if self.jitter else ""))
        if self.loss:
            parts.append(f"loss {fmt_fraction(self.loss)}"
                         + (f" (bursts of {self.burst:g})" if self.burst > 1 else ""))
        if self.reorder:
            parts.append(f"reorder {fmt_fraction(self.reorder)} by {fmt_time(self.reorder_gap)}")
        if self.duplicate:
            parts.append(f"duplicate {fmt_fraction(self.duplicate)}")
        if self.rate:
            parts.append(f"rate {fmt_rate(self.rate)} queue {self.queue}")
        if self.ce_threshold:
            parts.append(f"CE above {fmt_time(self.ce_threshold)} queueing")
        if self.ce:
            parts.append(f"CE {fmt_fraction(self.ce)}")
        return " ".join(parts) + f" seed {self.seed}"


NEUTRAL = PathParams()


class Fate(NamedTuple):
    """What to do with one packet: drop it (and why), or send it at `depart`."""

    drop: str | None  # "loss" or "queue"; None: send
    depart: float
    duplicate: bool = False
    mark_ce: bool = False


COUNTERS = ("packets", "sent", "lost", "queue_drops", "duplicated", "reordered", "ce_marked")


class Shaper:
    """One direction's pipeline (see the module docstring). Call `fate` once per packet."""

    def __init__(self, params: PathParams, direction: str) -> None:
        self.params = params
        streams = ("loss", "jitter", "reorder", "duplicate", "ce")
        self._rng = {s: random.Random(f"{params.seed}/{direction}/{s}") for s in streams}
        self._bad = False  # Gilbert state
        self._link_free = 0.0  # when the serialiser finishes what it holds
        self._in_queue: deque[float] = deque()  # serialisation end of each packet it holds
        self._fifo = 0.0  # departure of the last in-order packet
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.passes_all = params.neutral  # every packet leaves at once, untouched

    def fate(self, now: float, size: int, ect: bool = False) -> Fate:
        p, c = self.params, self.counters
        c["packets"] += 1
        if p.loss and self._lost():
            c["lost"] += 1
            return Fate("loss", now)
        depart, mark = now, False
        if p.rate:
            queue = self._in_queue
            while queue and queue[0] <= now:
                queue.popleft()
            if len(queue) >= p.queue:
                c["queue_drops"] += 1
                return Fate("queue", now)
            start = max(now, self._link_free)
            self._link_free = depart = start + size * 8 / p.rate
            queue.append(depart)
            mark = p.ce_threshold > 0 and start - now >= p.ce_threshold
        if p.ce and self._rng["ce"].random() < p.ce:
            mark = True
        mark = mark and ect
        delay = p.delay
        if p.jitter:
            delay = max(delay + self._rng["jitter"].uniform(-p.jitter, p.jitter), 0.0)
        depart += delay
        if p.reorder and self._rng["reorder"].random() < p.reorder:
            c["reordered"] += 1
            depart += p.reorder_gap
        else:
            depart = self._fifo = max(depart, self._fifo)
        duplicate = bool(p.duplicate) and self._rng["duplicate"].random() < p.duplicate
        c["sent"] += 1
        c["duplicated"] += duplicate
        c["ce_marked"] += mark
        return Fate(None, depart, duplicate, mark)

    def _lost(self) -> bool:
        p, draw = self.params, self._rng["loss"].random
        if p.burst <= 1:
            return draw() < p.loss
        if self._bad:
            self._bad = draw() >= 1 / p.burst
        else:
            self._bad = draw() < p._good_to_bad()
        return self._bad


# -- units ---------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIME_RE = re.compile(_NUMBER + r"\s*(us|µs|ms|s)?", re.IGNORECASE)
_RATE_RE = re.compile(_NUMBER + r"\s*(bit|kbit|mbit|gbit)?", re.IGNORECASE)
_FRACTION_RE = re.compile(_NUMBER + r"\s*(%)?")
_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def parse_time(text: str) -> float:
    """'25ms', '1.5s', '500us' -> seconds; a bare number is milliseconds (as ping says)."""
    m = _TIME_RE.fullmatch(text.strip())
    if not m:
        raise PathError(f"bad time {text!r}: use e.g. 25ms, 500us or 1s")
    return float(m.group(1)) * _TIME_UNITS[(m.group(2) or "ms").lower()]


def parse_fraction(text: str) -> float:
    """'1%' -> 0.01; '0.01' -> 0.01."""
    m = _FRACTION_RE.fullmatch(text.strip())
    if not m:
        raise PathError(f"bad fraction {text!r}: use e.g. 1% or 0.01")
    value = float(m.group(1)) / (100 if m.group(2) else 1)
    if value > 1:
        raise PathError(f"bad fraction {text!r}: at most 100%")
    return value


def parse_rate(text: str) -> float:
    """'10mbit' -> 1e7 bit/s (tc's words; a bare number is bit/s); '0' = unlimited."""
    m = _RATE_RE.fullmatch(text.strip())
    if not m:
        raise PathError(f"bad rate {text!r}: use e.g. 10mbit, 500kbit or 1gbit")
    return float(m.group(1)) * _RATE_UNITS[(m.group(2) or "bit").lower()]


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def fmt_fraction(value: float) -> str:
    return f"{value * 100:g}%"


def fmt_rate(bits: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bit"
