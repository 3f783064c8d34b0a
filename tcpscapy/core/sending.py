"""The sending half of a connection: segmentization, loss recovery and its timers.

A mixin of Connection, kept apart so that the state machine reads on its own.
What is sent is bounded by the peer's window and by the congestion window
against `pipe`, RFC 6675's estimate of the bytes still in the network:

- new data in MSS-sized segments, with Nagle (MUST-17) and sender-side silly
  window avoidance (MUST-38);
- retransmissions of sequence space marked lost: after three duplicate ACKs
  (fast retransmit, NewReno partial ACKs per RFC 6582), from the SACK scoreboard
  (RFC 6675), or all of it after a retransmission timeout (RFC 6298, RFC 5681);
- zero-window probes from the persist timer, keepalive probes, and the user
  timeout that gives up on a peer that has vanished.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from . import events as ev
from .scoreboard import DUP_THRESH, Scoreboard
from .segment import ACK, FIN, PSH, SYN, Segment
from .seq import MASK, seq_add, seq_diff, seq_ge, seq_gt, seq_le, seq_lt, seq_max, seq_min
from .state import State

if TYPE_CHECKING:
    from .connection import Connection

PERSIST_MAX = 60.0


class Recovery(Enum):
    NONE = "none"
    FAST = "fast"  # fast retransmit / fast recovery
    TIMEOUT = "timeout"  # resending everything outstanding after an RTO


class SenderMixin:
    """Sending state and logic; `self` is always a Connection."""

    __slots__ = ("_dupacks", "_force_retransmit", "_keepalive_due", "_keepalive_probes",
                 "_lost_upto", "_persist_backoff", "_persist_due", "_recover", "_rtx_nxt",
                 "_scoreboard", "_stalled_since", "cwnd", "recovery", "retransmissions",
                 "ssthresh")

    def _init_sender(self: Connection) -> None:
        self.cwnd = 0
        self.ssthresh = 1 << 30
        self.recovery = Recovery.NONE
        self._recover = 0  # RFC 6582 "recover": SND.NXT when recovery began
        self._dupacks = 0
        self._scoreboard = Scoreboard()
        self._lost_upto: int | None = None  # un-SACKed space below this is presumed lost
        self._rtx_nxt = 0  # next lost byte to retransmit
        self._force_retransmit = False  # the fast retransmit goes out whatever pipe says
        self._persist_due: float | None = None
        self._persist_backoff = 0
        self._keepalive_due: float | None = None
        self._keepalive_probes = 0
        self._stalled_since: float | None = None  # data waiting for the peer since
        self.retransmissions = 0  # segments sent again, for traces and tests

    # ----------------------------------------------------------- accounting

    def pipe(self: Connection) -> int:
        """RFC 6675 pipe: bytes sent, not acknowledged, and not presumed gone."""
        outstanding = seq_diff(self.snd_nxt, self.snd_una)
        if self.sack_ok:
            outstanding -= self._scoreboard.sacked
        elif self.recovery is Recovery.FAST:
            outstanding -= self._dupacks * self.snd_mss  # each dup ACK: a segment has left
        if self._lost_upto is not None and seq_lt(self._rtx_nxt, self._lost_upto):
            outstanding -= self._scoreboard.unsacked_between(
                seq_max(self._rtx_nxt, self.snd_una), self._lost_upto, self.snd_una)
        return max(outstanding, 0)

    # --------------------------------------------------------- ACK handling

    def _on_ack(self: Connection, seg: Segment, now: float) -> None:
        """Fifth step for SND.UNA, SACK and duplicate ACKs; before the window update."""
        ack = seg.ack
        if self.sack_ok and seg.options.sack_blocks:
            self._scoreboard.update(self.snd_una, self.snd_nxt, seg.options.sack_blocks)
        if seq_gt(ack, self.snd_una):
            self._ack_advance(seg, now)
        elif (ack == self.snd_una and not seg.payload and not seg.flags & (SYN | FIN)
              and seg.window << self.snd_wscale == self.snd_wnd and self.snd_nxt != self.snd_una):
            self._dupacks += 1
            if self.recovery is Recovery.NONE and (
                    self._dupacks >= DUP_THRESH
                    or (self.sack_ok and self._scoreboard.lost_point(self.snd_una, self.snd_mss)
                        != self.snd_una)):
                self._enter_fast_recovery()
        if self.recovery is Recovery.FAST and self.sack_ok:
            lost = self._scoreboard.lost_point(self.snd_una, self.snd_mss)
            if self._lost_upto is None or seq_gt(lost, self._lost_upto):
                self._lost_upto = lost

    def _ack_advance(self: Connection, seg: Segment, now: float) -> None:
        """SND.UNA moves forward: free buffer, sample the RTT, adjust cwnd and recovery."""
        ack = seg.ack
        acked = seq_diff(ack, self.snd_una)
        ts = seg.options.timestamps
        if self.ts_ok and ts is not None and ts[1]:
            self.rtt.sample(((self._ts_clock(now) - ts[1]) & MASK) / 1000)
        elif self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
            self.rtt.sample(now - self._rtt_sent_at)
        if self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
            self._rtt_seq = None
        self.snd_una = ack
        self._sendbuf.ack_to(ack)
        self._scoreboard.ack_to(ack)
        self._retries = 0
        self._dupacks = 0
        self._stalled_since = now if self.snd_una != self.snd_nxt else None
        if self.recovery is not Recovery.NONE:
            if seq_ge(ack, self._recover):
                self._exit_recovery()
            elif self.recovery is Recovery.FAST and not self.sack_ok:
                # NewReno partial ACK (RFC 6582): the next segment is lost as well.
                self._lost_upto = seq_min(seq_add(ack, self.snd_mss), self.snd_nxt)
                self._rtx_nxt = ack
                self._force_retransmit = True
        if self._lost_upto is not None and seq_lt(self._rtx_nxt, ack):
            self._rtx_nxt = ack
        if self._state.synchronized and self.recovery is not Recovery.FAST:
            if self.cwnd < self.ssthresh:  # slow start, RFC 5681 (2), byte counting
                self.cwnd += min(acked, self.snd_mss)
            else:  # congestion avoidance, RFC 5681 (3)
                self.cwnd += max(self.snd_mss * self.snd_mss // self.cwnd, 1)
        self._rto_due = None if self.snd_una == self.snd_nxt else now + self.rtt.rto
        if self._send_blocked and self._sendbuf.space:
            self._send_blocked = False
            self._events.append(ev.SendSpace())

    def _enter_fast_recovery(self: Connection) -> None:
        mss = self.snd_mss
        self.recovery = Recovery.FAST
        self._recover = self.snd_nxt
        self.ssthresh = max(seq_diff(self.snd_nxt, self.snd_una) // 2, 2 * mss)
        self.cwnd = self.ssthresh
        lost = self._scoreboard.lost_point(self.snd_una, mss) if self.sack_ok else self.snd_una
        self._lost_upto = seq_min(seq_max(lost, seq_add(self.snd_una, mss)), self.snd_nxt)
        self._rtx_nxt = self.snd_una
        self._force_retransmit = True

    def _exit_recovery(self: Connection) -> None:
        if self.recovery is Recovery.FAST:  # RFC 6582 (3.2, step 3, option 1)
            self.cwnd = min(self.ssthresh, max(self.pipe(), 0) + self.snd_mss)
        self.recovery = Recovery.NONE
        self._lost_upto = None
        self._dupacks = 0

    # ----------------------------------------------------------- timeouts

    def _on_retransmission_timeout(self: Connection, now: float) -> None:
        state = self._state
        cfg = self.config
        limit = {State.SYN_SENT: cfg.syn_retries,
                 State.SYN_RECEIVED: cfg.synack_retries}.get(state, cfg.retries)
        if self._retries >= limit:
            what = {State.SYN_SENT: "connection timed out: no answer to the SYN",
                    State.SYN_RECEIVED: "handshake timed out: no ACK for the SYN-ACK"}.get(
                state, "connection timed out: data not acknowledged")
            self._close(f"{what} after {self._retries} retransmissions", "timeout")
            return
        self._retries += 1
        self.rtt.back_off()
        self._rtt_seq = None  # Karn: no sample from a retransmitted segment
        if state in (State.SYN_SENT, State.SYN_RECEIVED):
            self._send_syn(now, retransmission=True)
            return
        # RFC 5681 (4) and RFC 6298 (5.4): one segment's window, resend from SND.UNA.
        if self._retries == 1:
            self.ssthresh = max(seq_diff(self.snd_nxt, self.snd_una) // 2, 2 * self.snd_mss)
        self.cwnd = self.snd_mss
        self.recovery = Recovery.TIMEOUT
        self._recover = self.snd_nxt
        self._lost_upto = self.snd_nxt
        self._rtx_nxt = self.snd_una
        self._dupacks = 0
        self._force_retransmit = True
        self._path_on_rto(now)  # a black hole eating full-size segments? (path.py)

    def _sender_deadline(self: Connection) -> float | None:
        """The soonest of the sender's timers (asked after every segment: no lists)."""
        soonest = self._rto_due
        for due in (self._persist_due, self._keepalive_due):
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        if self._stalled_since is not None and self.config.user_timeout is not None:
            due = self._stalled_since + self.config.user_timeout
            if soonest is None or due < soonest:
                soonest = due
        return soonest

    def _sender_timers(self: Connection, now: float) -> None:
        cfg = self.config
        if self._stalled_since is not None and cfg.user_timeout is not None \
                and now >= self._stalled_since + cfg.user_timeout:
            self._close(f"user timeout: the peer acknowledged nothing for {cfg.user_timeout:g} s",
                        "user-timeout")
            return
        if self._rto_due is not None and now >= self._rto_due:
            self._rto_due = None
            self._on_retransmission_timeout(now)
        if self._persist_due is not None and now >= self._persist_due:
            self._persist_due = None
            self._persist_backoff += 1
            self._window_probe(now)
        if self._keepalive_due is not None and now >= self._keepalive_due:
            self._keepalive_due = None
            if self._keepalive_probes >= cfg.keepalive_probes:
                self._close(f"keepalive: no answer to {self._keepalive_probes} probes", "keepalive")
                return
            self._keepalive_probes += 1
            # An already-acknowledged sequence number makes the peer answer with an ACK.
            self._out.append(self._make(ACK, seq_add(self.snd_una, -1)))
            self._keepalive_due = now + cfg.keepalive_interval

    def _heard_from_peer(self: Connection, now: float) -> None:
        self._keepalive_probes = 0
        if self.config.keepalive is not None and self._state is State.ESTABLISHED:
            self._keepalive_due = now + self.config.keepalive

    def _window_probe(self: Connection, now: float) -> None:
        """Persist timer fired: send what a small window allows, or probe a zero one."""
        usable = seq_diff(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt)
        unsent = seq_diff(self._sendbuf.end, self.snd_nxt)
        if usable > 0 and unsent > 0:  # SWS override (RFC 9293 §3.8.6.2.1 (d))
            self._transmit(self.snd_nxt, min(usable, unsent, self.max_payload()), False, now)
        else:  # an old sequence number: the peer answers with its current window
            self._out.append(self._make(ACK, seq_add(self.snd_una, -1)))
        self._persist_due = now + self._persist_interval()

    def _persist_interval(self: Connection) -> float:
        return min(self.rtt.rto * (1 << min(self._persist_backoff, 16)), PERSIST_MAX)

    # ----------------------------------------------------------- sending

    def max_payload(self: Connection) -> int:
        """Data bytes per segment: the MSS less the options each segment carries (RFC 6691).

        Timestamps take 12 bytes on every segment; SACK blocks, when we hold
        out-of-order data, take 4 + 8 per block.
        """
        overhead = 12 if self.ts_ok else 0
        if self.sack_ok and self._reassembly:
            blocks = len(self._reassembly.sack_blocks(3 if self.ts_ok else 4))
            overhead += 4 + 8 * blocks
        return max(self.snd_mss - overhead, 1)

    def _send_data(self: Connection, now: float) -> None:
        if not self._state.synchronized and not self.tfo_pending:
            return  # our SYN is not acknowledged yet (a Fast Open server may send before)
        buf = self._sendbuf
        if self._fin_queued and self._fin_seq is None and self._state.synchronized:
            self._fin_seq = buf.end  # (a Fast Open server's FIN waits for ESTABLISHED)
        if seq_le(buf.end, self.snd_nxt) and self._fin_seq != self.snd_nxt and (
                self._lost_upto is None or not seq_lt(self._rtx_nxt, self._lost_upto)):
            # Nothing new, no FIN due, nothing presumed lost: the common case on every ACK.
            self._arm_persist(now)
            return
        cfg, mss = self.config, self.max_payload()
        while True:
            pipe = self.pipe()
            rtx = self._next_retransmission()
            if rtx is not None:
                if pipe >= self.cwnd and not self._force_retransmit:
                    break
                self._force_retransmit = False
                seq, size, fin = rtx
                self._transmit(seq, size, fin, now)
                self._rtx_nxt = seq_add(seq, size + fin)
                continue
            unsent = seq_diff(buf.end, self.snd_nxt)
            fin_due = self._fin_seq is not None and self.snd_nxt == self._fin_seq
            room = min(self.cwnd - pipe,
                       seq_diff(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt))
            if unsent > 0:
                size = min(unsent, room, mss)
                if size <= 0:
                    break
                in_flight = seq_diff(self.snd_nxt, self.snd_una)
                if self._state is State.SYN_RECEIVED:
                    in_flight -= 1  # Nagle counts data: a Fast Open server's SYN-ACK is none
                if size < mss and size < self.max_snd_wnd // 2 and not (
                        size == unsent and (not cfg.nagle or in_flight == 0 or fin_due)):
                    break  # Nagle and sender SWS avoidance: wait for more data or ACKs
                self._transmit(self.snd_nxt, size, fin_due and size == unsent, now)
            elif fin_due:
                self._transmit(self.snd_nxt, 0, True, now)
            else:
                break
        self._arm_persist(now)

    def _next_retransmission(self: Connection) -> tuple[int, int, bool] | None:
        """(seq, data bytes, with FIN) of the next lost piece to resend, or None."""
        if self._lost_upto is None or not seq_lt(self._rtx_nxt, self._lost_upto):
            return None
        start = seq_max(self._rtx_nxt, self.snd_una)
        hole = self._scoreboard.next_hole(start, self._lost_upto, self.snd_una)
        if hole is None:
            self._rtx_nxt = self._lost_upto
            return None
        seq, end = hole
        data_end = self._sendbuf.end
        size = max(min(seq_diff(end, seq), self.max_payload(), seq_diff(data_end, seq)), 0)
        fin_seq = self._fin_seq
        fin = fin_seq is not None and seq_add(seq, size) == fin_seq and seq_gt(end, fin_seq)
        if size == 0 and not fin:
            self._rtx_nxt = self._lost_upto
            return None
        return seq, size, fin

    def _transmit(self: Connection, seq: int, size: int, fin: bool, now: float) -> None:
        """Send data [seq, seq+size) (and FIN): new if at SND.NXT, else a retransmission."""
        buf = self._sendbuf
        payload = buf.get(seq, size) if size else b""
        end = seq_add(seq, size)
        flags = (PSH if size and end == buf.end else 0) | (FIN if fin else 0)
        self._out.append(self._make(flags, seq, payload=payload))
        new_end = seq_add(end, 1 if fin else 0)
        if seq_gt(new_end, self.snd_nxt):
            if self._rtt_seq is None and seq == self.snd_nxt:
                self._rtt_seq, self._rtt_sent_at = seq, now  # time a fresh segment (Karn)
            if self.snd_nxt == self.snd_una:
                self._stalled_since = now
            self.snd_nxt = new_end
        else:
            self.retransmissions += 1
            if self._rtt_seq is not None and seq_ge(self._rtt_seq, seq) and \
                    seq_lt(self._rtt_seq, new_end):
                self._rtt_seq = None  # Karn: an ambiguous sample
        if self._rto_due is None:
            self._rto_due = now + self.rtt.rto

    def _arm_persist(self: Connection, now: float) -> None:
        """Data waits, nothing is in flight, and the window stops us: probe later."""
        waiting = seq_diff(self._sendbuf.end, self.snd_nxt) > 0
        if not waiting or self.snd_nxt != self.snd_una:
            self._persist_due = None
            self._persist_backoff = 0
            return
        if self._persist_due is None:
            self._persist_due = now + self._persist_interval()
        if self._stalled_since is None:
            self._stalled_since = now
