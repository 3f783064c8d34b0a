"""Connections built into each RFC 9293 state, named after the state (smoltcp style).

The local side is 10.0.0.1:40000, the peer 10.0.0.2:80 with ISN PEER_ISN. Timestamps
and delayed ACKs are off so that every answer is immediate and easy to read.
"""

from __future__ import annotations

from tcpscapy.core import ACK, FIN, NO_OPTIONS, RST, SYN, Config, Options, Segment
from tcpscapy.core.connection import Connection
from tcpscapy.core.seq import seq_add

LOCAL = ("10.0.0.1", 40000)
REMOTE = ("10.0.0.2", 80)
PEER_ISN = 0xFFFF_FF00  # near the wrap, so every table also crosses 2**32
PEER_WINDOW = 8192
CONFIG = Config(timestamps=False, delayed_ack=0.0, secret=b"fixed-test-secret")


def from_peer(flags: int, seq: int, ack: int = 0, payload: bytes = b"", *,
              window: int = PEER_WINDOW, options: Options = NO_OPTIONS) -> Segment:
    return Segment(REMOTE[0], LOCAL[0], REMOTE[1], LOCAL[1], seq & 0xFFFFFFFF,
                   ack & 0xFFFFFFFF if flags & ACK else 0, flags, window, options, payload)


def drain(conn: Connection, now: float = 0.0) -> list[Segment]:
    return conn.segments_to_send(now)


def new(config: Config = CONFIG) -> Connection:
    return Connection(LOCAL, REMOTE, config)


def syn_sent(config: Config = CONFIG) -> Connection:
    conn = new(config)
    conn.connect(0.0)
    drain(conn)
    return conn


def syn_received(config: Config = CONFIG) -> Connection:
    conn = new(config)
    conn.accept_syn(from_peer(SYN, PEER_ISN, options=Options(mss=1460)), 0.0)
    drain(conn)
    return conn


def established(config: Config = CONFIG) -> Connection:
    conn = syn_sent(config)
    conn.receive(from_peer(SYN | ACK, PEER_ISN, conn.iss + 1, options=Options(mss=1460)), 0.0)
    drain(conn)
    return conn


def fin_wait_1() -> Connection:
    conn = established()
    conn.shutdown()
    drain(conn)
    return conn


def fin_wait_2() -> Connection:
    conn = fin_wait_1()
    conn.receive(from_peer(ACK, conn.rcv_nxt, conn.snd_nxt), 0.0)
    drain(conn)
    return conn


def closing() -> Connection:
    conn = fin_wait_1()
    conn.receive(from_peer(FIN | ACK, conn.rcv_nxt, conn.snd_una), 0.0)  # not acking our FIN
    drain(conn)
    return conn


def time_wait() -> Connection:
    conn = fin_wait_2()
    conn.receive(from_peer(FIN | ACK, conn.rcv_nxt, conn.snd_nxt), 0.0)
    drain(conn)
    return conn


def close_wait() -> Connection:
    conn = established()
    conn.receive(from_peer(FIN | ACK, conn.rcv_nxt, conn.snd_nxt), 0.0)
    drain(conn)
    return conn


def last_ack() -> Connection:
    conn = close_wait()
    conn.shutdown()
    drain(conn)
    return conn


def closed_by_reset() -> Connection:
    conn = established()
    conn.receive(from_peer(RST, conn.rcv_nxt), 0.0)
    drain(conn)
    return conn


__all__ = ["ACK", "CONFIG", "FIN", "LOCAL", "PEER_ISN", "REMOTE", "RST", "SYN", "seq_add"]
