"""How a Trace stores its rows: the newest `maxlen` across chunk boundaries, segments
packed for idle connections that read back equal, the memory that saves, and readers
on another thread while the driver's thread records."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpscapy import trace as trace_module
from tcpscapy.api import Connection, _HookedTrace
from tcpscapy.core.options import NO_OPTIONS, Options
from tcpscapy.core.segment import ACK, FIN, SYN, Segment
from tcpscapy.core.state import State
from tcpscapy.trace import Trace, TraceEntry

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"


def ack(i: int, payload: bytes = b"") -> Segment:
    return Segment(CLIENT, SERVER, 40000, 80, i, 7, ACK, 502, payload=payload)


def record_mixed(trace: Trace, i: int) -> TraceEntry:
    """Record row i, one of every kind in turn, and return the entry it should read as."""
    t = float(i)
    kind = i % 5
    if kind == 0:
        trace.record_segment(t, "out", ack(i))
        return TraceEntry(t, "out", ack(i))
    if kind == 1:
        trace.record_segment(t, "in", ack(i))
        return TraceEntry(t, "in", ack(i))
    if kind == 2:
        trace.record_state(t, State.FIN_WAIT_1, State.FIN_WAIT_2)
        return TraceEntry(t, "out", None, (State.FIN_WAIT_1, State.FIN_WAIT_2))
    if kind == 3:
        trace.record_segment(t, "in", None, note="bad checksum")
        return TraceEntry(t, "in", None, note="bad checksum")
    trace.record_state(t, State.LISTEN, State.SYN_RECEIVED, side="peer", note=f"n{i}")
    return TraceEntry(t, "in", None, (State.LISTEN, State.SYN_RECEIVED), f"n{i}")


@pytest.mark.parametrize("maxlen", [0, 1, 3, 16, 17, 40, 1000])
def test_the_newest_rows_are_kept_across_chunk_boundaries(maxlen: int) -> None:
    trace = Trace(maxlen=maxlen)
    recorded: list[TraceEntry] = []
    total = 5 * maxlen + 150  # several chunks' worth past the limit
    every = max(maxlen // 10, 1) + 6
    for i in range(total):
        recorded.append(record_mixed(trace, i))
        if i % every and i != total - 1:
            continue
        kept = recorded[max(len(recorded) - maxlen, 0):] if maxlen else []
        assert list(trace) == kept
        assert len(trace) == len(kept)
        assert trace[1:4] == kept[1:4] and trace[::-3] == kept[::-3]
        assert trace.segments("in") == [e.segment for e in kept
                                         if e.segment is not None and e.direction == "in"]
        if kept:
            assert trace[0] == kept[0] and trace[-1] == kept[-1]
            assert trace[len(kept) // 2] == kept[len(kept) // 2]
            assert trace[-len(kept)] == kept[0]
        with pytest.raises(IndexError):
            trace[len(kept)]
        with pytest.raises(IndexError):
            trace[-len(kept) - 1]


def test_rows_past_the_limit_free_their_memory() -> None:
    trace = Trace(maxlen=1000)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            trace.record_segment(float(i), "out", ack(i, bytes(1000)))  # ~1.2 KB a row
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert [e.segment.seq for e in trace[:2] if e.segment] == [19_000, 19_001]
    # 1,000 rows plus at most two chunks of 62; keeping everything would be ~24 MB.
    assert held < 1500 * 1200, held


def test_maxlen_is_checked_and_none_keeps_everything() -> None:
    with pytest.raises(ValueError, match="maxlen"):
        Trace(maxlen=-1)
    trace = Trace()
    for i in range(5000):
        trace.record_segment(float(i), "in", ack(i))
    assert len(trace) == 5000 and trace[0].time == 0.0


def test_an_entry_with_a_segment_and_a_state_change_reads_back() -> None:
    both = TraceEntry(1.0, "out", ack(1), (State.CLOSED, State.SYN_SENT), "odd")
    plain_in = TraceEntry(2.0, "in", ack(2))
    trace = Trace([both, plain_in, TraceEntry(3.0, "out", None)])
    assert list(trace) == [both, plain_in, TraceEntry(3.0, "out", None)]
    assert Trace(trace, maxlen=2)[:] == [plain_in, TraceEntry(3.0, "out", None)]


# -- packing ----------------------------------------------------------------------------


def server_handshake(i: int) -> tuple[Trace, list[TraceEntry]]:
    """A listener's connection as the driver records it, idle once established (the
    numbers are computed, so each segment has its own int objects, as decoded ones do)."""
    port = 1024 + i
    syn = Segment(CLIENT, SERVER, port, 80, 1000 + i, 0, SYN, 64240, Options(
        mss=1460, sack_permitted=True, timestamps=(5000 + i, 0), wscale=7))
    synack = Segment(SERVER, CLIENT, 80, port, 3_000_000_000 + i, 1001 + i, SYN | ACK, 65160,
                     Options(mss=1460, sack_permitted=True, timestamps=(9000, 5000 + i),
                             wscale=7))
    last = Segment(CLIENT, SERVER, port, 80, 1001 + i, 3_000_000_001 + i, ACK, 502,
                   Options(timestamps=(5001 + i, 9000)))
    trace = Trace(maxlen=20_000, time_offset=0.5)
    t = 100.0 + i
    trace.record_segment(t, "in", syn)
    trace.record_state(t, State.CLOSED, State.SYN_RECEIVED)
    trace.record_segment(t, "out", synack)
    trace.record_segment(t + 0.001, "in", last)
    before = list(trace)  # the Segments themselves: nothing is packed before ESTABLISHED
    assert packed_rows(trace) == 0
    trace.record_state(t + 0.001, State.SYN_RECEIVED, State.ESTABLISHED)
    return trace, [*before, TraceEntry(t + 0.001, "out", None,
                                       (State.SYN_RECEIVED, State.ESTABLISHED))]


def packed_rows(trace: Trace) -> int:
    return sum(type(slot) is bytes for slot in trace._slots())


def test_idle_handshakes_are_packed_and_read_back_the_same() -> None:
    made = [server_handshake(i) for i in range(5)]
    moved_on, _ = server_handshake(99)
    moved_on.record_segment(200.0, "out", Segment(SERVER, CLIENT, 80, 1123, 1, 2, FIN | ACK, 9))
    moved_on.record_state(200.0, State.ESTABLISHED, State.FIN_WAIT_1)
    for trace, before in made:
        assert packed_rows(trace) == 3
        after = list(trace)
        assert after == before
        for old, new in zip(before, after, strict=True):
            if old.segment is not None:
                assert new.segment is not None
                assert [type(v) for v in new.segment] == [type(v) for v in old.segment]
                assert [type(v) for v in new.segment.options] == \
                    [type(v) for v in old.segment.options]
        assert trace.segments("in") == [before[0].segment, before[3].segment]
        assert list(trace.to_json_lines()) == list(Trace(before, time_offset=0.5).to_json_lines())
        assert trace.ladder() == Trace(before).ladder()
    assert packed_rows(moved_on) == 3  # its handshake; the FIN after it stays a Segment


def test_an_idle_connection_s_trace_is_small() -> None:
    """About 0.5 KB a connection (2.5 KB when rows were tuples in a deque: the empty
    deque alone took 760 bytes)."""
    n = 400
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        traces = [server_handshake(i)[0] for i in range(n)]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        empty_base = tracemalloc.get_traced_memory()[0]
        empties = [Trace(maxlen=20_000, time_offset=float(i)) for i in range(n)]
        empty = tracemalloc.get_traced_memory()[0] - empty_base
    finally:
        tracemalloc.stop()
    assert len(traces) == len(empties) == n
    assert held / n < 1000, held / n
    assert empty / n < 250, empty / n


def test_packing_leaves_a_trace_alone_when_it_cannot_be_exact() -> None:
    sack = Segment(CLIENT, SERVER, 1, 80, 5, 6, ACK, 9, Options(sack_blocks=((1, 2),)))
    odd_addr = Segment("10.0.0.01", SERVER, 1, 80, 5, 6, ACK, 9)
    flag_bool = Segment(CLIENT, SERVER, 1, 80, 5, 6, True, 9)  # type: ignore[arg-type]
    trace = Trace()
    for i, seg in enumerate((sack, odd_addr, flag_bool)):
        trace.record_segment(float(i), "in" if i % 2 else "out", seg)
    trace.record_state(5.0, State.SYN_RECEIVED, State.ESTABLISHED)
    assert packed_rows(trace) == 0
    assert trace.segments() == [sack, odd_addr, flag_bool]
    assert trace.segments()[2].flags is True


addresses = st.sampled_from([CLIENT, SERVER, "192.168.255.254", "0.0.0.0", "010.0.0.1",
                             "::1", "host"])
maybe_int = st.one_of(st.none(), st.integers(-1, 70_000))
options = st.one_of(st.just(NO_OPTIONS), st.builds(
    Options, mss=maybe_int, wscale=st.one_of(st.none(), st.integers(-1, 300)),
    sack_permitted=st.booleans(),
    timestamps=st.one_of(st.none(), st.tuples(st.integers(0, 2**32), st.integers(-1, 2**32 - 1))),
    sack_blocks=st.one_of(st.just(()), st.just(((1, 2),))),
    tfo_cookie=st.one_of(st.none(), st.just(b""), st.just(b"12345678")),
    malformed=st.booleans()))


@given(src=addresses, dst=addresses, sport=st.integers(-1, 70_000),
       seq=st.integers(-1, 2**32), ack_no=st.integers(0, 2**32), flags=st.integers(0, 0x1FF),
       window=st.integers(0, 70_000), opts=options, payload=st.binary(max_size=40),
       urgent=st.integers(0, 70_000))
def test_a_packed_segment_is_the_segment(src: str, dst: str, sport: int, seq: int,
                                          ack_no: int, flags: int, window: int, opts: Options,
                                          payload: bytes, urgent: int) -> None:
    seg = Segment(src, dst, sport, 80, seq, ack_no, flags, window, opts, payload, urgent)
    packed = trace_module._pack(seg)
    if packed is None:
        return  # it stays a Segment
    back = trace_module._unpack(packed)
    assert back == seg
    assert [type(v) for v in back] == [type(v) for v in seg]
    assert len(packed) <= trace_module._PACKED_SIZE + len(payload)


def test_packing_covers_the_handshake_options() -> None:
    """A field added to Segment or Options would make _pack give up, silently
    costing ~1 KB an idle connection: fail here instead."""
    for seg in (server_handshake(0)[1][0].segment, ack(5)):
        packed = trace_module._pack(seg)
        assert packed is not None and trace_module._unpack(packed) == seg


# -- threads and hooks ------------------------------------------------------------------


def test_a_reader_on_another_thread_sees_whole_consecutive_rows() -> None:
    trace = Trace(maxlen=300)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(60_000):
                trace.record_segment(float(i), "out" if i % 2 else "in", ack(i))
        finally:
            done.set()

    def check(read: Callable[[], list[TraceEntry]]) -> None:
        entries = read()
        times = [e.time for e in entries]
        assert times == [times[0] + k for k in range(len(times))] if times else True
        assert len(times) <= 300
        assert all(e.segment is not None and e.segment.seq == e.time for e in entries)
        assert all(e.direction == ("out" if int(e.time) % 2 else "in") for e in entries)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        looks = 0
        while not done.is_set() and looks < 20_000:
            check(lambda: list(trace))
            check(lambda: trace[:])
            looks += 1
    except BaseException as exc:  # reported after the writer stops
        errors.append(exc)
    writer.join(timeout=30)
    assert not errors, errors
    assert looks > 0
    check(lambda: list(trace))
    assert len(trace) == 300


def test_a_hook_sees_state_changes_even_when_nothing_is_kept() -> None:
    seen: list[TraceEntry] = []
    hooked = _HookedTrace(Trace(), seen.append, 0)
    hooked.record_state(1.0, State.CLOSED, State.SYN_SENT)
    hooked.record_segment(1.0, "out", ack(1))
    hooked.record_state(2.0, State.SYN_SENT, State.ESTABLISHED, note="x")
    assert len(hooked) == 0 and hooked.hook_error is None
    assert seen == [TraceEntry(1.0, "out", None, (State.CLOSED, State.SYN_SENT)),
                    TraceEntry(1.0, "out", ack(1)),
                    TraceEntry(2.0, "out", None, (State.SYN_SENT, State.ESTABLISHED), "x")]


def test_api_connections_carry_no_instance_dict() -> None:
    conn = Connection.__new__(Connection)
    assert not hasattr(conn, "__dict__")  # ~100 bytes an idle connection
    with pytest.raises(AttributeError):
        conn.anything_else = 1  # type: ignore[attr-defined]


def test_the_bench_figure_for_the_trace_alone() -> None:
    from tcpscapy.bench import memory

    per_conn = memory.trace_bytes_per_connection(120)
    assert 100 < per_conn < 1000, per_conn  # ~2,200 bytes with rows as tuples in a deque
