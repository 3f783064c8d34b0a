"""ICMP errors through the driver loop (fake links, as in test_driver_unit): the engine
acts on them, the trace shows them, bad ones are counted."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tcpscapy import errors
from tcpscapy.core.segment import SYN, Segment
from tcpscapy.core.state import State
from tcpscapy.io import codec
from tcpscapy.io.icmp_codec import encode_icmp

from .test_driver_unit import CLOSED_PORT, REMOTE, World, wait_until

ROUTER = "10.9.0.254"


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.driver.close(linger=0.5)


def answer_big_packets(world: World, mtu: int, *, icmp: bool = True) -> list[Segment]:
    """The path drops packets over `mtu` bytes, with or without telling (a black hole)."""
    dropped: list[Segment] = []

    def drop(seg: Segment) -> bool:
        packet = codec.encode(seg)
        if len(packet) <= mtu:
            return False
        dropped.append(seg)
        if icmp:
            world.net.links[0].deliver(encode_icmp(3, 4, ROUTER, packet, mtu=mtu))
        return True

    world.net.drop = drop
    return dropped


def echo(conn: object, size: int) -> bytes:
    payload = os.urandom(size)
    conn.send(payload)  # type: ignore[attr-defined]
    got = bytearray()
    while len(got) < size:
        chunk = conn.recv(timeout=20)  # type: ignore[attr-defined]
        assert chunk, "the echo stopped"
        got += chunk
    assert bytes(got) == payload
    return bytes(got)


def test_port_unreachable_to_our_syn_ends_connect_with_its_own_error(world: World) -> None:
    def drop(seg: Segment) -> bool:
        if seg.flags & SYN and seg.dport == CLOSED_PORT:
            world.net.links[0].deliver(encode_icmp(3, 3, REMOTE, codec.encode(seg)))
            return True
        return False

    world.net.drop = drop
    with pytest.raises(errors.DestinationUnreachable) as info:
        world.connect(REMOTE, CLOSED_PORT)
    assert info.value.exit_code == 10
    assert str(info.value) == (f"connect to {REMOTE}:{CLOSED_PORT}: connection failed: "
                               f"port unreachable from {REMOTE}")


def test_host_unreachable_is_named_when_the_connect_times_out(world: World) -> None:
    def drop(seg: Segment) -> bool:
        if seg.flags & SYN:
            world.net.links[0].deliver(encode_icmp(3, 1, ROUTER, codec.encode(seg)))
            return True
        return False

    world.net.drop = drop
    with pytest.raises(errors.ConnectTimeout) as info:
        world.connect(timeout=0.5)
    assert str(info.value).endswith(f"(last ICMP: host unreachable from {ROUTER})")


def test_frag_needed_mid_transfer_lowers_the_mss_and_the_echo_completes(world: World) -> None:
    conn = world.connect()
    dropped = answer_big_packets(world, 1280)
    echo(conn, 200_000)
    assert dropped and conn.engine.snd_mss == 1240
    assert conn.engine.retransmissions <= len(dropped) + 10
    notes = [e.note for e in conn.trace if e.note]
    assert any(n.startswith(f"ICMP fragmentation needed from {ROUTER} (mtu 1280)") for n in notes)
    assert any(n.startswith("MSS ") and "-> 1240: path MTU 1280" in n for n in notes)
    assert world.driver.stack.pmtu.lookup(REMOTE, conn.trace[-1].time) == 1280


def test_a_spoofed_frag_needed_outside_the_window_changes_nothing(world: World) -> None:
    conn = world.connect()
    echo(conn, 10_000)
    eng = conn.engine
    mss, cwnd = eng.snd_mss, eng.cwnd
    fake = Segment(conn.local[0], REMOTE, conn.local[1], conn.remote[1],
                   (eng.snd_nxt + 100_000) % 2**32, 0, 0x10, 0, payload=b"x" * 1400)
    world.net.links[0].deliver(encode_icmp(3, 4, "10.9.0.66", codec.encode(fake), mtu=576))
    assert wait_until(lambda: world.driver.stack.icmp_counters["icmp_out_of_window"] == 1)
    assert (eng.snd_mss, eng.cwnd, len(world.driver.stack.pmtu)) == (mss, cwnd, 0)
    assert eng.path is None and eng.state is State.ESTABLISHED
    assert any("dropped (icmp_out_of_window)" in e.note for e in conn.trace)
    echo(conn, 10_000)


def test_malformed_icmp_is_counted_and_harms_nothing(world: World) -> None:
    conn = world.connect()
    good = encode_icmp(3, 4, ROUTER, codec.encode(Segment(
        conn.local[0], REMOTE, conn.local[1], conn.remote[1], conn.engine.snd_una, 0, 0x10, 0)),
        mtu=1280)
    bad = [good[:cut] for cut in (10, 21, 30, 47, len(good) - 1)]
    corrupt = bytearray(good)
    corrupt[30] ^= 0x55  # the quoted header: the ICMP checksum no longer matches
    ping = bytes.fromhex("4500001c000040004001") + bytes(10) + \
        bytes.fromhex("0800f7ff00000000")  # a ping: no error, not counted as malformed
    for packet in [*bad, bytes(corrupt), ping]:
        world.net.links[0].deliver(packet)
    assert wait_until(lambda: world.driver.stats.icmp_malformed == len(bad) + 1)
    assert wait_until(lambda: world.driver.stats.foreign >= 1)  # the ping
    assert world.driver.icmp_counters == {"icmp_malformed": len(bad) + 1}
    assert conn.engine.path is None
    echo(conn, 5_000)
