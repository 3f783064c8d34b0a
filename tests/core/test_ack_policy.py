"""ACK and window policy: quick ACKs (Linux's quickack), receive-buffer auto-tuning."""

from __future__ import annotations

from tcpscapy.bulk import pattern, run_transfer
from tcpscapy.core import Config
from tcpscapy.core.rcvbuf import RecvBuffer
from tcpscapy.sim import Impairment

from .test_two_engines import A, B, connected


def test_the_first_segments_are_acked_one_by_one_then_every_second() -> None:
    net, conn, _peer = connected(Config(secret=b"quick", quickacks=4, delayed_ack=0.1))
    start = len(net.log)
    for _ in range(10):  # one segment per round trip: each waits for its ACK or not
        conn.send(pattern(1000, 1))
        net.run(timeout=0.3)
    acks = [d.time for d in net.log[start:] if d.segment.src == B]
    data = [d.time for d in net.log[start:] if d.segment.src == A and d.segment.payload]
    assert len(data) == 10
    lag = [round(min(t for t in acks if t >= d) - d, 3) for d in data]
    assert lag[:4] == [0.01] * 4  # quick: at once (one link delay)
    assert all(x >= 0.1 for x in lag[4:])  # then delayed ACKs


def test_the_receive_buffer_grows_when_the_reader_keeps_up() -> None:
    buf = RecvBuffer(100_000, 1_000_000)
    buf.on_read(80_000, 0.0, 0.05)
    buf.on_read(10_000, 0.06, 0.05)  # 90 kB read in one RTT: the window was the limit
    assert buf.size == 360_000
    for t in range(2, 30):
        buf.on_read(buf.size, t * 0.06, 0.05)
    assert buf.size == 1_000_000  # up to the limit, never beyond
    fixed = RecvBuffer(100_000, 100_000)
    fixed.on_read(100_000, 0.1, 0.05)
    assert fixed.size == 100_000


def test_a_long_path_is_not_window_limited() -> None:
    """4 MB over a 20 ms RTT: the window grows past the 256 kB it starts with."""
    config = Config(secret=b"autotune")
    result = run_transfer(0, 4_000_000, config=config, impairment=Impairment(seed=1))
    assert result.ok and bytes(result.client.received) == pattern(4_000_000, 2)
    client = result.client.conn
    assert client._rcvbuf.size > config.recv_buffer
    assert max(s.window << client.rcv_wscale for s in result.net.sent()
               if s.src == A) > config.recv_buffer
