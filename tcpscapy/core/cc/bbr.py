"""BBR version 1, as Linux ships it (tcp_bbr.c; draft-cardwell-iccrg-bbr-congestion-control-00).

A model, not a reaction to loss: BtlBw is the windowed maximum of delivery-rate
samples over 10 rounds, RTprop the minimum RTT over 10 s. The sender paces at
pacing_gain x BtlBw and keeps at most cwnd_gain x BDP in flight. Phases:
STARTUP (gain 2/ln 2) until the bandwidth stops growing by 25 % for three
rounds, DRAIN until the queue it built is gone, PROBE_BW cycling gains
(1.25, 0.75, then six rounds of 1), and PROBE_RTT (4 segments for 200 ms) when
RTprop has not been refreshed for 10 s. Loss does not cut the window (v1);
the recovery's retransmissions simply count against it. Like Linux's v1 since
4.20 (bbr_update_ack_aggregation) the window also covers the ACK aggregation
seen over the last 10 rounds: our ACKs come in batches, one per turn of the
driver's loop, so a sub-millisecond path needs more than its BDP in flight.
"""

from __future__ import annotations

from .base import AckSample, CongestionControl

HIGH_GAIN = 2.885  # 2 / ln 2
DRAIN_GAIN = 1 / HIGH_GAIN
CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_ROUNDS = 10
RTPROP_WINDOW = 10.0
PROBE_RTT_TIME = 0.2
MIN_SEGMENTS = 4
FULL_BW_GROWTH, FULL_BW_ROUNDS = 1.25, 3


