"""Attacks from the lab's attacker host, and what an attacker could learn.

- Blind injection (RFC 5961): the attacker spoofs the kernel server's address and
  port at an established tcpscapy.connect, with sequence numbers inside the
  receive window but not exactly RCV.NXT: RSTs and SYNs get challenge ACKs
  (throttled to the configured limit per second), data with an unacceptable ACK
  gets an ACK and is dropped; the connection survives and then echoes 100 KB
  intact. The control: an RST at exactly RCV.NXT does reset it.
- ISNs (RFC 6528): 100 successive SYNs of one 4-tuple advance with the 4 µs
  clock; 100 SYNs from consecutive source ports carry keyed-hash offsets that
  look uniformly random (distinct, no constant step, balanced bits); a new
  process (driver) gets a new secret and new offsets.
- Secrets: `tcpscapy connect`'s secret comes from os.urandom and neither it nor
  any key derived from it appears in its --json, ladder or pcap output.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpscapy
from tcpscapy import errors
from tcpscapy.core.config import Config
from tcpscapy.core.isn import initial_sequence_number
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, PSH, RST, SYN, Segment
from tcpscapy.core.syncookies import derive_keys
from tcpscapy.core.tfo import derive_key as tfo_key
from tcpscapy.io import codec
from tcpscapy.io.driver import close_all
from tcpscapy.io.rawsock import Link, open_link
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    CLIENT,
    SERVER,
    assert_clean,
    kernel_server,
    recv_exactly,
    tcp_counters,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsm"
MASK = 0xFFFF_FFFF
TICKS = 250_000  # ISN clock: one tick per 4 µs


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    try:
        yield lab
    finally:
        close_all(linger=0.5)
    assert_clean(lab)


class Spoofer:
    """The attacker host, sending segments that claim to come from someone else."""

    def __init__(self, lab: Lab, target: str) -> None:
        with lab.enter("attacker"):
            self.link: Link = open_link(target)

    def send(self, seg: Segment) -> None:
        self.link.send(codec.encode(seg))


def answer_to(conn: tcpscapy.Connection, injected: Segment, wait: float = 3.0) -> Segment | None:
    """What the connection sent right after it received `injected` (None: nothing yet)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with conn.driver.lock:
            entries = list(conn.trace)
        at = next((i for i, e in enumerate(entries)
                   if e.direction == "in" and e.segment == injected), None)
        if at is not None:
            after = [e.segment for e in entries[at + 1:] if e.direction == "out" and e.segment]
            if after:
                return after[0]
        time.sleep(0.01)
    return None


# -- blind injection --------------------------------------------------------------------


def test_blind_in_window_injection_gets_challenge_acks_and_the_connection_survives(
        net: Lab) -> None:
    port = kernel_server(net, "echo")
    resets = tcp_counters(net, "server")["EstabResets"]
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=10)
    conn.sendall(b"hello")
    assert recv_exactly(conn, 5) == b"hello"
    engine = conn.engine
    rcv_nxt, snd_nxt, snd_una = engine.rcv_nxt, engine.snd_nxt, engine.snd_una
    rng = random.Random(5961)

    def spoofed(seq: int, flags: int, ack: int = 0, payload: bytes = b"") -> Segment:
        return Segment(SERVER, CLIENT, port, conn.local[1], seq & MASK, ack & MASK, flags,
                       8192, payload=payload)

    def in_window() -> int:  # a guess that lands in the window but is not RCV.NXT
        return rcv_nxt + rng.randrange(1, 60_000)

    attacks = [
        *(spoofed(in_window(), RST) for _ in range(3)),
        *(spoofed(in_window(), RST | ACK, rng.getrandbits(32)) for _ in range(2)),
        *(spoofed(in_window(), SYN) for _ in range(3)),
        spoofed(rng.getrandbits(32), SYN),  # anywhere: a SYN is challenged wherever it lands
        # Data in the window (even at RCV.NXT) whose ACK is unacceptable (RFC 5961 §5.2).
        *(spoofed(seq, PSH | ACK, snd_nxt + rng.randrange(1, 1 << 30), b"FORGED" * 50)
          for seq in (rcv_nxt, in_window(), in_window())),
        spoofed(in_window(), PSH | ACK, snd_una - (1 << 20) - rng.randrange(1 << 20), b"OLD"),
    ]
    spoofer = Spoofer(net, CLIENT)
    with spoofer.link:
        for seg in attacks:
            spoofer.send(seg)
            answer = answer_to(conn, seg)
            assert answer is not None, f"no answer to {seg}"
            # A challenge ACK: nothing but our current SND.NXT and RCV.NXT, to the real peer.
            assert (answer.flags, answer.seq, answer.ack) == (ACK, snd_nxt, rcv_nxt), seg
            assert not answer.payload and answer.dst == SERVER

        # A flood of in-window RSTs: challenge ACKs stay under the limit per second.
        start = len(conn.trace)
        flood = [spoofed(in_window(), RST) for _ in range(2500)]
        began = time.monotonic()
        for seg in flood:
            spoofer.send(seg)
        took = time.monotonic() - began
        time.sleep(0.3)
        with conn.driver.lock:
            late = list(conn.trace)[start:]
        got = sum(1 for e in late if e.direction == "in" and e.segment in flood)
        acks = sum(1 for e in late if e.direction == "out" and e.segment
                   and e.segment.flags == ACK and e.segment.ack == rcv_nxt)
        limit = engine.config.challenge_ack_limit * (int(took) + 2)  # seconds touched
        assert got > 2000 and 0 < acks <= limit, (got, acks, took)
        print(f"\n  {len(flood)} in-window RSTs in {took:.2f} s: {got} read, "
              f"{acks} challenge ACKs (limit {engine.config.challenge_ack_limit}/s)")

        assert str(conn.state) == "ESTABLISHED"
        assert (engine.rcv_nxt, engine.snd_nxt) == (rcv_nxt, snd_nxt)  # nothing forged taken
        data = os.urandom(100_000)
        conn.sendall(data)
        assert recv_exactly(conn, len(data)) == data
        assert tcp_counters(net, "server")["EstabResets"] == resets

        # The control: the exact sequence number does reset it, so the spoofing reached it.
        spoofer.send(spoofed(engine.rcv_nxt, RST))
        with pytest.raises(errors.ConnectionReset):
            conn.recv(timeout=5)


