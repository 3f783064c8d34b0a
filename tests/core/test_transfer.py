"""Reliable data transfer between two engines (RFC 5681, 6298, 6582, 6675, 2018, 7323)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpscapy.bulk import A, B, pattern, run_transfer
from tcpscapy.core import ACK, SYN, Config, DataReceived, SendSpace, State
from tcpscapy.core.connection import Connection
from tcpscapy.core.options import encode_options
from tcpscapy.core.rtt import RttEstimator
from tcpscapy.core.segment import Segment
from tcpscapy.sim import Impairment

from .test_two_engines import connected, events, received

pytestmark = pytest.mark.usefixtures("each_cc")  # every test with each controller
MB = 1_000_000
IMPAIRED = dict(reorder=0.1, duplicate=0.05)


def assert_intact(result, size_up: int, size_down: int) -> None:  # type: ignore[no-untyped-def]
    assert result.ok, (result.client.conn.close_reason, result.server.conn.close_reason)
    assert bytes(result.server.received) == pattern(size_up, 1)
    assert bytes(result.client.received) == pattern(size_down, 2)
    assert result.violations == []


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.10, 0.30])
@pytest.mark.parametrize("seed", [1, 2])
def test_one_megabyte_both_ways(loss: float, seed: int) -> None:
    result = run_transfer(MB, MB, impairment=Impairment(loss=loss, seed=seed, **IMPAIRED))
    assert_intact(result, MB, MB)


def test_clean_path_needs_no_retransmission() -> None:
    result = run_transfer(MB, MB)
    assert_intact(result, MB, MB)
    assert result.client.conn.retransmissions == result.server.conn.retransmissions == 0


@pytest.mark.default_cc  # the 1 MB tests cover each controller
@pytest.mark.parametrize("loss", [0.0, 0.01, 0.10, 0.30])
def test_ten_megabytes_both_ways(loss: float) -> None:
    result = run_transfer(10 * MB, 10 * MB, impairment=Impairment(loss=loss, seed=7, **IMPAIRED))
    assert_intact(result, 10 * MB, 10 * MB)


@pytest.mark.parametrize("options", [dict(sack=False), dict(timestamps=False),
                                     dict(wscale=None), dict(nagle=False)])
def test_transfer_without_each_option(options: dict[str, object]) -> None:
    config = Config(secret=b"options", **options)  # type: ignore[arg-type]
    result = run_transfer(300_000, 200_000, config=config,
                          impairment=Impairment(loss=0.05, seed=3, **IMPAIRED))
    assert_intact(result, 300_000, 200_000)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0, 0.3), reorder=st.floats(0, 0.3),
       duplicate=st.floats(0, 0.2), up=st.integers(0, 60_000), down=st.integers(0, 60_000))
def test_any_impairment_delivers_the_bytes_intact(seed: int, loss: float, reorder: float,
                                                  duplicate: float, up: int, down: int) -> None:
    impairment = Impairment(loss=loss, reorder=reorder, duplicate=duplicate, seed=seed)
    assert_intact(run_transfer(up, down, impairment=impairment), up, down)


def test_slow_reader_closes_the_window_and_opens_it_again() -> None:
    net, conn, peer = connected(Config(secret=b"slow", recv_buffer=16_384, wscale=None))
    data = pattern(100_000, 6)
    conn.send(data)
    net.run(timeout=30)  # the reader sleeps: the window fills and closes
    windows = [s.window for s in net.sent() if s.src == B]
    assert windows[-1] == 0 and conn.state is State.ESTABLISHED
    probes = [d.time for d in net.log
              if d.segment.src == A and d.segment.seq == (conn.snd_una - 1) % 2**32]
    assert len(probes) >= 3, "the persist timer probes the zero window"
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps), "probes back off"
    got = bytearray()
    while len(got) < len(data):  # the reader wakes up and reads as fast as it can
        for event in iter(peer.next_event, None):
            if isinstance(event, DataReceived):
                got += event.data
                peer.data_consumed(len(event.data))
        done = len(got) == len(data)
        assert net.run(lambda done=done: peer._unread > 0 or done, timeout=120)
    assert bytes(got) == data
    assert [s.window for s in net.sent() if s.src == B][-1] > 0


def test_fast_retransmit_after_three_duplicate_acks_without_sack() -> None:
    net, conn, peer = connected(Config(secret=b"fr", sack=False, timestamps=False))
    lost: list[Segment] = []

    def lose_one(seg: Segment) -> bool:
        if seg.src == A and seg.payload and not lost and seg.seq != conn.snd_una:
            lost.append(seg)
            return True
        return False

    net.drop = lose_one
    data = pattern(40_000, 9)
    conn.send(data)
    net.run(timeout=5)
    assert received(events(peer)) == data
    times = [d.time for d in net.log if d.segment.seq == lost[0].seq and d.segment.src == A]
    assert len(times) == 2 and times[1] - times[0] < 0.5  # well before the 1 s RTO
    first_rtx = next(i for i, d in enumerate(net.log)
                     if d.segment.seq == lost[0].seq and d.time == times[1] and d.segment.src == A)
    dupacks = [d for d in net.log[:first_rtx]
               if d.segment.src == B and d.segment.ack == lost[0].seq and not d.segment.payload]
    assert len(dupacks) >= 3
    assert conn.retransmissions == 1


def test_sack_recovery_repairs_several_holes_in_one_round_trip() -> None:
    net, conn, peer = connected(Config(secret=b"sack"))
    seen: list[int] = []
    holes = {conn.max_payload() * k for k in (2, 5, 8)}  # the 3rd, 6th and 9th segments

    def lose_three(seg: Segment) -> bool:
        if seg.src == A and seg.payload and len(seen) < 3 and seg.seq not in seen \
                and (seg.seq - conn.snd_una) % 2**32 in holes:
            seen.append(seg.seq)
            return True
        return False

    net.drop = lose_three
    data = pattern(60_000, 4)
    conn.send(data)
    net.run(timeout=5)
    assert received(events(peer)) == data
    assert len(seen) == 3 and conn.retransmissions == 3  # exactly the holes, nothing else
    sacks = [s for s in net.sent() if s.src == B and s.options.sack_blocks]
    assert sacks and all(len(s.options.sack_blocks) <= 3 for s in sacks)
    rtx_times = [d.time for d in net.log if d.segment.src == A and d.segment.seq in seen]
    assert max(rtx_times) < 1.0  # no retransmission timeout was needed


def test_initial_window_is_ten_segments() -> None:
    net, conn, peer = connected(Config(secret=b"iw", delayed_ack=0.2))
    start = len(net.log)
    net.drop = lambda seg: seg.src == B  # no ACKs come back
    conn.send(pattern(100_000, 1))
    net.run(timeout=0.5)
    first_flight = [d for d in net.log[start:] if d.segment.payload
                    and d.time == net.log[start].time]  # later: tail loss probe, RTO
    assert len(first_flight) == 10


def test_nagle_coalesces_small_writes_and_can_be_switched_off() -> None:
    for nagle, expected in ((True, 2), (False, 5)):
        net, conn, peer = connected(Config(secret=b"nagle", nagle=nagle))
        start = len(net.log)
        for _ in range(5):
            conn.send(b"ab")
            net.run(timeout=0.001)  # each write lands before the first ACK is back
        net.run(timeout=1)
        data = [d for d in net.log[start:] if d.segment.src == A and d.segment.payload]
        assert len(data) == expected
        assert received(events(peer)) == b"ab" * 5


def test_send_buffer_is_bounded_and_reports_space() -> None:
    net, conn, peer = connected(Config(secret=b"buf", send_buffer=10_000))
    assert conn.send(b"x" * 25_000) == 10_000
    assert conn.send_space == 0
    net.run(timeout=2)
    assert SendSpace() in events(conn)
    assert conn.send_space == 10_000


def test_window_scaling_lets_more_than_64k_fly() -> None:
    config = Config(secret=b"ws", recv_buffer=1 << 20, send_buffer=1 << 20)
    net, conn, peer = connected(config)
    peer.send(b"window update")
    net.run(timeout=1)
    assert conn.snd_wnd > 65535
    net.drop = lambda seg: seg.src == B  # hold ACKs: see how far the first flight goes
    conn.cwnd = 1 << 20  # as if slow start were done
    conn.send(pattern(1 << 20, 3))
    net.run(timeout=0.02)
    assert conn.pipe() > 65535


def test_keepalive_probes_an_idle_peer_and_gives_up_when_it_is_gone() -> None:
    config = Config(secret=b"ka", keepalive=10.0, keepalive_interval=5.0, keepalive_probes=3)
    net, conn, peer = connected(config)
    net.run(timeout=25)
    probes = [s for s in net.sent() if s.src == A and s.seq == (conn.snd_nxt - 1) % 2**32]
    assert probes and conn.state is State.ESTABLISHED  # answered: alive
    net.drop = lambda seg: True  # the peer vanishes
    net.run(lambda: conn.state is State.CLOSED, timeout=100)
    assert "keepalive" in conn.close_reason


def test_user_timeout_ends_a_transfer_to_a_vanished_peer() -> None:
    net, conn, peer = connected(Config(secret=b"ut", user_timeout=30.0))
    conn.send(pattern(50_000, 5))
    net.run(timeout=0.05)
    vanished_at = net.now
    net.drop = lambda seg: True
    net.run(lambda: conn.state is State.CLOSED, timeout=1000)
    assert "user timeout" in conn.close_reason
    assert 29 <= net.now - vanished_at <= 31


def test_without_user_timeout_retries_end_the_connection_with_a_reason() -> None:
    net, conn, peer = connected(Config(secret=b"rt", retries=4))
    conn.send(b"hello")
    net.drop = lambda seg: True
    net.run(lambda: conn.state is State.CLOSED, timeout=1000)
    assert "timed out" in conn.close_reason and "4 retransmissions" in conn.close_reason


def test_data_is_delivered_in_order_even_when_segments_arrive_reordered() -> None:
    result = run_transfer(100_000, 0, impairment=Impairment(reorder=0.5, jitter=0.05, seed=11))
    assert_intact(result, 100_000, 0)
    assert any(s.options.sack_blocks for s in result.net.sent() if s.src == B)


def test_receiver_window_never_shrinks_its_right_edge() -> None:
    result = run_transfer(300_000, 0, config=Config(secret=b"edge", recv_buffer=20_000),
                          read_limit=5000)
    assert_intact(result, 300_000, 0)
    edge = None
    for seg in result.net.sent():
        if seg.src == B and seg.flags & ACK and not seg.flags & SYN:
            right = (seg.ack + (seg.window << result.server.conn.rcv_wscale)) % 2**32
            if edge is not None:
                assert (right - edge) % 2**32 < 2**31, "right edge moved left"
            edge = right


def test_rto_follows_rfc_6298() -> None:
    rtt = RttEstimator(initial=1.0, rto_min=0.2, rto_max=60.0)
    assert rtt.rto == 1.0
    rtt.sample(0.5)
    assert rtt.srtt == 0.5 and rtt.rttvar == 0.25 and rtt.rto == pytest.approx(1.5)
    rtt.sample(0.1)
    assert rtt.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 0.4)
    assert rtt.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 0.1)
    for _ in range(10):
        rtt.back_off()
    assert rtt.rto == 60.0
    rtt.sample(0.1)
    assert rtt.backoff == 0 and rtt.rto >= 0.2


def test_delivered_bytes_hold_the_window_until_consumed() -> None:
    net, conn, peer = connected(Config(secret=b"consume", recv_buffer=8192, wscale=None))
    conn.send(b"z" * 20_000)
    net.run(timeout=3)
    got = b"".join(e.data for e in iter(peer.next_event, None) if isinstance(e, DataReceived))
    assert len(got) == 8192  # the peer's app has not consumed: window full
    peer.data_consumed(len(got))
    net.run(timeout=3)
    assert sum(len(e.data) for e in events(peer) if isinstance(e, DataReceived)) == 8192


def test_segments_with_timestamps_fit_the_mss() -> None:
    """RFC 6691: payload plus options never exceed the MSS, so 1500-byte links fit."""
    result = run_transfer(200_000, 200_000, impairment=Impairment(loss=0.05, reorder=0.2, seed=5))
    assert_intact(result, 200_000, 200_000)
    for seg in result.net.sent():
        option_bytes = len(encode_options(seg.options)) if seg.payload else 0
        assert len(seg.payload) + option_bytes <= 1460 + (12 if seg.flags & SYN else 0)
    assert max(len(s.payload) for s in result.net.sent()) == 1448


@pytest.mark.default_cc  # (BBR's larger flights at 5 % loss nearly always carry SACK blocks)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_header_prediction_changes_nothing_on_the_wire(seed: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path must have exactly the effect of the full path: same segments, same times."""
    impairment = dict(loss=0.05, reorder=0.1, duplicate=0.05, seed=seed)
    taken = {"n": 0}
    original = Connection._predicted

    def counted(self: Connection, seg: Segment, now: float) -> bool:
        done = original(self, seg, now)
        taken["n"] += done
        return done

    monkeypatch.setattr(Connection, "_predicted", counted)
    fast = run_transfer(300_000, 200_000, impairment=Impairment(**impairment))  # type: ignore[arg-type]
    monkeypatch.setattr(Connection, "_predicted", lambda self, seg, now: False)
    slow = run_transfer(300_000, 200_000, impairment=Impairment(**impairment))  # type: ignore[arg-type]
    assert taken["n"] > 50  # the fast path really carried part of the transfer
    assert [(d.time, d.segment, d.fate) for d in fast.net.log] == \
        [(d.time, d.segment, d.fate) for d in slow.net.log]
