"""Loss detection and recovery, apart from congestion control (aioquic-style).

- `Sent`: one record per segment in flight, in sequence order (Linux's
  retransmission queue): when it was (re)sent, whether it was SACKed or
  marked lost, and the delivery counters a rate sample needs (BBR).
- RACK (RFC 8985 §6): a segment is lost when one sent after it was delivered
  and more than RACK.rtt + reo_wnd has passed since it was sent. reo_wnd is
  min_RTT/4 (0 before any reordering was seen, once DupThresh segments are
  SACKed: the fast-retransmit case); a reordering timer covers the rest.
- TLP (RFC 8985 §7): the probe timeout (PTO) the sender arms when data is in
  flight; `pto()` computes it.
- PRR (RFC 6937): how much the sender may send per ACK while in recovery.
"""

from __future__ import annotations

import math
from collections import deque

from .seq import seq_diff, seq_gt, seq_lt

DUP_THRESH = 3
WCDELACKT = 0.2  # worst-case delayed ACK timer the PTO allows for (RFC 8985 §7.2)


class Sent:
    __slots__ = ("delivered", "delivered_time", "end", "first_time", "lost", "prev_xmit", "rtx",
                 "sacked", "seq", "xmit")

    def __init__(self, seq: int, end: int, now: float, delivered: int, delivered_time: float,
                 first_time: float) -> None:
        self.seq, self.end, self.xmit = seq, end, now
        self.prev_xmit = now  # the send before the latest, for an undo
        self.lost = self.sacked = self.rtx = False
        self.delivered, self.delivered_time, self.first_time = delivered, delivered_time, first_time


