"""Stacks joined by an in-memory link on a fake clock: tests, demos, benchmarks.

Every segment a stack emits is logged and then delivered, dropped, duplicated
or delayed according to seeded impairments, so a run replays exactly. With
`mtu`, the link is a router whose next hop takes packets of at most that many
bytes: a bigger one is dropped ("too big") and, with `icmp`, answered with an
ICMP "fragmentation needed" from `router` (without: a PMTU black hole).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tcpscapy.core.connection import Connection
from tcpscapy.core.icmp import DEST_UNREACHABLE, FRAG_NEEDED, IcmpError
from tcpscapy.core.options import NO_OPTIONS, encode_options
from tcpscapy.core.segment import CE, Segment
from tcpscapy.core.stack import Stack
from tcpscapy.core.state import State
from tcpscapy.trace import Trace

Filter = Callable[[Segment], bool]


@dataclass
class Impairment:
    loss: float = 0.0  # probability a segment is dropped
    duplicate: float = 0.0  # probability a segment arrives twice
    reorder: float = 0.0  # probability a segment is held back by up to `jitter`
    jitter: float = 0.02
    seed: int = 0


@dataclass
class Delivery:
    time: float
    segment: Segment
    fate: str  # "sent", "lost", "dropped" (by a test's filter), "duplicated", "too big"


def ip_size(seg: Segment) -> int:
    """The IPv4 packet's length for `seg` (20 + 20 + options + payload)."""
    opts = 0 if seg.options is NO_OPTIONS else len(encode_options(seg.options))
    return 40 + opts + len(seg.payload)


@dataclass
class _Follow:
    conn: Connection
    trace: Trace
    local_state: State = State.CLOSED
    peer_state: State = State.CLOSED

    def owns(self, seg: Segment) -> bool:
        return (seg.src, seg.sport, seg.dst, seg.dport) == (*self.conn.local, *self.conn.remote)

    def receives(self, seg: Segment) -> bool:
        return (seg.dst, seg.dport, seg.src, seg.sport) == (*self.conn.local, *self.conn.remote)


@dataclass
class Network:
    """Hosts by IP address, one link between all of them with `delay` seconds one way."""

    hosts: dict[str, Stack]
    delay: float = 0.01
    impairment: Impairment = field(default_factory=Impairment)
    now: float = 0.0
    log: list[Delivery] = field(default_factory=list)
    drop: Filter | None = None  # a test's own say over single segments
    ce_mark: Filter | None = None  # segments a congested router marks CE (RFC 3168)
    on_step: Callable[[Network], None] | None = None  # e.g. an invariant check
    mtu: int | None = None  # packets bigger than this do not pass (see the docstring)
    icmp: bool = True  # answer them with "fragmentation needed"
    router: str = "10.0.0.254"

    def __post_init__(self) -> None:
        self._rng = random.Random(self.impairment.seed)
        self._queue: list[tuple[float, int, Segment | IcmpError]] = []
        self._counter = 0
        self._follows: list[_Follow] = []

    def follow(self, conn: Connection) -> Trace:
        """Record `conn`'s segments and both sides' state changes, as the driver would."""
        follow = _Follow(conn, Trace(), conn.state)
        self._follows.append(follow)
        return follow.trace

    def _record_states(self) -> None:
        for f in self._follows:
            if f.conn.state is not f.local_state:
                f.trace.record_state(self.now, f.local_state, f.conn.state, "local")
                f.local_state = f.conn.state
            host = self.hosts.get(f.conn.remote[0])
            peer = host.connection(f.conn.remote, f.conn.local) if host else None
            if peer is not None and peer.state is not f.peer_state:
                f.trace.record_state(self.now, f.peer_state, peer.state, "peer")
                f.peer_state = peer.state

    def _fate(self, seg: Segment) -> str:
        imp = self.impairment
        if self.drop is not None and self.drop(seg):
            return "dropped"
        if self.mtu is not None and ip_size(seg) > self.mtu:
            if self.icmp:
                self._counter += 1
                err = IcmpError(DEST_UNREACHABLE, FRAG_NEEDED, self.router, seg.src, seg.dst,
                                seg.sport, seg.dport, seg.seq, self.mtu, ip_size(seg))
                heapq.heappush(self._queue, (self.now + self.delay / 2, self._counter, err))
            return "too big"
        if imp.loss and self._rng.random() < imp.loss:
            return "lost"
        if imp.duplicate and self._rng.random() < imp.duplicate:
            return "duplicated"
        return "sent"

    def _emit(self) -> None:
        imp = self.impairment
        for stack in self.hosts.values():
            for seg in stack.segments_to_send(self.now):
                fate = self._fate(seg)
                self.log.append(Delivery(self.now, seg, fate))
                for f in self._follows:
                    if f.owns(seg):
                        note = fate if fate in ("lost", "dropped", "too big") else ""
                        f.trace.record_segment(self.now, "out", seg, note)
                if fate in ("lost", "dropped", "too big"):
                    continue
                if self.ce_mark is not None and seg.ecn and self.ce_mark(seg):
                    seg = seg._replace(ecn=CE)  # only ECN-capable packets are marked
                for _ in range(2 if fate == "duplicated" else 1):
                    at = self.now + self.delay
                    if imp.reorder and self._rng.random() < imp.reorder:
                        at += self._rng.random() * imp.jitter
                    self._counter += 1
                    heapq.heappush(self._queue, (at, self._counter, seg))
        self._record_states()

    def _next_time(self) -> float | None:
        times = [t for s in self.hosts.values() if (t := s.get_timer()) is not None]
        if self._queue:
            times.append(self._queue[0][0])
        return min(times) if times else None

    def run(self, until: Callable[[], bool] | None = None, *, timeout: float = 600.0,
            max_steps: int = 10_000_000) -> bool:
        """Advance time until `until()` holds (True), nothing is left to do, or timeout."""
        deadline = self.now + timeout
        for _ in range(max_steps):
            self._emit()
            if self.on_step is not None:
                self.on_step(self)
            if until is not None and until():
                return True
            nxt = self._next_time()
            if nxt is None or nxt > deadline:
                self.now = max(self.now, min(nxt or deadline, deadline))
                return until() if until is not None else nxt is None
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, seg = heapq.heappop(self._queue)
                if isinstance(seg, IcmpError):
                    if (icmp_to := self.hosts.get(seg.src)) is not None:
                        icmp_to.receive_icmp(seg, self.now)
                    continue
                for f in self._follows:
                    if f.receives(seg):
                        f.trace.record_segment(self.now, "in", seg)
                stack = self.hosts.get(seg.dst)
                if stack is not None:
                    stack.receive(seg, self.now)
            for stack in self.hosts.values():
                due = stack.get_timer()
                if due is not None and due <= self.now:
                    stack.handle_timer(self.now)
            self._record_states()
        raise RuntimeError(f"simulation did not settle in {max_steps} steps")

    def sent(self, fate: str | None = None) -> list[Segment]:
        return [d.segment for d in self.log if fate is None or d.fate == fate]
