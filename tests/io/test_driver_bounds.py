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
from tcpscapy.core.segment import SYN, Segment
from tcpscapy.io import driver as driver_module
from tcpscapy.io.rawsock import NoRoute
from tests.io.test_driver_unit import LOCAL, World, wait_until

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
