"""What the driver remembers per peer stays bounded under a flood from random sources.

SYN cookies keep no state per SYN; the driver must not either. A spoofed source
we cannot reach (no route, no ARP answer) is remembered for a while so it costs
one attempt, not one per segment -- but only so many of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tcpscapy.api import listen
from tcpscapy.core.segment import ACK, SYN, URG, Segment
from tcpscapy.io import driver as driver_module
from tcpscapy.io.rawsock import NoRoute
from tests.io.test_driver_unit import ECHO_PORT, LOCAL, REMOTE, World, wait_until

PORT = 8080
SOURCES = 3000


@pytest.fixture
def flooded() -> Iterator[World]:
    w = World()
    opened = w.net.open_link

    def no_route_outside(dst: str, src: str | None, iface: str | None) -> object:
        if dst.startswith("198.18."):  # the flood's sources: nobody to answer
            raise NoRoute(f"no route to {dst}")
        return opened(dst, src, iface)

    w.driver._open_link = no_route_outside  # type: ignore[assignment]
    try:
        yield w
    finally:
        w.driver.close(linger=0.5)


def test_failed_link_opens_are_remembered_per_source_but_bounded(flooded: World) -> None:
    server = listen(PORT, LOCAL, driver=flooded.driver, syncookies="always")
    sources = [str(ipaddress.IPv4Address("198.18.0.1") + i) for i in range(SOURCES)]
    for i, src in enumerate(sources):
        flooded.net.inject(Segment(src, LOCAL, 1024 + i, PORT, 7 * i, 0, SYN, 512))
    remembered = flooded.driver._no_route
    # The last SYN-ACK was tried (and failed), and the newest failures are the ones kept.
    assert wait_until(lambda: (LOCAL, sources[-1]) in remembered, timeout=30)
    assert server.engine.counters["cookies_sent"] == SOURCES
    assert 0 < len(remembered) <= driver_module.NO_ROUTE_MAX < SOURCES
    assert all(src.startswith("198.18.") for _, src in remembered)
    server.close()


def test_urgent_marks_kept_per_connection_are_bounded() -> None:
    w = World()
    try:
        conn = w.connect()
        engine = conn.engine
        for i in range(driver_module.URGENT_KEPT + 16):  # the pointer moves every segment
            w.net.inject(Segment(REMOTE, LOCAL, ECHO_PORT, engine.local[1],
                                 (engine.rcv_nxt + i) & 0xFFFFFFFF, engine.snd_nxt,
                                 URG | ACK, 512, payload=b"u", urgent=1))
            assert wait_until(lambda i=i: len(conn.trace.segments("in")) >= 3 + i, timeout=10)
        kept = driver_module.URGENT_KEPT
        # The newest marks, one per segment, oldest first; the older ones are gone.
        assert wait_until(lambda: conn.urgent[-1] - conn.urgent[0] == kept - 1), conn.urgent
        assert len(conn.urgent) == kept
        assert conn.recv(timeout=2).startswith(b"u")
    finally:
        w.driver.close(linger=0.5)