class LossRecovery:
    """The sent-segment records, RACK-TLP and the delivery-rate counters."""

    __slots__ = ("_rate", "delivered", "delivered_time", "first_time", "last_rtt",
                 "lost_pending", "min_rtt", "rack_end", "rack_rtt", "rack_xmit",
                 "reordering_seen", "sacked_segments", "sent", "timer")

    def __init__(self) -> None:
        self.sent: deque[Sent] = deque()
        self.lost_pending = 0  # bytes marked lost and not yet sent again
        self.rack_xmit: float | None = None  # send time of the newest delivered segment
        self.rack_end = 0
        self.rack_rtt = 0.0
        self.min_rtt: float | None = None
        self.last_rtt: float | None = None  # this ACK's RTT, to the clock's precision
        self.reordering_seen = False
        self.sacked_segments = 0
        self.timer: float | None = None  # RACK's reordering timer
        self.delivered = 0  # bytes delivered so far (ACKed or SACKed)
        self.delivered_time = 0.0
        self.first_time = 0.0
        self._rate: tuple[float | None, int] = (None, 0)

    def clear(self) -> None:
        self.sent.clear()
        self.lost_pending = 0
        self.timer = None

    # --------------------------------------------------------------- sending

    def on_send(self, seq: int, end: int, now: float) -> None:
        """A new segment [seq, end) left."""
        if not self.sent:
            self.first_time = self.delivered_time = now  # a fresh flight
        self.sent.append(Sent(seq, end, now, self.delivered, self.delivered_time,
                              self.first_time))

    def on_retransmit(self, seq: int, end: int, now: float) -> None:
        """[seq, end) was sent again: its records are in flight anew."""
        for rec in self.sent:
            if not seq_lt(rec.seq, end):
                break
            if seq_gt(rec.end, seq):
                if rec.lost:
                    rec.lost = False
                    self.lost_pending -= seq_diff(rec.end, rec.seq)
                rec.rtx = True
                rec.prev_xmit, rec.xmit = rec.xmit, now
                rec.delivered, rec.delivered_time = self.delivered, self.delivered_time
                rec.first_time = self.first_time

    def split(self, rec: Sent, at: int) -> None:
        """Cut `rec` at `at` (the MSS shrank): two records, both as `rec` was."""
        tail = Sent(at, rec.end, rec.xmit, rec.delivered, rec.delivered_time, rec.first_time)
        tail.lost, tail.sacked, tail.rtx = rec.lost, rec.sacked, rec.rtx
        rec.end = at
        if rec.sacked:
            self.sacked_segments += 1
        self.sent.insert(self.sent.index(rec) + 1, tail)

    def next_lost(self) -> Sent | None:
        if not self.lost_pending:
            return None
        for rec in self.sent:
            if rec.lost:
                return rec
        return None

    # ----------------------------------------------------------------- ACKs

    def on_ack(self, snd_una: int, sacked_ranges: list[tuple[int, int]], now: float) -> int:
        """Take a cumulative ACK and the scoreboard's ranges; returns bytes newly delivered.

        Also updates RACK's newest delivered segment and notes reordering.
        """
        delivered = 0
        newest: Sent | None = None
        self.last_rtt = None
        sent = self.sent
        while sent and not seq_gt(sent[0].end, snd_una):
            rec = sent.popleft()
            size = seq_diff(rec.end, rec.seq)
            if rec.lost:
                self.lost_pending -= size
            if not rec.sacked:
                delivered += size
                newest = self._newer(newest, rec)
            else:
                self.sacked_segments -= 1
        if sacked_ranges and sent:
            i, n = 0, len(sacked_ranges)
            for rec in sent:
                while i < n and not seq_lt(rec.seq, sacked_ranges[i][1]):
                    i += 1  # ranges entirely below this record
                if i == n:
                    break
                lo, hi = sacked_ranges[i]
                if rec.sacked or seq_lt(rec.seq, lo) or seq_gt(rec.end, hi):
                    continue
                rec.sacked = True
                self.sacked_segments += 1
                size = seq_diff(rec.end, rec.seq)
                if rec.lost:
                    rec.lost = False
                    self.lost_pending -= size
                delivered += size
                newest = self._newer(newest, rec)
        if newest is not None:
            self.delivered += delivered
            self.delivered_time = now
            self.first_time = newest.xmit
            interval = max(now - newest.delivered_time, newest.xmit - newest.first_time)
            rate = (self.delivered - newest.delivered) / interval if interval > 0 else None
            self._rate = (rate, newest.delivered)
            self._rack_update(newest, now)
        else:
            self._rate = (None, self.delivered)
        return delivered

    def rate_sample(self) -> tuple[float | None, int]:
        """(delivery rate in bytes/s, delivered when that segment left) of the last ACK."""
        return self._rate

    def _newer(self, best: Sent | None, rec: Sent) -> Sent:
        if best is None or rec.xmit > best.xmit or (rec.xmit == best.xmit
                                                    and seq_gt(rec.end, best.end)):
            return rec
        return best

    def _rack_update(self, rec: Sent, now: float) -> None:
        rtt = now - rec.xmit
        if rec.rtx and self.min_rtt is not None and rtt + 1e-6 < self.min_rtt:  # (1 µs: float)
            # RFC 8985 §6.2 step 2: too soon for the retransmission, so the original got
            # there after all: the "loss" was reordering; widen the window from now on.
            self.reordering_seen = True
            return
        if not rec.rtx:  # (Karn: a retransmission's RTT is ambiguous)
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
            self.last_rtt = rtt
        if self.rack_xmit is not None and seq_lt(rec.end, self.rack_end) and not rec.rtx:
            self.reordering_seen = True  # delivered below the highest delivered: reordered
        if self.rack_xmit is None or rec.xmit > self.rack_xmit or (
                rec.xmit == self.rack_xmit and seq_gt(rec.end, self.rack_end)):
            self.rack_xmit, self.rack_end, self.rack_rtt = rec.xmit, rec.end, rtt

    # ------------------------------------------------------- loss detection

    def reo_wnd(self, in_recovery: bool, srtt: float) -> float:
        """RFC 8985 §6.2 step 4."""
        if not self.reordering_seen and (in_recovery or self.sacked_segments >= DUP_THRESH):
            return 0.0
        return min((self.min_rtt or 0.0) / 4, srtt)

    def detect_losses(self, now: float, in_recovery: bool, srtt: float) -> int:
        """Mark what RACK says is lost; returns the bytes newly marked. Sets `timer`."""
        self.timer = None
        if self.rack_xmit is None:
            return 0
        reo = self.reo_wnd(in_recovery, srtt)
        newly = 0
        soonest: float | None = None
        rack_xmit, rack_end, rack_rtt = self.rack_xmit, self.rack_end, self.rack_rtt
        for rec in self.sent:
            if rec.xmit > rack_xmit or (rec.xmit == rack_xmit and not seq_lt(rec.end, rack_end)):
                if not rec.rtx:
                    break  # sent after the newest delivered: too early to tell (in order)
                continue
            if rec.sacked or rec.lost:
                continue
            remaining = rec.xmit + rack_rtt + reo - now
            if remaining <= 0:
                rec.lost = True
                size = seq_diff(rec.end, rec.seq)
                self.lost_pending += size
                newly += size
            elif soonest is None or remaining < soonest:
                soonest = remaining
        if soonest is not None:
            self.timer = now + soonest
        return newly

    def mark_lost(self, first_only: bool = False) -> int:
        """Mark un-SACKed records lost (all after an RTO; the first for NewReno)."""
        newly = 0
        for rec in self.sent:
            if rec.sacked or rec.lost:
                if first_only and rec.lost:
                    return newly
                continue
            rec.lost = True
            size = seq_diff(rec.end, rec.seq)
            self.lost_pending += size
            newly += size
            if first_only:
                break
        return newly

    def undo_lost(self) -> None:
        """A spurious timeout: nothing was lost, and what arrives was sent before it.

        The retransmissions' records get their earlier send times back, so that
        the ACKs of the originals do not look like ACKs of the copies to RACK
        (Linux tells them apart by the echoed timestamp).
        """
        for rec in self.sent:
            rec.lost = False
            if rec.rtx:
                rec.xmit = rec.prev_xmit
        self.lost_pending = 0

    # ------------------------------------------------------------------ TLP

    @staticmethod
    def pto(srtt: float | None, in_flight: int, mss: int, rto: float) -> float:
        """RFC 8985 §7.2: 2 SRTT, plus the delayed-ACK time for a lone segment; at most RTO."""
        if srtt is None:
            return rto
        pto = 2 * srtt
        if in_flight <= mss:
            pto += WCDELACKT
        return min(max(pto, 0.002), rto)


class Prr:
    """Proportional Rate Reduction (RFC 6937), with the slow-start reduction bound."""

    __slots__ = ("delivered", "out", "recover_fs", "ssthresh")

    def __init__(self, in_flight: int, ssthresh: int) -> None:
        self.delivered = 0  # prr_delivered
        self.out = 0  # prr_out
        self.recover_fs = max(in_flight, 1)
        self.ssthresh = ssthresh

    def window(self, delivered: int, pipe: int, mss: int) -> int:
        """The congestion window for this ACK: pipe + sndcnt."""
        self.delivered += delivered
        if pipe > self.ssthresh:  # proportional part
            sndcnt = math.ceil(self.delivered * self.ssthresh / self.recover_fs) - self.out
        else:  # slow-start reduction bound: back to ssthresh, at most one MSS ahead
            limit = max(self.delivered - self.out, delivered) + mss
            sndcnt = min(self.ssthresh - pipe, limit)
        return pipe + max(sndcnt, 0)
