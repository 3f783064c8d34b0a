"""Lab 4: simultaneous open.

Two tcpscapy endpoints -- one on the client host (10.77.0.1:5001), one on the
server host (10.77.0.2:5002) -- each connect to the other. Nobody listens.
Each SYN reaches a side that is itself in SYN-SENT: RFC 9293 §3.5 has both
answer with SYN-ACK and pass through SYN-RECEIVED to ESTABLISHED, four
segments where the usual handshake has three.

On a real network the two SYNs cross somewhere on the path. On a veth link a
SYN arrives within microseconds, before the other side has sent its own, so
the lab delays the reading instead: each endpoint runs on a Driver without a
background thread (it reads its socket only while its application waits), so
the first SYN waits in the other side's socket buffer until that side has
sent its SYN too -- exactly what a long link would do. Each side first knocks
once on a closed port of the other (answered by RST) so that its driver holds
its port and reads its link before the lab starts.
"""

from __future__ import annotations

import contextlib
import time

from labkit import CLIENT, SERVER, Lesson, run, segments, states

import tcpscapy
from tcpscapy import errors
from tcpscapy.api import Connection
from tcpscapy.core.config import Config
from tcpscapy.core.segment import ACK, SYN
from tcpscapy.core.state import State
from tcpscapy.io.driver import Driver, Endpoint
from tcpscapy.lab import Lab

A_PORT, B_PORT = 5001, 5002
CONFIG = Config(rto_initial=0.5, rto_min=0.5, msl=0.2)


def wait_connected(drv: Driver, ep: Endpoint, timeout: float) -> None:
    with drv.lock:  # the application thread runs this driver's loop while it waits
        drv.wait(lambda: ep.connected or ep.closed, time.monotonic() + timeout)


def lesson(lab: Lab, les: Lesson) -> None:
    with lab.enter("client"):
        drv_a = Driver(background=False)
    with lab.enter("server"):
        drv_b = Driver(background=False)
    for drv, peer, port in ((drv_a, SERVER, A_PORT), (drv_b, CLIENT, B_PORT)):
        # The knock: afterwards the driver owns `port` and reads its link.
        with contextlib.suppress(errors.ConnectionRefused):
            tcpscapy.connect(peer, 9, sport=port, driver=drv, timeout=3)

    les.section(f"A = {CLIENT}:{A_PORT} and B = {SERVER}:{B_PORT} connect to each other")
    ep_a = drv_a.open_connection((SERVER, B_PORT), sport=A_PORT, config=CONFIG)
    les.say("A sent its SYN; B has not read it yet")
    ep_b = drv_b.open_connection((CLIENT, A_PORT), sport=B_PORT, config=CONFIG)
    les.say("B sent its SYN, then read A's")
    wait_connected(drv_a, ep_a, 3)
    wait_connected(drv_b, ep_b, 3)
    a, b = Connection(drv_a, ep_a), Connection(drv_b, ep_b)
    les.ladder(a.trace, "A's view (B on the right)")
    les.ladder(b.trace, "B's view (A on the right)")

    for name, conn in (("A", a), ("B", b)):
        trace = list(conn.trace)
        path = states(trace)
        flags = [(e.direction, e.segment.flags) for e in segments(trace)]
        les.check(f"{name} went SYN-SENT -> SYN-RECEIVED -> ESTABLISHED",
                  path == [State.CLOSED, State.SYN_SENT, State.SYN_RECEIVED,
                           State.ESTABLISHED], " -> ".join(map(str, path)))
        les.check(f"{name} got a bare SYN while in SYN-SENT and answered SYN-ACK",
                  ("in", SYN) in flags and ("out", SYN | ACK) in flags)
        les.check(f"{name} sent only a SYN and a SYN-ACK to get there (no third ACK)",
                  [f for d, f in flags if d == "out"] == [SYN, SYN | ACK])
    les.check("each SYN-ACK acknowledges the other side's ISN + 1",
              all(e.segment.ack == (conn.engine.irs + 1) % 2**32
                  for conn in (a, b) for e in segments(conn.trace, "out")
                  if e.segment.flags == SYN | ACK))
    les.fact("segments_on_the_wire", len(segments(a.trace, "out")) +
             len(segments(b.trace, "out")))

    les.section("data flows both ways, as on any connection")
    a.sendall(b"hello from A")
    b.sendall(b"hello from B")
    got_b, got_a = b.recv(timeout=3), a.recv(timeout=3)
    les.say(f"B read {got_b!r}, A read {got_a!r}")
    les.check("both directions carry data", got_b == b"hello from A" and got_a == b"hello from B")
    a.close()
    b.close()
    a.wait_closed(2)
    b.wait_closed(2)


if __name__ == "__main__":
    run(4, "Simultaneous open", lesson)