def test_a_forged_tsval_with_an_unacceptable_ack_does_not_poison_paws(net: Lab) -> None:
    """RFC 5961 §5 drops in-window data with a bad ACK; TS.Recent must not be taken from it
    (Linux fixed the same in 2013, "tcp_replace_ts_recent() should not be called from
    tcp_validate_incoming()"), or every genuine segment would then look older than TS.Recent
    and PAWS would drop it: the connection could no longer receive."""
    port = kernel_server(net, "echo")
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=10)
    conn.sendall(b"hello")
    assert recv_exactly(conn, 5) == b"hello"
    time.sleep(0.3)  # our delayed ACK has gone out: RCV.NXT is Last.ACK.sent
    engine = conn.engine
    before = engine.ts_recent
    forged = Segment(SERVER, CLIENT, port, conn.local[1], engine.rcv_nxt,
                     (engine.snd_nxt + (1 << 30)) & MASK, PSH | ACK, 8192,
                     Options(timestamps=((before + (1 << 30)) & MASK, 0)), b"X")
    spoofer = Spoofer(net, CLIENT)
    with spoofer.link:
        spoofer.send(forged)
        assert answer_to(conn, forged) is not None  # it arrived and was answered (an ACK)
    conn.sendall(b"again")
    assert conn.recv(timeout=3) == b"again"
    assert engine.ts_recent != (before + (1 << 30)) & MASK


# -- initial sequence numbers -------------------------------------------------------------


def syn_of_refused_connect(port: int, sport: int) -> tuple[int, float]:
    """(ISN, time) of the SYN of a connect to a closed port (the kernel refuses it)."""
    with pytest.raises(errors.ConnectionRefused) as info:
        tcpscapy.connect(SERVER, port, sport=sport, timeout=5)
    entry = next(e for e in info.value.trace  # type: ignore[attr-defined]
                 if e.direction == "out" and e.segment is not None)
    assert entry.segment.flags == SYN
    return entry.segment.seq, entry.time


def ones(values: list[int], bit: int) -> int:
    return sum(v >> bit & 1 for v in values)


