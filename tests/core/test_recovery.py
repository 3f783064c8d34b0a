"""Loss detection and recovery: RACK-TLP (RFC 8985), PRR (RFC 6937), the Eifel undo."""

from __future__ import annotations

import math

import pytest

from tcpscapy.bulk import pattern
from tcpscapy.core import Config, Segment
from tcpscapy.core.recovery import LossRecovery, Prr

from .test_two_engines import A, B, connected, events, received

SEG = 1000


def sent(recovery: LossRecovery, count: int, gap: float = 0.001) -> None:
    for i in range(count):
        recovery.on_send(i * SEG, (i + 1) * SEG, i * gap)


def sack(*segments: int) -> list[tuple[int, int]]:
    return [(i * SEG, (i + 1) * SEG) for i in segments]


def test_rack_marks_a_loss_only_after_rtt_plus_reordering_window() -> None:
    rack = LossRecovery()
    sent(rack, 6)  # segment i leaves at i ms
    rack.on_ack(0, sack(3), 0.100)  # segment 3, sent at 3 ms, is delivered at 100 ms
    assert rack.min_rtt == pytest.approx(0.097)
    assert rack.detect_losses(0.100, False, 0.097) == 0  # 0, 1, 2: not yet
    reo = 0.097 / 4  # min_RTT / 4 (RFC 8985 §6.2 step 4)
    assert rack.timer == pytest.approx(0.0 + 0.097 + reo)  # segment 0 is due first
    assert rack.detect_losses(rack.timer - 1e-6, False, 0.097) == 0
    assert rack.detect_losses(0.0 + 0.097 + reo, False, 0.097) == SEG  # segment 0, by time
    assert rack.next_lost() is not None and rack.next_lost().seq == 0  # type: ignore[union-attr]
    assert rack.detect_losses(0.002 + 0.097 + reo, False, 0.097) == 2 * SEG  # then 1 and 2


def test_rack_does_not_fire_on_reordering_within_its_window() -> None:
    rack = LossRecovery()
    sent(rack, 6)
    rack.on_ack(0, sack(2, 3), 0.100)  # 0 and 1 are late by a few ms: reordered, not lost
    rack.detect_losses(0.100, False, 0.097)
    rack.on_ack(2 * SEG, sack(3), 0.110)  # ... and here they are, inside the window
    assert rack.detect_losses(0.110, False, 0.097) == 0
    assert rack.lost_pending == 0 and rack.timer is None
    assert rack.reordering_seen  # delivered below the highest delivered


def test_three_sacked_segments_without_reordering_mean_loss_at_once() -> None:
    rack = LossRecovery()
    sent(rack, 6)
    rack.on_ack(0, sack(1, 2, 3), 0.100)  # DupThresh segments above the hole
    assert rack.detect_losses(0.100, False, 0.097) == SEG  # reo_wnd 0: fast retransmit


def test_prr_sends_in_proportion_to_what_is_delivered() -> None:
    """RFC 6937: RecoverFS 20 segments, ssthresh 10: about one segment out per two in."""
    mss = 1000
    prr = Prr(20 * mss, 10 * mss)
    pipe = 19 * mss  # one segment was lost
    sends = []
    for _ in range(8):
        pipe -= mss  # a segment delivered
        window = prr.window(mss, pipe, mss)
        out = max(window - pipe, 0) // mss * mss
        prr.out += out
        pipe += out
        sends.append(out // mss)
    assert sum(sends) == math.ceil(8 * 10 / 20)  # prr_out = ceil(prr_delivered * 1/2)
    assert max(sends) <= 1
    # Below ssthresh the slow-start reduction bound lets it grow back, one MSS ahead.
    prr = Prr(20 * mss, 10 * mss)
    assert prr.window(2 * mss, 5 * mss, mss) == 5 * mss + 3 * mss


def test_tail_loss_probe_recovers_a_lost_tail_without_an_rto() -> None:
    net, conn, peer = connected(Config(secret=b"tlp"))
    data = pattern(10 * 1448, 6)  # one flight; its last two segments are lost once
    tail = {(conn.iss + 1 + k * 1448) % 2**32 for k in (8, 9)}
    lost: list[Segment] = []

    def lose_the_tail(seg: Segment) -> bool:
        if seg.src == A and seg.payload and seg.seq in tail - {s.seq for s in lost}:
            lost.append(seg)
            return True
        return False

    net.drop = lose_the_tail
    sent_at = net.now
    conn.send(data)
    net.run(timeout=5)
    assert received(events(peer)) == data and len(lost) == 2
    assert conn.tail_probes == 1  # the probe resent the last segment; its SACK showed
    assert conn.retransmissions == 2  # the other loss to RACK: each resent once
    repairs = [d.time for d in net.log if d.segment.src == A and d.fate == "sent"
               and d.segment.seq in tail]
    srtt = conn.srtt
    assert srtt is not None and len(repairs) == 2
    # The probe left 2 SRTT after the last ACK, the repair one RTT later: all well before
    # the RTO, which could not fire before 200 ms (its floor).
    assert max(repairs) - sent_at < 5 * srtt < 0.2


def test_a_spurious_timeout_is_undone_with_timestamps() -> None:
    """Eifel (RFC 3522/4015): an ACK echoing a TSval from before the RTO undoes its cut."""
    net, conn, peer = connected(Config(secret=b"eifel", rto_min=0.05, rto_initial=0.05))
    conn.send(pattern(200_000, 7))
    net.run(timeout=0.3)  # the window grows
    before = conn.cwnd
    assert before > 20 * 1448
    net.delay = 0.2  # a sudden delay spike: the RTO (~50 ms) fires though nothing is lost
    conn.send(pattern(50_000, 8))
    net.run(lambda: conn.recovery.value == "timeout", timeout=1)
    assert conn.cwnd < before
    net.run(lambda: conn.recovery.value == "none", timeout=2)
    assert conn.cwnd >= before  # restored, not rebuilt from one segment
    net.delay = 0.01
    net.run(timeout=5)
    assert len(received(events(peer))) == 250_000
    assert all(s.dst == B for s in net.sent() if s.src == A)
