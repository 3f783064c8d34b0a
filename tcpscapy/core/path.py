"""What a connection learns about its path: ICMP errors, path MTU, black holes.

A mixin of Connection (its one slot, `path`, stays None until something
happens, so an idle connection costs nothing more).

- `receive_icmp`: an ICMP error quoting one of our segments (see icmp.py for
  the rules). "Fragmentation needed" lowers the send MSS (RFC 1191, pmtu.py)
  and resends what is outstanding at the new size at once, without waiting
  for an RTO and without touching cwnd or ssthresh: the path did not congest,
  it only refused the size (Linux's tcp_simple_retransmit does the same).
- Black holes (RFC 4821 / RFC 8899 ideas, like Linux's tcp_mtu_probing): when
  ICMP is filtered, a full-size segment is lost silently every time.
  BLACKHOLE_RTOS consecutive timeouts with a full segment outstanding step the
  MSS down (to RFC 8899's BASE_PLPMTU of 1200 bytes, then halving, never below
  pmtu.MIN_MSS), so the transfer continues. If more than a segment has been
  acknowledged since the MSS was last set, the path has carried that size, and
  plain loss is the likelier cause: then it takes BLACKHOLE_RTOS_AFTER_PROGRESS
  timeouts in a row (a path that shrank mid-connection), so that a lossy path
  does not make us send small segments for nothing.
- Probing back up: RAISE_AFTER seconds after the last step down (RFC 8899's
  PMTU_RAISE_TIMER, Linux's tcp_probe_interval, both 10 minutes) the MSS goes
  back to what the peer allowed; if the path is still small, ICMP or the
  black-hole rule lowers it again. (A search with dedicated probe segments, as
  RFC 4821 does, would not cost those timeouts; this one keeps the sender simple.)

Everything is reported as events (IcmpReceived, PathMtuChanged) that the
driver writes into the trace, and counted in the stack's `icmp_counters`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import events as ev
from . import icmp, pmtu
from .sending import Recovery
from .seq import seq_add, seq_diff
from .state import State

if TYPE_CHECKING:
    from .connection import Connection

BLACKHOLE_RTOS = 2  # consecutive RTOs of a full segment before stepping down
BLACKHOLE_RTOS_AFTER_PROGRESS = 6  # the same once this size has carried data (~1 min)
BASE_MSS = 1200 - pmtu.HEADERS  # RFC 8899 §5.1.2 BASE_PLPMTU for IPv4
RAISE_AFTER = 600.0


class PathState:
    """Per-connection path facts; created on first use."""

    __slots__ = ("last_icmp", "lowered_at", "mss_cap", "mss_set_una", "peer_mss",
                 "raise_after")

    def __init__(self) -> None:
        self.last_icmp = ""  # the last soft error in words, for the time-out message
        self.mss_cap: int | None = None  # what the path allows, if smaller than the peer
        self.peer_mss: int | None = None  # the MSS negotiated before any cap
        self.lowered_at: float | None = None  # when the cap last came down
        self.mss_set_una: int | None = None  # SND.UNA when the MSS last changed
        self.raise_after = RAISE_AFTER


class PathMixin:
    """ICMP and path-MTU logic; `self` is always a Connection."""

    __slots__ = ()

    def _path(self: Connection) -> PathState:
        if self.path is None:
            self.path = PathState()
        return self.path

    # ------------------------------------------------------------ inputs

    def use_path_mtu(self: Connection, mtu: int | None) -> None:
        """Start from a path MTU the stack's cache knows for our peer (None: nothing)."""
        if mtu is not None:
            self._path().mss_cap = max(mtu - pmtu.HEADERS, pmtu.MIN_MSS)
            self._path_clamp()

    def receive_icmp(self: Connection, err: icmp.IcmpError, now: float,
                     cache: pmtu.PathMtuCache | None = None) -> str:
        """Act on an ICMP error quoting one of our segments. Returns "" if it counted,
        else why it was dropped (a counter's name)."""
        self._now = now
        state = self._state
        if state in (State.CLOSED, State.LISTEN, State.TIME_WAIT):
            return "icmp_no_connection"
        if not icmp.seq_acceptable(err.seq, self.snd_una, self.snd_nxt):
            return "icmp_out_of_window"  # RFC 5927 §4.1: blind or stale
        kind = icmp.classify(err)
        if kind == icmp.IGNORED:
            return "icmp_ignored"  # source quench (RFC 6633) and the like
        if kind == icmp.PMTU:
            return self._frag_needed(err, now, cache)
        path = self._path()
        path.last_icmp = f"{icmp.describe(err)} from {err.reporter}"
        self._events.append(ev.IcmpReceived(str(err), kind))
        if kind == icmp.HARD and state is State.SYN_SENT:
            self._close(f"connection failed: {path.last_icmp}", "unreachable")
        return ""

    def _frag_needed(self: Connection, err: icmp.IcmpError, now: float,
                     cache: pmtu.PathMtuCache | None) -> str:
        current = self.snd_mss + pmtu.HEADERS
        mtu, why = pmtu.next_mtu(err.mtu, err.quoted_len, current)
        if mtu is None:
            self._events.append(ev.IcmpReceived(f"{err}: ignored, {why}", icmp.PMTU))
            return "icmp_mtu_ignored"
        if cache is not None:
            cache.learn(self.remote[0], mtu, now)
        self._events.append(ev.IcmpReceived(str(err), icmp.PMTU))
        self._lower_mss(mtu - pmtu.HEADERS, now, f"path MTU {mtu} (ICMP)")
        self._resend_outstanding()
        return ""

    def _path_on_rto(self: Connection, now: float) -> None:
        """After an RTO in a synchronized state: is a black hole eating full segments?"""
        if self._retries < BLACKHOLE_RTOS or self.snd_mss <= pmtu.MIN_MSS:
            return
        since = self.path.mss_set_una if self.path is not None else None
        carried = seq_diff(self.snd_una, seq_add(self.iss, 1) if since is None else since)
        if carried > self.max_payload() and self._retries < BLACKHOLE_RTOS_AFTER_PROGRESS:
            return  # this size got through before: more likely plain loss
        if seq_diff(self.snd_nxt, self.snd_una) < self.max_payload():
            return  # nothing full-size is stuck: no MTU problem
        mss = BASE_MSS if self.snd_mss > BASE_MSS else max(self.snd_mss // 2, pmtu.MIN_MSS)
        self._lower_mss(mss, now, f"black hole? {self._retries} timeouts of full segments")

    def _path_tick(self: Connection, now: float) -> None:
        """RAISE_AFTER s after the last step down, try the full size again."""
        path = self.path
        if path is None or path.lowered_at is None or now < path.lowered_at + path.raise_after:
            return
        path.lowered_at = None
        path.mss_cap = None
        if path.peer_mss is not None and path.peer_mss > self.snd_mss:
            old, self.snd_mss = self.snd_mss, path.peer_mss
            path.mss_set_una = self.snd_una
            self._events.append(ev.PathMtuChanged(old, self.snd_mss, "probing the full size"))

    # ------------------------------------------------------------ helpers

    def _path_clamp(self: Connection) -> None:
        """Keep the negotiated MSS within what the path allows (after _negotiate)."""
        path = self.path
        if path is None:
            return
        if path.peer_mss is None or self.snd_mss > (path.mss_cap or 0):
            path.peer_mss = max(self.snd_mss, path.peer_mss or 0)
        if path.mss_cap is not None and self.snd_mss > path.mss_cap:
            self.snd_mss = path.mss_cap

    def _lower_mss(self: Connection, mss: int, now: float, why: str) -> None:
        path = self._path()
        if path.peer_mss is None:
            path.peer_mss = self.snd_mss
        path.mss_cap = mss
        path.lowered_at = now
        if mss < self.snd_mss:
            old, self.snd_mss = self.snd_mss, mss
            path.mss_set_una = self.snd_una
            self._events.append(ev.PathMtuChanged(old, mss, why))

    def _resend_outstanding(self: Connection) -> None:
        """Everything sent and unacknowledged was too big: resend it now, at the new size.

        Marked lost as after an RTO but with cwnd and ssthresh untouched; the
        "recovery" ends once the ACKs pass what was outstanding.
        """
        if self.snd_una == self.snd_nxt or not self._state.synchronized:
            return
        if self.recovery is Recovery.NONE:
            self.recovery = Recovery.TIMEOUT
            self._recover = self.snd_nxt
        self.loss.mark_lost()  # (resent in pieces of the new size: _next_retransmission)
        self._rtt_seq = None  # Karn: what follows is retransmitted
        self._force_retransmit = True
