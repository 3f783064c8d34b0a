"""Bulk transfer in both directions at once between two in-memory engines.

Used by the tests (byte-exact delivery under impairments, window limits checked
at every step) and by the benchmark (engine throughput per CPU second).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from tcpscapy.core import (
    Config,
    DataReceived,
    PeerClosed,
    State,
)
from tcpscapy.core.connection import Connection
from tcpscapy.core.seq import seq_diff
from tcpscapy.core.stack import Stack
from tcpscapy.sim import Impairment, Network

A, B = "10.0.0.1", "10.0.0.2"


@functools.lru_cache(maxsize=8)
def pattern(size: int, seed: int) -> bytes:
    """Deterministic, non-repeating-looking data (so misplaced bytes are caught)."""
    out = bytearray()
    block = seed.to_bytes(8, "big")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


@dataclass
class Side:
    conn: Connection
    outgoing: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    peer_closed: bool = False
    read_limit: int | None = None  # bytes the app reads per step (None: everything)
    unread: int = 0
    checked_nxt: int | None = None  # SND.NXT at the previous check

    def pump(self) -> None:
        conn = self.conn
        while self.sent < len(self.outgoing) and conn.state.can_send:
            taken = conn.send(self.outgoing[self.sent : self.sent + 65536])
            self.sent += taken
            if not taken:
                break
        if self.sent == len(self.outgoing) and conn.state in (State.ESTABLISHED,
                                                              State.CLOSE_WAIT):
            conn.shutdown()
        while (event := conn.next_event()) is not None:
            if isinstance(event, DataReceived):
                self.received += event.data
                self.unread += len(event.data)
            elif isinstance(event, PeerClosed):
                self.peer_closed = True
        take = self.unread if self.read_limit is None else min(self.unread, self.read_limit)
        if take:
            conn.data_consumed(take)
            self.unread -= take


@dataclass
class Result:
    ok: bool
    net: Network
    client: Side
    server: Side
    violations: list[str]


def run_transfer(size_up: int, size_down: int, *, impairment: Impairment | None = None,
                 config: Config | None = None, timeout: float = 10.0**7,
                 read_limit: int | None = None, check: bool = True) -> Result:
    cfg = config or Config(secret=b"transfer-tests")
    client_stack, server_stack = Stack(cfg), Stack(cfg)
    net = Network({A: client_stack, B: server_stack}, impairment=impairment or Impairment())
    listener = server_stack.listen(B, 80)
    client = Side(client_stack.connect((A, 40000), (B, 80), 0.0), pattern(size_up, 1))
    sides = [client]
    violations: list[str] = []

    def step(_: Network) -> None:
        if len(sides) == 1 and (accepted := listener.accept()) is not None:
            sides.append(Side(accepted, pattern(size_down, 2), read_limit=read_limit))
        for side in sides:
            # Segments go out in the network's emit, just before this step: compare with
            # the previous step so a check sees each send against the windows of its time.
            before = side.checked_nxt if side.checked_nxt is not None else side.conn.snd_nxt
            side.pump()
            if check:
                check_limits(side.conn, before, violations)
            side.checked_nxt = side.conn.snd_nxt

    net.on_step = step

    def done() -> bool:
        return len(sides) == 2 and all(s.peer_closed and s.sent == len(s.outgoing)
                                       for s in sides) and \
            all(s.conn.snd_una == s.conn.snd_nxt for s in sides)

    ok = net.run(done, timeout=timeout)
    server = sides[1] if len(sides) == 2 else Side(client.conn, b"")
    return Result(ok, net, client, server, violations)


def check_limits(conn: Connection, snd_nxt_before: int, violations: list[str]) -> None:
    """Never more than min(cwnd, rwnd) in flight: checked after every step that sent.

    Only then: a reordered older segment of the peer may move the window's right edge
    back (RFC 9293's SND.WL1 rule takes its window), which is no sender's fault.
    """
    if not conn.state.synchronized or conn.state is State.TIME_WAIT:
        return
    outstanding = seq_diff(conn.snd_nxt, conn.snd_una)
    fin = 1 if conn._fin_seq is not None and conn.snd_nxt != conn._fin_seq else 0
    if conn.snd_nxt != snd_nxt_before and outstanding - fin > conn.snd_wnd and outstanding > 1:
        violations.append(f"outstanding {outstanding} > peer window {conn.snd_wnd}")
    # Beyond cwnd by at most two segments: the forced fast retransmit (RFC 6675) and a
    # tail loss probe (RFC 8985 §7.3), which both go out whatever the window says.
    if conn.snd_nxt != snd_nxt_before and conn.pipe() > conn.cwnd + 2 * conn.snd_mss:
        violations.append(f"pipe {conn.pipe()} > cwnd {conn.cwnd} + two segments")