def test_isns_follow_the_clock_per_tuple_and_look_random_across_tuples(net: Lab) -> None:
    closed = 9  # nothing listens there: every SYN is answered with RST at once
    base = random.randrange(20000, 50000)
    with net.enter("client"):
        same = [syn_of_refused_connect(closed, base) for _ in range(100)]
        across = [syn_of_refused_connect(closed, base + 1 + i) for i in range(100)]
        close_all(linger=0)
        restarted = [syn_of_refused_connect(closed, base + 1 + i) for i in range(20)]

    # One 4-tuple: each ISN is the previous plus the 4 µs clock ticks in between.
    for (isn0, t0), (isn1, t1) in itertools.pairwise(same):
        step = (isn1 - isn0) & MASK
        expected = (t1 - t0) * TICKS
        assert 0 < step < 1 << 31, "the ISN of a 4-tuple must keep increasing"
        # The trace stamps the SYN when it is sent, a moment after the engine read its
        # clock for the ISN; a loaded machine stretches that moment to tens of ms (32 ms
        # seen with a CPU hog and a load of 20 on 2 cores). 250 ms is still 50,000 ticks
        # against the ~2**31 of an ISN that did not follow the clock.
        assert abs(step - expected) < 0.25 * TICKS, (step, expected)

    # Different 4-tuples: take the clock out and what is left is the keyed hash.
    def offsets(samples: list[tuple[int, float]]) -> list[int]:
        return [(isn - int(t * TICKS)) & MASK for isn, t in samples]

    keyed = offsets(across)
    assert len(set(keyed)) == len(keyed) and len({isn for isn, _ in across}) == len(across)
    steps = [(b - a) & MASK for a, b in itertools.pairwise(keyed)]
    assert len(set(steps)) == len(steps), "consecutive ports must not differ by a fixed step"
    for bit in (0, 1, 2, 3, 7, 15, 23, 31):  # low bits too: each about half the time
        assert 25 <= ones(keyed, bit) <= 75, (bit, ones(keyed, bit))
    buckets = {k >> 28 for k in keyed}  # top 4 bits: 100 uniform draws fill ~16 of 16
    assert len(buckets) >= 12, buckets
    # A new driver (a new process) draws a new secret: the same ports get new offsets,
    # not the old ones shifted a little (a uniform difference is that small 1 time in 128).
    moved = [(a - b) & MASK for a, b in zip(keyed[:20], offsets(restarted), strict=True)]
    assert sum(min(d, (1 << 32) - d) > 1 << 24 for d in moved) >= 15, moved
    # And the offsets are not simply the keyed hash under the zero (default) secret.
    zero = Config().secret
    guess = [initial_sequence_number(0.0, (CLIENT, base + 1 + i), (SERVER, closed), zero)
             for i in range(100)]
    assert sum(g == k for g, k in zip(guess, keyed, strict=True)) == 0


# -- secrets -------------------------------------------------------------------------------

# `tcpscapy connect`, with every os.urandom result and the driver's secret written to
# a side file for the test only.
SECRET_PEEK = r"""
import os, sys
drawn = []
real_urandom = os.urandom
def urandom(n):
    value = real_urandom(n)
    drawn.append(value)
    return value
os.urandom = urandom
from tcpscapy.io import driver
init = driver.Driver.__init__
def peek(self, *args, **kwargs):
    init(self, *args, **kwargs)
    with open(sys.argv[1], "w") as f:
        f.write(self.config.secret.hex() + "\n" + " ".join(d.hex() for d in drawn))
driver.Driver.__init__ = peek
from tcpscapy.cli import main
main(sys.argv[2:], prog_name="tcpscapy")
"""


@pytest.mark.parametrize("style", ["--json", "--absolute"])  # JSON, or the text ladder
def test_connect_never_shows_its_secret(net: Lab, tmp_path: Path, style: str) -> None:
    port = kernel_server(net, "echo")
    side, pcap = tmp_path / "secret", tmp_path / "connect.pcap"
    data = os.urandom(30_000)
    done = net.run("client", [sys.executable, "-c", SECRET_PEEK, str(side), "connect",
                              f"{SERVER}:{port}", style, "--pcap", str(pcap)],
                   input=data, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    secret_hex, drawn = side.read_text().splitlines()
    secret = bytes.fromhex(secret_hex)
    assert len(secret) == 16 and secret != bytes(16)
    assert secret_hex in drawn.split()  # it came from os.urandom
    printed = (done.stdout + done.stderr).lower()
    captured = pcap.read_bytes()
    assert len(captured) > 30_000  # the pcap holds the whole exchange
    for key in (secret, *derive_keys(secret), tfo_key(secret)):
        for form in (key, key.hex().encode(), key.hex().upper().encode()):
            assert form not in printed and form not in captured
    if style == "--json":
        assert b'"type":"summary"' in done.stderr
    else:
        assert b"handshake RTT" in done.stderr


def test_each_process_draws_its_own_secret(net: Lab, tmp_path: Path) -> None:
    port = kernel_server(net, "echo")
    secrets = set()
    for i in range(3):
        side = tmp_path / f"secret{i}"
        net.run("client", [sys.executable, "-c", SECRET_PEEK, str(side), "connect",
                           f"{SERVER}:{port}", "-q"], input=b"x", check=True,
                capture_output=True, timeout=30)
        secrets.add(side.read_text().split()[0])
    assert len(secrets) == 3

