"""The driver's offloaded sends (GSO runs) against fake links: what reaches the peer,
what the trace shows, and the fallback when the kernel refuses the offload."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tcpscapy.core.segment import ACK, PSH
from tcpscapy.io.rawsock import OffloadRefused
from tests.io.test_driver_unit import FakeLink, FakeNet, World
from tests.io.test_fastpath_codec import complete_checksum, kernel_gso


class OffloadLink(FakeLink):
    """A fake link that takes offloaded sends and segments them as Linux would."""

    offload = True

    def __init__(self, net: FakeNet, dst: str, src: str) -> None:
        super().__init__(net, dst, src)
        self.offloaded: list[tuple[int, int]] = []  # (packet bytes, gso size) per call
        self.refuse = False

    def send_offload(self, packet: bytes, gso_size: int = 0) -> None:
        if self.refuse:
            self.offload = False
            raise OffloadRefused("offloaded send refused on eth0: [Errno 22] Invalid argument")
        self.offloaded.append((len(packet), gso_size))
        pieces = kernel_gso(packet, gso_size) if gso_size else [complete_checksum(packet)]
        for piece in pieces:
            self.net.from_driver(self, piece)  # decodes with the checksum verified


class OffloadNet(FakeNet):
    def open_link(self, dst: str, src: str | None, iface: str | None) -> FakeLink:
        self.opens.append(dst)
        link = OffloadLink(self, dst, src or "10.9.0.1")
        self.links.append(link)
        return link


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.net = OffloadNet()
    w.driver._open_link = w.net.open_link
    w.driver._open_receivers = w.net.open_receivers
    try:
        yield w
    finally:
        w.driver.close(linger=0.5)


def echo(world: World, size: int) -> tuple[bytes, bytes]:
    payload = os.urandom(size)
    conn = world.connect()
    conn.sendall(payload, timeout=10)
    conn.shutdown()
    got = bytearray()
    while chunk := conn.recv(timeout=10):
        got += chunk
    conn.close()
    return payload, bytes(got)


def test_bulk_data_goes_in_gso_runs_and_arrives_intact(world: World) -> None:
    payload, got = echo(world, 300_000)
    assert got == payload
    link = world.net.links[0]
    assert isinstance(link, OffloadLink)
    runs = [(size, gso) for size, gso in link.offloaded if gso]
    assert runs, "no segment went out in a GSO run"
    full = max(len(seg.payload) for seg in world.net.seen)
    assert {gso for _, gso in runs} == {full}  # cut at the full segment size, no larger
    assert max(size for size, _ in runs) > 2 * full  # runs of more than two segments


def test_the_trace_keeps_every_segment_the_peer_saw(world: World) -> None:
    payload = os.urandom(200_000)
    conn = world.connect()
    conn.sendall(payload, timeout=10)
    conn.shutdown()
    while conn.recv(timeout=10):
        pass
    traced = [e.segment for e in conn.trace if e.segment is not None and e.direction == "out"]
    seen = [seg for seg in world.net.seen if seg.sport == conn.local[1]]
    assert traced == seen
    assert all(e.note == "" for e in conn.trace if e.direction == "out")
    pushes = [seg for seg in traced if seg.payload and seg.flags == ACK | PSH]
    assert pushes  # PSH survives on the last segment of a run
    assert b"".join(seg.payload for seg in traced) == payload
    conn.close()


def test_a_refused_offload_falls_back_to_one_send_per_segment(world: World) -> None:
    conn = world.connect()
    link = world.net.links[0]
    assert isinstance(link, OffloadLink)
    link.refuse = True
    before = len(link.offloaded)  # the handshake's ACK went out offloaded
    payload = os.urandom(100_000)
    conn.sendall(payload, timeout=10)
    conn.shutdown()
    got = bytearray()
    while chunk := conn.recv(timeout=10):
        got += chunk
    assert got == payload
    assert link.offload is False and len(link.offloaded) == before
    assert all(e.note == "" for e in conn.trace if e.direction == "out")
    assert world.driver.stats.send_errors == 0
    conn.close()
