"""`flood(random_sources=True)`: unicast sources outside the lab subnet, a new one each time."""

from __future__ import annotations

import ipaddress
import random

from tcpscapy.io.flood import LAB_NET, RandomSources


def test_random_sources_stay_outside_the_lab_and_loopback_and_multicast() -> None:
    rng = random.Random(5)
    pool = RandomSources(rng)
    drawn = [ipaddress.IPv4Address(rng.choice(pool)) for _ in range(20_000)]
    assert all(a not in LAB_NET and not a.is_loopback and not a.is_multicast
               and int(a) >= 0x01000000 for a in drawn)
    assert len(set(drawn)) > 19_900  # nearly every SYN from a new source
    # Indexing straight into the lab subnet draws again instead.
    inside = int(LAB_NET.network_address) - RandomSources.FIRST + 5
    assert ipaddress.IPv4Address(pool[inside]) not in LAB_NET
