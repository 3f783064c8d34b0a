"""Memory per idle established connection: the pure engine, and the driver on the wire.

- Engine: a server Stack accepts N connections from a client Stack (segments
  handed over directly, no network model that would keep them); the client
  side is then dropped and what the server still holds, counted by tracemalloc,
  is divided by N. This is the core's own cost: Connection, its buffers, the
  Stack's tables, the accepted list an application keeps.
- Driver: a tcpscapy listener process in the lab's server host keeps every
  connection it accepts; kernel clients in the client host open N of them and
  stay idle. The listener's VmRSS growth over the N (after a warm-up of
  WARMUP connections) divided by N: engine, Endpoint, trace, everything; once
  more with trace_limit=0, to show what the per-connection trace costs.
- Trace: the server side of N handshakes recorded as the driver records them
  (received segments decoded from their wire bytes, sent ones as the engine
  made them, state changes); what deleting the traces gives back, counted by
  tracemalloc, / N. A trace packs an idle handshake once 32 more connections
  have been established (tcpscapy.trace); the last 32 wait in its queue, which
  keeps their rows: a constant, not counted.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

from tcpscapy.bench.peers import Peer
from tcpscapy.bench.wire import Figure, Wire
from tcpscapy.core import Config
from tcpscapy.core import events as ev
from tcpscapy.core.connection import Connection
from tcpscapy.core.stack import Stack
from tcpscapy.io import codec
from tcpscapy.io.driver import TRACE_LIMIT
from tcpscapy.trace import Trace

CONFIG = Config(secret=b"bench-memory")
CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
PORT = 80
WARMUP = 200  # connections held before the driver's baseline is read
SETTLE = 30.0  # seconds the listener may take to accept what the clients opened

ENGINE_1K = "memory: engine, per idle connection at 1,000"
ENGINE_10K = "memory: engine, per idle connection at 10,000"
DRIVER_1K = "memory: driver (listener RSS), per idle connection at 1,000"
DRIVER_10K = "memory: driver (listener RSS), per idle connection at 10,000"
DRIVER_NO_TRACE_10K = "memory: driver with trace_limit=0, per idle connection at 10,000"
TRACE_1K = "memory: trace alone, per idle connection at 1,000"
DETERMINISTIC = {ENGINE_1K, ENGINE_10K, TRACE_1K}  # the same bytes every run: measured once


def _exchange(a: Stack, b: Stack, now: float) -> None:
    """Hand segments back and forth until neither stack has any to send."""
    while True:
        out_a, out_b = a.segments_to_send(now), b.segments_to_send(now)
        if not out_a and not out_b:
            return
        for seg in out_a:
            b.receive(seg, now)
        for seg in out_b:
            a.receive(seg, now)


def _drain(conn: Connection) -> None:
    while conn.next_event() is not None:
        pass


def engine_bytes_per_connection(n: int) -> float:
    """Bytes the server stack holds per idle established connection, n connections."""
    gc.collect()
    tracemalloc.start()
    try:
        server = Stack(CONFIG)
        listener = server.listen(SERVER, PORT, backlog=n + 1)
        base = tracemalloc.get_traced_memory()[0]
        client = Stack(CONFIG)
        accepted: list[Connection] = []
        now = 1.0
        for i in range(n):
            local = (CLIENT, 1024 + i % 60000)
            if i >= 60000:
                raise ValueError("at most 60,000 connections from one client address")
            conn = client.connect(local, (SERVER, PORT), now)
            _exchange(client, server, now)
            _drain(conn)
            peer = listener.accept()
            if peer is None:
                raise RuntimeError(f"connection {i} was not established")
            _drain(peer)
            accepted.append(peer)
        del client, conn
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    if len(server.connections) != n:
        raise RuntimeError(f"the server holds {len(server.connections)} connections, not {n}")
    return held / n


def trace_bytes_per_connection(n: int) -> float:
    """Bytes the traces of n idle server connections hold (see the module docstring)."""
    server, client = Stack(CONFIG), Stack(CONFIG)
    server.listen(SERVER, PORT, backlog=n + 1)
    traces: dict[tuple[str, int, str, int], Trace] = {}
    now = 1.0
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(n):
            client.connect((CLIENT, 1024 + i), (SERVER, PORT), now)
            while sent := client.segments_to_send(now):
                for seg in sent:
                    wire = codec.decode(codec.encode(seg))  # fresh objects, as received
                    assert wire is not None
                    server.receive(wire, now)
                    key = (wire.dst, wire.dport, wire.src, wire.sport)
                    trace = traces.get(key) or traces.setdefault(key, Trace(maxlen=TRACE_LIMIT))
                    trace.record_segment(now, "in", wire)
                    conn = server.connection((wire.dst, wire.dport), (wire.src, wire.sport))
                    while conn is not None and (event := conn.next_event()) is not None:
                        if type(event) is ev.StateChanged:
                            trace.record_state(now, event.old, event.new)
                for seg in server.segments_to_send(now):
                    traces[(seg.src, seg.sport, seg.dst, seg.dport)].record_segment(now, "out", seg)
                    client.receive(seg, now)
            now += 0.001
        kept = list(traces.values())
        del traces
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        del kept
        gc.collect()
        held -= tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return held / n


def driver_bytes_per_connection(wire: Wire, n: int, trace_limit: int | None = None) -> float:
    """VmRSS growth of a tcpscapy listener process per idle connection from kernel clients
    (its connections keep `trace_limit` trace entries; None: the library's default)."""
    holder = wire.holder(trace_limit)
    port = int(holder.ready["port"])
    client = wire.client
    try:
        client.ask(op="hold", host=wire.server_addr, port=port, count=WARMUP)
        before = _settled(holder, WARMUP)
        client.ask(op="hold", host=wire.server_addr, port=port, count=n)
        after = _settled(holder, WARMUP + n)
    finally:
        client.ask(op="release")
        holder.stop()
    return (after - before) * 1024 / n


def _settled(holder: Peer, want: int) -> int:
    """The holder's VmRSS (KB) once it has accepted `want` connections."""
    deadline = time.monotonic() + SETTLE
    while True:
        answer = holder.ask()
        if answer["held"] >= want:
            return int(answer["rss_kb"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the listener accepted {answer['held']} of {want} connections")
        time.sleep(0.05)


def figures(wire: Wire, *, quick: bool = False) -> list[Figure]:
    figs: list[Figure] = [
        (ENGINE_1K, "bytes", lambda: engine_bytes_per_connection(1000)),
        (TRACE_1K, "bytes", lambda: trace_bytes_per_connection(1000)),
        (DRIVER_1K, "bytes", lambda: driver_bytes_per_connection(wire, 1000)),
    ]
    if not quick:
        figs[1:1] = [(ENGINE_10K, "bytes", lambda: engine_bytes_per_connection(10_000))]
        figs.append((DRIVER_10K, "bytes", lambda: driver_bytes_per_connection(wire, 10_000)))
        figs.append((DRIVER_NO_TRACE_10K, "bytes",
                     lambda: driver_bytes_per_connection(wire, 10_000, trace_limit=0)))
    return figs
