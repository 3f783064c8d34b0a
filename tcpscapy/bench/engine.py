"""The pure engine alone, between two in-memory stacks on a fake clock."""

from __future__ import annotations

import time

from tcpscapy.bulk import pattern, run_transfer
from tcpscapy.core import Config, State
from tcpscapy.core.stack import Stack
from tcpscapy.sim import Network

CONFIG = Config(secret=b"bench", msl=0.001)
HANDSHAKES = 2000
BULK = 10_000_000


def handshakes_per_cpu_second() -> float:
    """Full open and close cycles (SYN .. TIME-WAIT end) per CPU second."""
    client, server = Stack(CONFIG), Stack(CONFIG)
    net = Network({"10.0.0.1": client, "10.0.0.2": server}, delay=0.0001)
    listener = server.listen("10.0.0.2", 80)
    start = time.process_time()
    for i in range(HANDSHAKES):
        conn = client.connect(("10.0.0.1", 10000 + i), ("10.0.0.2", 80), net.now)
        net.run(lambda: listener.ready > 0)
        peer = listener.accept()
        assert peer is not None and conn.state is State.ESTABLISHED
        conn.close()
        peer.close()
        net.run()
    return HANDSHAKES / (time.process_time() - start)


def megabytes_per_cpu_second_one_way() -> float:
    pattern(BULK, 1)  # made once, outside the measurement
    start = time.process_time()
    result = run_transfer(BULK, 0, config=CONFIG, check=False)
    assert result.ok
    return BULK / 1e6 / (time.process_time() - start)


def megabytes_per_cpu_second_both_ways() -> float:
    pattern(BULK, 1), pattern(BULK, 2)
    start = time.process_time()
    result = run_transfer(BULK, BULK, config=CONFIG, check=False)
    assert result.ok
    return 2 * BULK / 1e6 / (time.process_time() - start)


FIGURES = [
    ("engine: open+close cycles per CPU second", "cycles/s", handshakes_per_cpu_second),
    ("engine: payload MB per CPU second, one way", "MB/s", megabytes_per_cpu_second_one_way),
    ("engine: payload MB per CPU second, both ways", "MB/s", megabytes_per_cpu_second_both_ways),
]
