"""The sending half of a connection: segmentization, loss recovery and its timers.

A mixin of Connection, kept apart so that the state machine reads on its own.
Two objects do the thinking, as in aioquic: `self.loss` (recovery.LossRecovery:
which segments are in flight, RACK-TLP loss detection, delivery rates) and
`self.cc` (cc.CongestionControl: NewReno, CUBIC or BBR). What is sent is
bounded by the peer's window and by the congestion window against `pipe`,
RFC 6675's estimate of the bytes still in the network:

- new data in MSS-sized segments, with Nagle (MUST-17) and sender-side silly
  window avoidance (MUST-38), paced when the controller asks (BBR);
- retransmissions of segments marked lost: by RACK (RFC 8985) with SACK, after
  three duplicate ACKs without it (NewReno partial ACKs per RFC 6582), or all
  of them after a retransmission timeout (RFC 6298, RFC 5681); during fast
  recovery the window follows PRR (RFC 6937);
- tail loss probes (RFC 8985 §7), zero-window probes from the persist timer,
  keepalive probes, and the user timeout that gives up on a vanished peer;
- ECN (RFC 3168): ECT(0) on new data, one reduction per window for ECN-Echo,
  CWR on the next new segment.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from . import cc as ccmod
from . import events as ev
from .recovery import LossRecovery, Prr
from .scoreboard import DUP_THRESH, Scoreboard
from .segment import ACK, CWR, ECE, ECT0, FIN, PSH, SYN, Segment
from .seq import MASK, seq_add, seq_diff, seq_ge, seq_gt, seq_lt
from .state import State

if TYPE_CHECKING:
    from .connection import Connection

PERSIST_MAX = 60.0
PACE_BURST = 0.001  # seconds of sending a paced flow may catch up in one burst


class Recovery(Enum):
    NONE = "none"
    FAST = "fast"  # fast retransmit / fast recovery (PRR)
    TIMEOUT = "timeout"  # resending everything outstanding after an RTO


class SenderMixin:
    """Sending state and logic; `self` is always a Connection."""

    __slots__ = ("_cwr_pending", "_dupacks", "_ecn_recover", "_force_retransmit",
                 "_keepalive_due", "_keepalive_probes", "_pace_due", "_pace_next",
                 "_persist_backoff", "_persist_due", "_prr", "_prr_cwnd", "_recover",
                 "_rto_tsval", "_scoreboard", "_stalled_since", "_tlp_due", "_tlp_end",
                 "_tlp_rtx", "cc", "loss", "recovery", "retransmissions", "tail_probes")

    def _init_sender(self: Connection) -> None:
        cfg = self.config
        self.cc = ccmod.make(cfg.cc, self.snd_mss, cfg.initial_window_segments * self.snd_mss,
                             hystart=cfg.hystart)
        self.loss = LossRecovery()
        self.recovery = Recovery.NONE
        self._recover = 0  # RFC 6582 "recover": SND.NXT when recovery began
        self._dupacks = 0
        self._scoreboard = Scoreboard()
        self._prr: Prr | None = None
        self._prr_cwnd = 0
        self._force_retransmit = False  # the fast retransmit goes out whatever pipe says
        self._tlp_due: float | None = None
        self._tlp_end: int | None = None  # SND.NXT when the outstanding probe went
        self._tlp_rtx = False
        self._rto_tsval: int | None = None  # Eifel: our TSval when the RTO fired
        self._pace_next = 0.0
        self._pace_due: float | None = None  # pacing holds data back until then
        self._ecn_recover: int | None = None  # no second ECN reduction before this is acked
        self._cwr_pending = False
        self._persist_due: float | None = None
        self._persist_backoff = 0
        self._keepalive_due: float | None = None
        self._keepalive_probes = 0
        self._stalled_since: float | None = None  # data waiting for the peer since
        self.retransmissions = 0  # segments sent again, for traces and tests
        self.tail_probes = 0

    def _start_cc(self: Connection) -> None:
        """A fresh controller once the MSS is known (establishment)."""
        cfg = self.config
        self.cc = ccmod.make(cfg.cc, self.snd_mss, cfg.initial_window_segments * self.snd_mss,
                             hystart=cfg.hystart)

    # ------------------------------------------------------- what plots read

    @property
    def cwnd(self: Connection) -> int:
        """The window the sender obeys now: PRR's during fast recovery, else the controller's."""
        if self.recovery is Recovery.FAST and self._prr is not None:
            return self._prr_cwnd
        return self.cc.cwnd

    @cwnd.setter
    def cwnd(self: Connection, value: int) -> None:
        self.cc.cwnd = value

    @property
    def ssthresh(self: Connection) -> int:
        return self.cc.ssthresh

    @property
    def bytes_in_flight(self: Connection) -> int:
        return self.pipe()

    @property
    def srtt(self: Connection) -> float | None:
        return self.rtt.srtt

    @property
    def rto(self: Connection) -> float:
        return self.rtt.rto

    @property
    def cc_phase(self: Connection) -> str:
        if self.recovery is not Recovery.NONE and self.cc.uses_prr:
            return "recovery"
        return self.cc.phase

    # ----------------------------------------------------------- accounting

    def pipe(self: Connection) -> int:
        """RFC 6675 pipe: bytes sent, not acknowledged, and not presumed gone."""
        outstanding = seq_diff(self.snd_nxt, self.snd_una)
        if self.sack_ok:
            outstanding -= self._scoreboard.sacked
        elif self.recovery is Recovery.FAST:
            outstanding -= self._dupacks * self.snd_mss  # each dup ACK: a segment has left
        outstanding -= self.loss.lost_pending
        return max(outstanding, 0)

    # --------------------------------------------------------- ACK handling

    def _on_ack(self: Connection, seg: Segment, now: float) -> None:
        """Fifth step for SND.UNA, SACK and duplicate ACKs; before the window update."""
        ack = seg.ack
        learned = False
        if self.sack_ok and seg.options.sack_blocks:
            learned = self._scoreboard.update(self.snd_una, self.snd_nxt, seg.options.sack_blocks)
        if seq_gt(ack, self.snd_una):
            self._ack_advance(seg, now)
            return
        if (ack == self.snd_una and not seg.payload and not seg.flags & (SYN | FIN)
                and seg.window << self.snd_wscale == self.snd_wnd and self.snd_nxt != self.snd_una):
            self._dupacks += 1
            learned = True
        if learned or seg.flags & ECE:
            self._after_ack(seg, now, 0)

    def _ack_advance(self: Connection, seg: Segment, now: float) -> None:
        """SND.UNA moves forward: free buffer, sample the RTT, then recovery and cwnd."""
        ack = seg.ack
        acked = seq_diff(ack, self.snd_una)
        ts = seg.options.timestamps
        sample: float | None = None
        if self.ts_ok and ts is not None and ts[1]:
            sample = ((self._ts_clock(now) - ts[1]) & MASK) / 1000
        elif self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
            sample = now - self._rtt_sent_at
        if sample is not None:
            self.rtt.sample(sample)
        if self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
            self._rtt_seq = None
        self.snd_una = ack
        self._sendbuf.ack_to(ack)
        self._scoreboard.ack_to(ack)
        self._retries = 0
        self._dupacks = 0
        self._stalled_since = now if self.snd_una != self.snd_nxt else None
        if self._rto_tsval is not None:  # the first ACK after a timeout
            if self.recovery is Recovery.TIMEOUT and ts is not None and ts[1] \
                    and seq_lt(ts[1], self._rto_tsval):
                self._spurious_timeout()  # Eifel (RFC 3522): it echoes the original
            self._rto_tsval = None
        if self.recovery is not Recovery.NONE and seq_ge(ack, self._recover):
            self._exit_recovery(now)
        elif self.recovery is Recovery.FAST and not self.sack_ok:
            # NewReno partial ACK (RFC 6582): the next segment is lost as well.
            self.loss.mark_lost(first_only=True)
            self._force_retransmit = True
        if self._tlp_end is not None and seq_ge(ack, self._tlp_end):
            if self._tlp_rtx and self.recovery is Recovery.NONE:
                # RFC 8985 §7.4: the probe repaired a loss; the window must still shrink.
                self.cc.on_congestion_event(now, seq_diff(self.snd_nxt, self.snd_una))
                if self.cc.uses_prr:
                    self.cc.cwnd = max(self.cc.ssthresh, 2 * self.snd_mss)
            self._tlp_end = None
        self._after_ack(seg, now, acked)
        self._rto_due = None if self.snd_una == self.snd_nxt else now + self.rtt.rto
        if self._send_blocked and self._sendbuf.space:
            self._send_blocked = False
            self._events.append(ev.SendSpace())

    def _after_ack(self: Connection, seg: Segment, now: float, acked: int) -> None:
        """Loss detection and the window, for any ACK that told us something."""
        loss = self.loss
        ranges = self._scoreboard._ranges if self.sack_ok else []
        delivered = loss.on_ack(self.snd_una, ranges, now)
        if self.sack_ok:
            newly = loss.detect_losses(now, self.recovery is not Recovery.NONE,
                                       self.rtt.srtt or 0.0)
        elif self.recovery is Recovery.NONE and self._dupacks >= DUP_THRESH:
            newly = loss.mark_lost(first_only=True)
        else:
            newly = 0
        if newly and self.recovery is Recovery.NONE and self._state.synchronized:
            self._enter_fast_recovery(now)
        if seg.flags & ECE and self.ecn_ok and not seg.flags & SYN:
            self._on_ecn_echo(now)
        if not self._state.synchronized:
            return
        cc = self.cc
        if self.recovery is Recovery.FAST and self._prr is not None:
            if not delivered and not self.sack_ok and self._dupacks:
                delivered = self.snd_mss  # without SACK a dup ACK stands for one segment
            self._prr_cwnd = self._prr.window(delivered, self.pipe(), self.snd_mss)
        elif acked or (delivered and not cc.uses_prr):
            rate, prior = loss.rate_sample()
            # The controllers get the send-time RTT (µs, not the timestamps' ms: a LAN's
            # RTT would read 0 or 1 ms, and BBR's BDP and HyStart++'s rounds need better).
            cc.on_ack(ccmod.AckSample(now, acked, delivered, loss.last_rtt, loss.min_rtt,
                                      self.pipe(), self.snd_una, self.snd_nxt, rate, prior,
                                      loss.delivered, self._app_limited()))
        if self.recovery is Recovery.NONE and self.snd_una != self.snd_nxt and self.sack_ok \
                and self._tlp_end is None:
            self._tlp_due = now + loss.pto(self.rtt.srtt, self.pipe(), self.snd_mss, self.rtt.rto)
        else:
            self._tlp_due = None

    def _app_limited(self: Connection) -> bool:
        return seq_diff(self._sendbuf.end, self.snd_nxt) <= 0

    def _enter_fast_recovery(self: Connection, now: float) -> None:
        self.recovery = Recovery.FAST
        self._recover = self.snd_nxt
        flight = seq_diff(self.snd_nxt, self.snd_una)
        self.cc.on_congestion_event(now, flight)
        self._prr = Prr(flight, self.cc.ssthresh) if self.cc.uses_prr else None
        self._prr_cwnd = self.cc.ssthresh
        self._ecn_recover = self.snd_nxt  # one reduction per window, loss or ECN
        self._force_retransmit = True
        self._tlp_due = None

    def _exit_recovery(self: Connection, now: float) -> None:
        if self.recovery is Recovery.FAST:
            self.cc.on_recovery_end(now)
        self.recovery = Recovery.NONE
        self._prr = None
        self._dupacks = 0

    def _spurious_timeout(self: Connection) -> None:
        """Eifel response (RFC 4015): the original arrived; restore the window."""
        self.cc.undo()
        self.loss.undo_lost()
        self.recovery = Recovery.NONE
        self.rtt.backoff = 0

    def _on_ecn_echo(self: Connection, now: float) -> None:
        """RFC 3168 §6.1.2: at most one reduction per window of data, then CWR."""
        if self._ecn_recover is not None and not seq_gt(self.snd_una, self._ecn_recover):
            return  # already reduced (and CWR sent) for this window
        self._ecn_recover = self.snd_nxt
        self._cwr_pending = True
        if self.recovery is Recovery.NONE and self.cc.uses_prr:
            self.cc.on_congestion_event(now, seq_diff(self.snd_nxt, self.snd_una))
            self.cc.cwnd = max(self.cc.ssthresh, 2 * self.snd_mss)
            self.cc.on_recovery_end(now)

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
        flight = seq_diff(self.snd_nxt, self.snd_una)
        if self._retries == 1:
            self.cc.save()  # for the Eifel undo if the timeout proves spurious
            self._rto_tsval = self._ts_clock(now) if self.ts_ok else None
            if self.recovery is Recovery.FAST and self.cc.uses_prr:
                self.cc.cwnd = self._prr_cwnd
            self.cc.on_rto(now, flight)
        else:
            self.cc.cwnd = self.snd_mss
        self.recovery = Recovery.TIMEOUT
        self._prr = None
        self._recover = self.snd_nxt
        self.loss.mark_lost()
        self._dupacks = 0
        self._force_retransmit = True
        self._tlp_due = self._tlp_end = None
        self._path_on_rto(now)  # a black hole eating full-size segments? (path.py)

    def _sender_deadline(self: Connection) -> float | None:
        """The soonest of the sender's timers (asked after every segment: no lists)."""
        soonest = self._rto_due
        for due in (self._persist_due, self._keepalive_due, self._tlp_due, self.loss.timer,
                    self._pace_due):
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
        if self._tlp_due is not None and now >= self._tlp_due:
            self._tlp_due = None  # (first: on a tie the probe goes, and re-arms the RTO)
            self._tail_loss_probe(now)
        if self._rto_due is not None and now >= self._rto_due:
            self._rto_due = None
            self._on_retransmission_timeout(now)
        if self.loss.timer is not None and now >= self.loss.timer and self.loss.detect_losses(
                now, self.recovery is not Recovery.NONE, self.rtt.srtt or 0.0) \
                and self.recovery is Recovery.NONE:  # RACK's reordering timer marked a loss
            self._enter_fast_recovery(now)
        if self._pace_due is not None and now >= self._pace_due:
            self._pace_due = None  # segments_to_send sends what pacing held back
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
        if not seq_gt(buf.end, self.snd_nxt) and self._fin_seq != self.snd_nxt \
                and not self.loss.lost_pending:
            # Nothing new, no FIN due, nothing presumed lost: the common case on every ACK.
            self._arm_persist(now)
            return
        if self.cc.mss != self.snd_mss:
            self.cc.set_mss(self.snd_mss)  # the path MTU changed
        cfg, mss = self.config, self.max_payload()
        rate = self.cc.pacing_rate()
        self._pace_due = None
        while True:
            if rate is not None and self._pace_next > now:
                self._pace_due = self._pace_next  # get_timer() carries it to the driver
                break
            pipe = self.pipe()
            rtx = self._next_retransmission()
            if rtx is not None:
                if pipe >= self.cwnd and not self._force_retransmit:
                    break
                self._force_retransmit = False
                seq, size, fin = rtx
                self._transmit(seq, size, fin, now)
                if rate is not None:
                    self._pace_next = max(self._pace_next, now - PACE_BURST) + size / rate
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
                if rate is not None:
                    self._pace_next = max(self._pace_next, now - PACE_BURST) + size / rate
            elif fin_due:
                self._transmit(self.snd_nxt, 0, True, now)
            else:
                break
        self._arm_persist(now)

    def _next_retransmission(self: Connection) -> tuple[int, int, bool] | None:
        """(seq, data bytes, with FIN) of the next segment marked lost, or None."""
        rec = self.loss.next_lost()
        if rec is None:
            return None
        seq, end = rec.seq, rec.end
        size = max(min(seq_diff(end, seq), seq_diff(self._sendbuf.end, seq)), 0)
        limit = self.max_payload()
        if size > limit:  # the MSS shrank since it was first sent: resend in pieces
            self.loss.split(rec, seq_add(seq, limit))
            size, end = limit, seq_add(seq, limit)
        fin_seq = self._fin_seq
        fin = fin_seq is not None and seq_add(seq, size) == fin_seq and seq_gt(end, fin_seq)
        return seq, size, fin

    def _tail_loss_probe(self: Connection, now: float) -> None:
        """RFC 8985 §7.3: new data if the peer's window allows, else the last segment again."""
        if self.snd_una == self.snd_nxt or self.recovery is not Recovery.NONE:
            return
        unsent = seq_diff(self._sendbuf.end, self.snd_nxt)
        usable = seq_diff(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt)
        size = min(unsent, usable, self.max_payload())
        self.tail_probes += 1
        if size > 0:
            fin = self._fin_seq is not None and seq_add(self.snd_nxt, size) == self._fin_seq
            self._transmit(self.snd_nxt, size, fin, now)
            self._tlp_rtx = False
        else:
            last = self.loss.sent[-1] if self.loss.sent else None
            if last is None:
                return
            end = last.end
            fin_seq = self._fin_seq
            data_end = end if fin_seq is None or not seq_gt(end, fin_seq) else fin_seq
            size = min(seq_diff(data_end, last.seq), self.max_payload())
            seq = seq_add(data_end, -size)
            self._transmit(seq, size, fin_seq is not None and data_end == fin_seq
                           and seq_gt(end, fin_seq), now)
            self._tlp_rtx = True
        self._tlp_end = self.snd_nxt
        self._rto_due = now + self.rtt.rto

    def _transmit(self: Connection, seq: int, size: int, fin: bool, now: float) -> None:
        """Send data [seq, seq+size) (and FIN): new if at SND.NXT, else a retransmission."""
        buf = self._sendbuf
        payload = buf.get(seq, size) if size else b""
        end = seq_add(seq, size)
        flags = (PSH if size and end == buf.end else 0) | (FIN if fin else 0)
        new_end = seq_add(end, 1 if fin else 0)
        if seq_gt(new_end, self.snd_nxt):
            ecn = 0
            if self.ecn_ok and size:  # ECT(0) on new data only (RFC 3168 §6.1.5)
                ecn = ECT0
                if self._cwr_pending:
                    flags |= CWR
                    self._cwr_pending = False
            self._out.append(self._make(flags, seq, payload=payload, ecn=ecn))
            if self._rtt_seq is None and seq == self.snd_nxt:
                self._rtt_seq, self._rtt_sent_at = seq, now  # time a fresh segment (Karn)
            if self.snd_nxt == self.snd_una:
                self._stalled_since = now
            self.loss.on_send(self.snd_nxt, new_end, now)
            self.snd_nxt = new_end
            if self._tlp_due is None and self.sack_ok and self.recovery is Recovery.NONE \
                    and self._tlp_end is None:
                self._tlp_due = now + self.loss.pto(self.rtt.srtt, self.pipe(), self.snd_mss,
                                                    self.rtt.rto)
        else:
            self._out.append(self._make(flags, seq, payload=payload))
            self.retransmissions += 1
            self.loss.on_retransmit(seq, new_end, now)
            if self._prr is not None:
                self._prr.out += max(size, 1)
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
