"""Urgent data (RFC 9293 §3.8.5, MUST-30/31/32) between two engines, in memory.

send(data, urgent=True) sets URG and the urgent pointer on every segment sent
before the urgent data's end, until the peer acknowledges it; the receiver gets an
UrgentData event saying where in the stream the urgent data ends, and the bytes
in order with the rest.
"""

from __future__ import annotations

from tcpscapy.core import URG, DataReceived, Event
from tcpscapy.core.events import UrgentData
from tcpscapy.core.segment import ACK, PSH
from tcpscapy.sim import Impairment

from .states import drain, established, from_peer
from .test_two_engines import A, B, connected, events, pair, received


def urgent_marks(evs: list[Event]) -> list[int]:
    return [e.end for e in evs if isinstance(e, UrgentData)]


def test_urgent_data_carries_its_end_and_the_peer_learns_where_it_ends() -> None:
    net, conn, peer = connected()
    conn.send(b"normal ")
    conn.send(b"URGENT!", urgent=True)
    net.run(timeout=1)
    data_segments = [s for s in net.sent() if s.src == A and s.payload]
    end = (data_segments[0].seq + 14) & 0xFFFFFFFF  # after both writes
    for seg in data_segments:
        assert seg.flags & URG and (seg.seq + seg.urgent) & 0xFFFFFFFF == end
    evs = events(peer)
    assert received(evs) == b"normal URGENT!"  # inline, in order
    assert urgent_marks(evs) == [14]  # urgent data ends before stream byte 14

    # Acknowledged: urgent mode is over; later data goes without URG, no new event.
    conn.send(b" then calm")
    net.run(timeout=1)
    last = [s for s in net.sent() if s.src == A and s.payload][-1]
    assert last.payload == b" then calm" and not last.flags & URG and last.urgent == 0
    evs = events(peer)
    assert received(evs) == b" then calm" and urgent_marks(evs) == []


def test_a_second_urgent_send_moves_the_mark_and_survives_loss() -> None:
    net, client, _, listener = pair(impairment=Impairment(loss=0.2, seed=7))
    conn = client.connect((A, 40000), (B, 80), net.now)
    assert net.run(lambda: bool(listener._ready), timeout=30)
    peer = listener.accept()
    assert peer is not None
    conn.send(b"a" * 3000, urgent=True)
    conn.send(b"b" * 3000)
    conn.send(b"!", urgent=True)
    got: list[Event] = []
    assert net.run(lambda: bool(got.extend(events(peer))) or len(received(got)) == 6001,
                   timeout=600)
    assert received(got) == b"a" * 3000 + b"b" * 3000 + b"!"
    marks = urgent_marks(got)
    assert marks and marks[-1] == 6001 and marks == sorted(marks)


def test_an_urgent_pointer_beyond_the_field_is_capped_at_65535() -> None:
    net, conn, peer = connected()
    conn.send(b"x" * 100_000, urgent=True)
    net.run(timeout=5)
    first = next(s for s in net.sent() if s.src == A and s.payload)
    assert first.flags & URG and first.urgent == 0xFFFF  # "urgent data lies beyond"
    assert urgent_marks(events(peer))[-1] == 100_000


def test_urg_from_the_peer_is_taken_on_the_slow_path_and_told_once() -> None:
    conn = established()
    rcv, snd = conn.rcv_nxt, conn.snd_nxt
    conn.receive(from_peer(URG | PSH | ACK, rcv, snd, b"abc")._replace(urgent=3), 1.0)
    conn.receive(from_peer(URG | PSH | ACK, rcv, snd, b"abc")._replace(urgent=3), 1.0)  # dup
    drain(conn, 1.0)
    evs: list[Event] = []
    while (e := conn.next_event()) is not None:
        evs.append(e)
    assert urgent_marks(evs) == [3]
    assert b"".join(e.data for e in evs if isinstance(e, DataReceived)) == b"abc"


def test_an_out_of_window_urg_segment_tells_nothing() -> None:
    conn = established()
    conn.receive(from_peer(URG | ACK, conn.rcv_nxt + 10**6, conn.snd_nxt, b"z")._replace(
        urgent=1), 1.0)
    assert all(not isinstance(e, UrgentData) for e in iter(conn.next_event, None))
