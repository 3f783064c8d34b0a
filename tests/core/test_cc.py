"""Congestion controllers on their own: CUBIC (RFC 9438) with HyStart++ (RFC 9406), BBR v1."""

from __future__ import annotations

import pytest

from tcpscapy.core.cc import NAMES, AckSample, Bbr, Cubic, NewReno, make
from tcpscapy.core.cc.cubic import BETA, C

MSS = 1000


def ack(now: float, acked: int = MSS, rtt: float | None = None, min_rtt: float | None = None,
        in_flight: int = 0, una: int = 0, nxt: int = 0, **kw: object) -> AckSample:
    return AckSample(now, acked, acked, rtt, min_rtt, in_flight, una, nxt, **kw)  # type: ignore[arg-type]


def cubic_after_loss(w_max_segments: int) -> Cubic:
    cc = Cubic(MSS, 10 * MSS)
    cc.cwnd = w_max_segments * MSS
    cc.ssthresh = 1  # in congestion avoidance
    cc.on_congestion_event(0.0, cc.cwnd)
    cc.on_recovery_end(0.0)
    return cc


def run_rounds(cc: Cubic, rtt: float, rounds: int, start: float = 0.0) -> float:
    """One ACK per segment of the window, a window per RTT; returns the time at the end."""
    now = start
    for _ in range(rounds):
        now += rtt
        for _ in range(cc.cwnd // MSS):
            cc.on_ack(ack(now, min_rtt=rtt))
    return now


def test_a_loss_cuts_to_beta_and_k_is_where_w_max_returns() -> None:
    cc = cubic_after_loss(100)
    assert cc.ssthresh == cc.cwnd == int(100 * MSS * BETA)
    assert cc.k == pytest.approx(((100 - 70) / C) ** (1 / 3))  # RFC 9438 (2)


def test_window_follows_w_cubic_in_the_concave_and_convex_regions() -> None:
    cc = cubic_after_loss(100)
    rtt = 0.2  # long enough that Reno's estimate stays below W_cubic (not Reno-friendly)
    k = cc.k  # ~4.2 s
    now = run_rounds(cc, rtt, round(k / rtt))
    # At t = K the window is back at W_max (the plateau); cwnd aims at W_cubic(t + RTT).
    assert cc.cwnd / MSS == pytest.approx(cc.w_cubic(now - cc.epoch + rtt), rel=0.03)
    assert cc.cwnd / MSS == pytest.approx(100, rel=0.03)
    assert cc.w_est < cc.w_cubic(now - cc.epoch)
    now = run_rounds(cc, rtt, round(k / rtt), now)  # convex region, t = 2K
    t = now - cc.epoch
    assert cc.w_cubic(t) > 120
    assert cc.cwnd / MSS == pytest.approx(cc.w_cubic(t + rtt), rel=0.03)


def test_short_rtt_small_window_is_the_reno_friendly_region() -> None:
    cc = cubic_after_loss(20)  # K ~ 2.5 s
    rtt = 0.001
    now = run_rounds(cc, rtt, 100)  # 0.1 s: W_cubic has hardly moved, Reno gained ~53
    t = now - cc.epoch
    assert cc.w_cubic(t) < 15
    assert cc.cwnd / MSS == pytest.approx(cc.w_est, rel=0.02)
    assert cc.w_est > 14 + 0.9 * 100 * 3 * (1 - BETA) / (1 + BETA)


def test_fast_convergence_lowers_w_max_when_the_window_keeps_shrinking() -> None:
    cc = cubic_after_loss(100)
    cc.on_congestion_event(1.0, cc.cwnd)  # a second loss below the old W_max
    assert cc.w_max == pytest.approx(70 * (1 + BETA) / 2)


def test_rto_gives_one_segment_and_slow_start() -> None:
    cc = cubic_after_loss(100)
    cc.on_rto(1.0, 70 * MSS)
    assert cc.cwnd == MSS and cc.phase == "slow-start"


def test_hystart_leaves_slow_start_when_the_rtt_rises() -> None:
    cc = Cubic(MSS, 10 * MSS)
    una = nxt = 0
    now = 0.0
    phases, css = [], []
    for round_no in range(12):
        rtt = 0.010 if round_no < 3 else 0.030  # the queue starts to build in round 3
        nxt = una + cc.cwnd
        for _ in range(cc.cwnd // MSS):
            una += MSS
            now += rtt / 10
            cc.on_ack(ack(now, rtt=rtt, min_rtt=0.01, una=una, nxt=nxt))
        phases.append(cc.phase)
        css.append(cc.hystart.in_css)
    assert phases[:3] == ["slow-start"] * 3 and css[:3] == [False] * 3
    assert any(css)  # Conservative Slow Start (its phase still reads "slow-start")
    assert phases[-1] == "congestion-avoidance"  # after CSS_ROUNDS rounds of CSS
    assert cc.ssthresh < 1 << 30


def test_newreno_halves_the_flight_and_grows_a_segment_per_window() -> None:
    cc = NewReno(MSS, 10 * MSS)
    cc.on_congestion_event(0.0, 40 * MSS)
    cc.on_recovery_end(0.0)
    assert cc.cwnd == cc.ssthresh == 20 * MSS
    for _ in range(20):
        cc.on_ack(ack(1.0))
    assert 20 * MSS < cc.cwnd <= 21 * MSS


def test_unknown_controller_name_is_refused() -> None:
    assert set(NAMES) == {"newreno", "cubic", "bbr"}
    with pytest.raises(ValueError, match="unknown congestion control 'vegas'"):
        make("vegas", MSS, 10 * MSS)


def test_bbr_goes_through_startup_drain_probe_bw_and_probe_rtt() -> None:
    bbr = Bbr(MSS, 10 * MSS)
    assert bbr.phase == "startup" and bbr.pacing_rate() is None
    rtt, rate = 0.01, 1_000_000.0  # a 1 MB/s bottleneck: BDP 10 kB
    delivered, now = 0, 0.0
    phases: list[str] = []

    def round_trip(in_flight: int) -> None:
        nonlocal delivered, now
        prior = delivered
        now += rtt
        delivered += int(rate * rtt)
        bbr.on_ack(AckSample(now, int(rate * rtt), int(rate * rtt), rtt, rtt, in_flight, 0, 0,
                             rate, prior, delivered))
        if not phases or phases[-1] != bbr.phase:
            phases.append(bbr.phase)

    for _ in range(6):  # the bandwidth stops growing: three rounds later the pipe is full
        round_trip(in_flight=3 * 10_000)
    assert phases == ["startup", "drain"]
    assert bbr.pacing_rate() == pytest.approx(rate / 2.885, rel=0.01)
    round_trip(in_flight=10_000)  # the queue drained to one BDP
    assert bbr.phase == "probe-bw"
    gains = set()
    for _ in range(20):  # in flight: enough to end the 1.25 phase (1.25 BDP)
        round_trip(in_flight=13_000)
        gains.add(bbr.pacing_gain)
    assert gains == {1.25, 0.75, 1.0}  # the gain cycle
    # cwnd_gain x BDP, plus the ACK aggregation: one ACK per round trip carries a whole BDP.
    assert bbr.cwnd == pytest.approx(2 * 10_000 + 10_000 + 3 * MSS, rel=0.01)
    now += 10.5  # RTprop not refreshed for 10 s (only higher RTTs): probe it
    rtt = 0.012
    round_trip(in_flight=12_000)
    assert bbr.phase == "probe-rtt" and bbr.cwnd == 4 * MSS
    round_trip(in_flight=4 * MSS)
    now += 0.25
    round_trip(in_flight=4 * MSS)
    assert bbr.phase == "probe-bw"
    assert phases == ["startup", "drain", "probe-bw", "probe-rtt", "probe-bw"]