class Bbr(CongestionControl):
    name = "bbr"
    uses_prr = False
    __slots__ = (
        "_agg",
        "_initial_rate",
        "bw_samples",
        "cwnd_gain",
        "cycle_index",
        "cycle_stamp",
        "extra_acked",
        "full_bw",
        "full_bw_rounds",
        "next_round_delivered",
        "pacing_gain",
        "prior_cwnd",
        "probe_rtt_done",
        "round",
        "rtprop",
        "rtprop_stamp",
        "state",
    )

    def __init__(self, mss: int, initial_window: int) -> None:
        super().__init__(mss, initial_window)
        self.state = "startup"
        self.pacing_gain = self.cwnd_gain = HIGH_GAIN
        self.bw_samples: list[tuple[int, float]] = []  # (round, rate), a windowed max
        self.rtprop: float | None = None
        self.rtprop_stamp = 0.0
        self.round = 0
        self.next_round_delivered = 0
        self.full_bw = 0.0
        self.full_bw_rounds = 0
        self.cycle_index = 0
        self.cycle_stamp = 0.0
        self.probe_rtt_done: float | None = None
        self.prior_cwnd = initial_window
        self._initial_rate: float | None = None
        self._agg: list[float] = [0.0, 0.0, 0.0]  # epoch start, bytes acked in it, round
        self.extra_acked: list[tuple[int, int]] = []  # (round, bytes), a windowed max

    @property
    def phase(self) -> str:
        return self.state

    @property
    def btl_bw(self) -> float:
        return max((rate for _, rate in self.bw_samples), default=0.0)

    def bdp(self, gain: float) -> int:
        if self.rtprop is None or not self.btl_bw:
            return self.cwnd
        return int(gain * self.btl_bw * self.rtprop)

    def pacing_rate(self) -> float | None:
        if self._initial_rate is None and self.full_bw_rounds < FULL_BW_ROUNDS:
            return None  # no RTT sample yet (e.g. only retransmissions were acked): unpaced
        rate = self.pacing_gain * self.btl_bw
        if self._initial_rate is not None and self.full_bw_rounds < FULL_BW_ROUNDS:
            # Until the pipe is full the rate never falls (as Linux): an early, small
            # app-limited sample must not throttle the start.
            rate = self._initial_rate = max(rate, self._initial_rate)
        return rate or None

    def on_ack(self, ack: AckSample) -> None:
        now = ack.now
        round_start = False
        if ack.delivered and ack.prior_delivered >= self.next_round_delivered:
            self.next_round_delivered = ack.total_delivered
            self.round += 1
            round_start = True
        rate = ack.delivery_rate
        if rate and (not ack.app_limited or rate >= self.btl_bw):
            self.bw_samples.append((self.round, rate))
        cutoff = self.round - BW_ROUNDS
        while self.bw_samples and self.bw_samples[0][0] <= cutoff:
            self.bw_samples.pop(0)
        if len(self.bw_samples) > 64:  # keep it small: only the max matters
            best = max(self.bw_samples, key=lambda s: s[1])
            self.bw_samples = [best, *self.bw_samples[-32:]]
        rtt = ack.rtt
        expired = self.rtprop is not None and now - self.rtprop_stamp > RTPROP_WINDOW
        if rtt is not None and (self.rtprop is None or rtt <= self.rtprop or expired):
            self.rtprop, self.rtprop_stamp = rtt, now
            if self._initial_rate is None:  # the initial window over the first RTT
                self._initial_rate = HIGH_GAIN * self.cwnd / max(rtt, 0.001)
        self._update_aggregation(ack)
        self._update_state(ack, round_start, expired)
        self._set_cwnd(ack)

    def _update_state(self, ack: AckSample, round_start: bool, rtprop_expired: bool) -> None:
        now = ack.now
        if self.state == "startup" and round_start and not ack.app_limited:
            bw = self.btl_bw
            if bw >= self.full_bw * FULL_BW_GROWTH:
                self.full_bw, self.full_bw_rounds = bw, 0
            else:
                self.full_bw_rounds += 1
                if self.full_bw_rounds >= FULL_BW_ROUNDS:
                    self.state, self.pacing_gain, self.cwnd_gain = "drain", DRAIN_GAIN, HIGH_GAIN
        if self.state == "drain" and ack.in_flight <= self.bdp(1.0):
            self._enter_probe_bw(now)
        if self.state == "probe-bw":
            self._advance_cycle(ack)
        if rtprop_expired and self.state != "probe-rtt":
            self.state, self.pacing_gain, self.cwnd_gain = "probe-rtt", 1.0, 1.0
            self.prior_cwnd = max(self.prior_cwnd, self.cwnd)
            self.probe_rtt_done = None
        if self.state == "probe-rtt":
            if self.probe_rtt_done is None and ack.in_flight <= MIN_SEGMENTS * self.mss:
                self.probe_rtt_done = now + PROBE_RTT_TIME
            elif self.probe_rtt_done is not None and now >= self.probe_rtt_done:
                self.rtprop_stamp = now
                self.cwnd = max(self.cwnd, self.prior_cwnd)
                if self.full_bw_rounds >= FULL_BW_ROUNDS:
                    self._enter_probe_bw(now)
                else:
                    self.state, self.pacing_gain, self.cwnd_gain = "startup", HIGH_GAIN, HIGH_GAIN

    def _enter_probe_bw(self, now: float) -> None:
        self.state, self.cwnd_gain = "probe-bw", 2.0
        self.cycle_index = 2  # start cruising (Linux picks a random phase other than 0.75)
        self.pacing_gain = CYCLE[self.cycle_index]
        self.cycle_stamp = now

    def _advance_cycle(self, ack: AckSample) -> None:
        rtprop = self.rtprop or 0.0
        elapsed = ack.now - self.cycle_stamp > rtprop
        gain = self.pacing_gain
        if (gain == 1.0 and elapsed) or \
                (gain > 1.0 and elapsed and ack.in_flight >= self.bdp(gain)) or \
                (gain < 1.0 and (elapsed or ack.in_flight <= self.bdp(1.0))):
            self.cycle_index = (self.cycle_index + 1) % len(CYCLE)
            self.pacing_gain = CYCLE[self.cycle_index]
            self.cycle_stamp = ack.now

    def _update_aggregation(self, ack: AckSample) -> None:
        """Bytes ACKed beyond what BtlBw explains since the epoch began (Linux's extra_acked)."""
        bw, agg = self.btl_bw, self._agg
        if not bw or not ack.delivered:
            return
        expected = bw * (ack.now - agg[0])
        if agg[1] <= expected:  # the ACK rate caught up: a new epoch
            agg[0], agg[1] = ack.now, 0.0
            expected = 0.0
        agg[1] += ack.delivered
        extra = int(min(agg[1] - expected, self.cwnd))
        window = self.extra_acked
        while window and window[0][0] <= self.round - BW_ROUNDS:
            window.pop(0)
        if not window or extra > max(e for _, e in window):
            window.append((self.round, extra))
            if len(window) > 16:
                del window[0]

    def _set_cwnd(self, ack: AckSample) -> None:
        floor = MIN_SEGMENTS * self.mss
        if self.state == "probe-rtt":
            self.cwnd = floor
            return
        aggregation = max((e for _, e in self.extra_acked), default=0)
        target = self.bdp(self.cwnd_gain) + aggregation + 3 * self.mss  # + quanta for TSO/ACKs
        if self.full_bw_rounds >= FULL_BW_ROUNDS or self.state != "startup":
            self.cwnd = max(min(self.cwnd + ack.delivered, target), floor)
        else:  # startup: grow by what was delivered, like slow start
            self.cwnd = max(self.cwnd + ack.delivered, floor)

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        self.prior_cwnd = max(self.prior_cwnd, self.cwnd)  # v1 keeps its model; no cut

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = max(self.cwnd, self.prior_cwnd)

    def on_rto(self, now: float, in_flight: int) -> None:
        self.prior_cwnd = max(self.prior_cwnd, self.cwnd)
        self.cwnd = self.mss  # Linux: loss state, one packet, then back to the model
