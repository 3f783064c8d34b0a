"""ICMP errors and path MTU in the engine (core/icmp.py, pmtu.py, path.py): fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from tcpscapy.bulk import check_limits, pattern
from tcpscapy.core import Closed, Config, State
from tcpscapy.core.connection import Connection
from tcpscapy.core.events import Event, IcmpReceived, PathMtuChanged
from tcpscapy.core.icmp import IcmpError
from tcpscapy.core.pmtu import MIN_PATH_MTU, PathMtuCache, next_mtu, plateau_below
from tcpscapy.core.seq import seq_add
from tcpscapy.core.stack import Stack
from tcpscapy.sim import Network, ip_size

from . import states
from .states import LOCAL, REMOTE, drain
from .test_two_engines import CLIENT, SERVER, A, B

ROUTER = "10.9.9.1"
CFG = Config(secret=b"icmp-tests", timestamps=False, delayed_ack=0.0)


def icmp(conn: Connection, type_: int, code: int, *, seq: int | None = None, mtu: int = 0,
         quoted_len: int = 0, tuple_: tuple[str, int, str, int] | None = None) -> IcmpError:
    src, sport, dst, dport = tuple_ or (*conn.local, *conn.remote)
    return IcmpError(type_, code, ROUTER, src, dst, sport, dport,
                     conn.snd_una if seq is None else seq, mtu, quoted_len)


def all_events(conn: Connection) -> list[Event]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def stack_with(conn: Connection) -> Stack:
    stack = Stack(CFG)
    stack._add(conn)
    stack.segments_to_send(0.0)
    return stack


def sending(size: int = 5 * 1460) -> tuple[Stack, Connection]:
    """An established connection with `size` bytes sent and unacknowledged."""
    conn = states.established()
    stack = stack_with(conn)
    conn.send(pattern(size, 3))
    out = stack.segments_to_send(0.1)
    assert sum(len(s.payload) for s in out) == size
    all_events(conn)
    return stack, conn


# -- soft and hard errors ----------------------------------------------------------------

SOFT = [(3, 0), (3, 1), (3, 5), (3, 6), (3, 7), (3, 11), (3, 12), (11, 0), (12, 0)]
HARD = [(3, 2), (3, 3), (3, 9), (3, 10), (3, 13)]


@pytest.mark.parametrize("type_code", SOFT + HARD)
def test_no_icmp_error_aborts_an_established_connection(type_code: tuple[int, int]) -> None:
    stack, conn = sending()
    assert stack.receive_icmp(icmp(conn, *type_code), 0.2) == ""
    evs = all_events(conn)
    assert [type(e) for e in evs] == [IcmpReceived]
    assert conn.state is State.ESTABLISHED
    assert stack.segments_to_send(0.2) == []  # nothing resent, nothing else changes
    assert stack.icmp_counters["icmp_accepted"] == 1


@pytest.mark.parametrize("type_code", SOFT)
def test_a_soft_error_in_syn_sent_is_remembered_and_named_at_the_timeout(
        type_code: tuple[int, int]) -> None:
    conn = states.syn_sent(CFG.with_(syn_retries=2))
    stack = stack_with(conn)
    err = icmp(conn, *type_code)
    assert stack.receive_icmp(err, 0.5) == ""
    assert conn.state is State.SYN_SENT
    while conn.state is State.SYN_SENT:
        due = stack.get_timer()
        assert due is not None
        stack.handle_timer(due)
        stack.segments_to_send(due)
    assert conn.close_cause == "timeout"
    from tcpscapy.core.icmp import describe
    assert conn.close_reason.endswith(f"(last ICMP: {describe(err)} from {ROUTER})")


@pytest.mark.parametrize("type_code", HARD)
def test_a_hard_error_ends_syn_sent(type_code: tuple[int, int]) -> None:
    conn = states.syn_sent()
    stack = stack_with(conn)
    stack.receive_icmp(icmp(conn, *type_code), 0.1)
    assert conn.state is State.CLOSED and conn.close_cause == "unreachable"
    assert ROUTER in conn.close_reason
    closed = [e for e in all_events(conn) if isinstance(e, Closed)]
    assert closed and closed[0].cause == "unreachable"


def test_port_unreachable_names_itself() -> None:
    conn = states.syn_sent()
    conn.receive_icmp(icmp(conn, 3, 3), 0.1)
    assert conn.close_reason == f"connection failed: port unreachable from {ROUTER}"


def test_source_quench_is_ignored_and_counted() -> None:
    stack, conn = sending()
    assert stack.receive_icmp(icmp(conn, 4, 0), 0.2) == "icmp_ignored"
    assert all_events(conn) == [] and conn.state is State.ESTABLISHED
    assert stack.icmp_counters["icmp_ignored"] == 1


# -- RFC 5927 checks ---------------------------------------------------------------------

def _window_edges(conn: Connection) -> list[int]:
    return [seq_add(conn.snd_una, -1), seq_add(conn.snd_nxt, 1), seq_add(conn.snd_una, 1 << 31)]


@pytest.mark.parametrize("type_code", [(3, 3), (3, 4), (3, 1)])
def test_icmp_quoting_a_sequence_number_outside_the_window_changes_nothing(
        type_code: tuple[int, int]) -> None:
    stack, conn = sending()
    mss, cwnd = conn.snd_mss, conn.cwnd
    for n, seq in enumerate(_window_edges(conn), 1):
        assert stack.receive_icmp(icmp(conn, *type_code, seq=seq, mtu=1280), 0.2) != ""
        assert stack.icmp_counters["icmp_out_of_window"] == n
    assert all_events(conn) == [] and stack.segments_to_send(0.2) == []
    assert (conn.snd_mss, conn.cwnd, conn.state) == (mss, cwnd, State.ESTABLISHED)
    assert conn.path is None and len(stack.pmtu) == 0


def test_the_window_edges_themselves_count() -> None:
    stack, conn = sending()
    assert stack.receive_icmp(icmp(conn, 3, 1, seq=conn.snd_una), 0.2) == ""
    assert stack.receive_icmp(icmp(conn, 3, 1, seq=conn.snd_nxt), 0.2) == ""


def test_a_hard_error_with_a_bad_sequence_number_does_not_end_syn_sent() -> None:
    conn = states.syn_sent()
    stack = stack_with(conn)
    err = icmp(conn, 3, 3, seq=seq_add(conn.iss, 5))
    assert stack.receive_icmp(err, 0.1) == "icmp_out_of_window"
    assert conn.state is State.SYN_SENT


@pytest.mark.parametrize("other", [
    (LOCAL[0], LOCAL[1] + 1, *REMOTE), (LOCAL[0], LOCAL[1], REMOTE[0], 81),
    ("10.0.0.3", LOCAL[1], *REMOTE), (LOCAL[0], LOCAL[1], "10.0.0.9", REMOTE[1])])
def test_icmp_quoting_someone_elses_flow_is_dropped_and_counted(
        other: tuple[str, int, str, int]) -> None:
    stack, conn = sending()
    assert stack.receive_icmp(icmp(conn, 3, 4, mtu=1280, tuple_=other), 0.2) == "icmp_no_connection"
    assert stack.icmp_counters == {**stack.icmp_counters, "icmp_received": 1,
                                   "icmp_no_connection": 1, "icmp_accepted": 0}
    assert conn.snd_mss == 1460 and all_events(conn) == []


# -- fragmentation needed ----------------------------------------------------------------

def test_frag_needed_lowers_the_mss_and_resends_at_once_without_a_cwnd_cut() -> None:
    stack, conn = sending()
    cwnd, ssthresh, rto_due = conn.cwnd, conn.ssthresh, conn._rto_due
    una, nxt = conn.snd_una, conn.snd_nxt
    assert stack.receive_icmp(icmp(conn, 3, 4, mtu=1280), 0.2) == ""
    assert conn.snd_mss == 1240
    evs = all_events(conn)
    assert any(isinstance(e, PathMtuChanged) and (e.old_mss, e.new_mss) == (1460, 1240)
               for e in evs)
    resent = stack.segments_to_send(0.2)  # the same instant: no RTO waited for
    assert resent and resent[0].seq == una
    assert all(ip_size(s) <= 1280 for s in resent)
    assert seq_add(resent[-1].seq, len(resent[-1].payload)) == nxt, "all of it, at once"
    assert conn.snd_nxt == nxt  # nothing new: the window is full of what was resent
    assert (conn.cwnd, conn.ssthresh, conn._rto_due) == (cwnd, ssthresh, rto_due)
    assert conn.state is State.ESTABLISHED
    # The peer acknowledges everything: recovery ends, cwnd grows as usual (no cut).
    conn.receive(states.from_peer(states.ACK, conn.rcv_nxt, nxt), 0.3)
    assert conn.recovery.value == "none" and conn.cwnd >= cwnd


def test_frag_needed_fills_the_cache_for_new_connections_to_that_host() -> None:
    stack, conn = sending()
    stack.receive_icmp(icmp(conn, 3, 4, mtu=1400), 5.0)
    assert stack.pmtu.lookup(REMOTE[0], 5.0) == 1400
    other = stack.connect((LOCAL[0], 40001), REMOTE, 6.0)
    drain(other, 6.0)
    other.receive(states.from_peer(states.SYN | states.ACK, states.PEER_ISN, other.iss + 1,
                                   options=states.Options(mss=1460)), 6.0)
    assert other.snd_mss == 1360
    # Expired after ten minutes: the next one starts at the full size.
    assert stack.pmtu.lookup(REMOTE[0], 5.0 + 600) is None


@pytest.mark.parametrize(("mtu", "why"), [(1, "impossible"), (67, "impossible"),
                                          (65535, "not below"), (70000, "impossible"),
                                          (1500, "not below"), (1501, "not below")])
def test_mtu_values_that_teach_nothing_change_nothing_and_are_counted(mtu: int, why: str) -> None:
    stack, conn = sending()
    assert stack.receive_icmp(icmp(conn, 3, 4, mtu=mtu), 0.2) != ""
    assert conn.snd_mss == 1460 and stack.segments_to_send(0.2) == []
    assert stack.icmp_counters["icmp_mtu_ignored"] == 1 and len(stack.pmtu) == 0
    evs = all_events(conn)
    assert len(evs) == 1 and why in evs[0].text  # type: ignore[attr-defined]


def test_mtu_zero_uses_the_rfc_1191_plateaus() -> None:
    stack, conn = sending()
    stack.receive_icmp(icmp(conn, 3, 4, mtu=0, quoted_len=1500), 0.2)
    assert conn.snd_mss == 1492 - 40
    stack.receive_icmp(icmp(conn, 3, 4, mtu=0, quoted_len=1492), 0.3)
    assert conn.snd_mss == 1006 - 40
    stack.receive_icmp(icmp(conn, 3, 4, mtu=0), 0.4)  # no quoted length: below the current
    assert conn.snd_mss == MIN_PATH_MTU - 40  # 508 is below the floor


def test_a_tiny_reported_mtu_stops_at_the_floor() -> None:
    stack, conn = sending()
    stack.receive_icmp(icmp(conn, 3, 4, mtu=296), 0.2)
    assert conn.snd_mss == MIN_PATH_MTU - 40
    assert stack.receive_icmp(icmp(conn, 3, 4, mtu=100), 0.3) != ""  # not lower: ignored


def test_pmtu_helpers() -> None:
    assert plateau_below(1500) == 1492 and plateau_below(1492) == 1006
    assert plateau_below(68) == 68
    assert next_mtu(1280, 0, 1500) == (1280, "")
    assert next_mtu(0, 1500, 1500) == (1492, "")
    assert next_mtu(1, 0, 1500)[0] is None
    cache = PathMtuCache(lifetime=10, size=2)
    cache.learn("a", 1400, 0)
    cache.learn("b", 1300, 0)
    cache.learn("c", 1200, 0)
    assert cache.lookup("a", 1) is None and cache.lookup("c", 9.9) == 1200
    assert cache.lookup("c", 10) is None


# -- two engines through a small link ------------------------------------------------------

def _upload(size: int, *, mtu: int, icmp_on: bool, config: Config = CFG,
            timeout: float = 600.0, shutdown: bool = True) -> tuple[Network, Connection, bytes]:
    """`size` bytes up from A to B through a link of `mtu` bytes; the windows are checked
    after every step (bulk.check_limits)."""
    client, server = Stack(config), Stack(config)
    net = Network({A: client, B: server}, mtu=mtu, icmp=icmp_on)
    listener = server.listen(B, 80)
    conn = client.connect(CLIENT, SERVER, 0.0)
    data = pattern(size, 9)
    got = bytearray()
    state: dict[str, Any] = {"sent": 0, "peer": None, "snd_nxt": conn.snd_nxt}
    violations: list[str] = []

    def step(_: Network) -> None:
        check_limits(conn, state["snd_nxt"], violations)
        state["snd_nxt"] = conn.snd_nxt
        if state["peer"] is None:
            state["peer"] = listener.accept()
        if conn.state is State.ESTABLISHED and state["sent"] < size:
            state["sent"] += conn.send(data[state["sent"]:])
            if state["sent"] == size and shutdown:
                conn.shutdown()
        peer = state["peer"]
        if peer is not None:
            while (e := peer.next_event()) is not None:
                if hasattr(e, "data"):
                    got.extend(e.data)
                    peer.data_consumed(len(e.data))

    net.on_step = step
    net.run(lambda: len(got) == size and conn.snd_una == conn.snd_nxt, timeout=timeout)
    assert violations == []
    return net, conn, bytes(got)


def test_two_engines_through_a_1280_link_with_icmp() -> None:
    net, conn, got = _upload(2_000_000, mtu=1280, icmp_on=True)
    assert got == pattern(2_000_000, 9)
    assert conn.snd_mss == 1240
    too_big = [d for d in net.log if d.fate == "too big"]
    assert 0 < len(too_big) <= 10  # the first flight only
    assert all(t < 1.0 for t in (d.time for d in too_big)), "no RTO was waited for"


def test_two_engines_through_a_black_hole() -> None:
    """ICMP filtered: full-size segments vanish; repeated RTOs step the MSS down."""
    net, conn, got = _upload(300_000, mtu=1280, icmp_on=False)
    assert got == pattern(300_000, 9)
    assert conn.snd_mss <= 1240
    evs = all_events(conn)
    changes = [e for e in evs if isinstance(e, PathMtuChanged)]
    assert changes and "black hole" in changes[0].reason


def test_after_a_black_hole_the_full_size_is_tried_again_later() -> None:
    net, conn, got = _upload(100_000, mtu=1280, icmp_on=False, shutdown=False)
    assert got == pattern(100_000, 9) and conn.snd_mss == 1160
    all_events(conn)
    net.mtu = None  # the path was repaired
    assert conn.path is not None and conn.path.lowered_at is not None
    net.now = conn.path.lowered_at + 599  # not yet: the next data still goes small
    conn.send(pattern(20_000, 4))
    assert net.run(lambda: conn.snd_una == conn.snd_nxt, timeout=5)
    assert conn.snd_mss == 1160
    net.now = raised_at = conn.path.lowered_at + 600
    conn.send(pattern(50_000, 4))
    assert net.run(lambda: conn.snd_una == conn.snd_nxt, timeout=5)
    assert conn.snd_mss == 1460
    assert max(len(d.segment.payload) for d in net.log if d.time >= raised_at) == 1460
    assert any(isinstance(e, PathMtuChanged) and e.new_mss == 1460 for e in all_events(conn))


def test_timeouts_after_this_size_carried_data_are_taken_for_loss() -> None:
    """Once full segments got through, two timeouts in a row are likelier plain loss: only
    a long run of them (a path that shrank mid-connection) steps the MSS down."""
    net, conn, got = _upload(100_000, mtu=1500, icmp_on=False, shutdown=False)
    assert got == pattern(100_000, 9) and conn.snd_mss == 1460
    net.drop = lambda seg: seg.src == A and len(seg.payload) > 0  # everything, for a while
    conn.send(pattern(20_000, 5))
    net.run(lambda: conn._retries >= 3, timeout=60)
    assert conn.snd_mss == 1460  # three timeouts: still taken for loss
    net.drop = lambda seg: seg.src == A and len(seg.payload) > 1160  # now it shrank
    assert net.run(lambda: conn.snd_una == conn.snd_nxt, timeout=600)
    assert conn.snd_mss == 1160
    changes = [e for e in all_events(conn) if isinstance(e, PathMtuChanged)]
    assert [c.reason for c in changes] == ["black hole? 6 timeouts of full segments"]
