"""Lab 5: simultaneous close.

A tcpscapy client (client host) connects to a tcpscapy listener (server
host) the usual way. Then both close at the same moment: each FIN reaches a
side that has sent its own FIN and waits in FIN-WAIT-1. RFC 9293 §3.6 has
both go to CLOSING, then TIME-WAIT when their FIN is acknowledged: both sides
wait out 2 x MSL (MSL shortened to 0.25 s here), not just one.

As in lab 4, both endpoints run on Drivers without a background thread, so
the first FIN waits in the other side's socket buffer until that side has
sent its own FIN: the FINs cross as they would on a long link.
"""

from __future__ import annotations

import time

from labkit import CLIENT, SERVER, Lesson, in_thread, passes, run, segments, states

import tcpscapy
from tcpscapy.api import Connection
from tcpscapy.core.segment import ACK, FIN
from tcpscapy.core.state import State
from tcpscapy.io.driver import Driver
from tcpscapy.lab import Lab

PORT = 6000
MSL = 0.25


def run_until_closed(conn: Connection, timeout: float) -> bool:
    """Run the connection's driver loop until the engine forgot it (TIME-WAIT over)."""
    drv = conn.driver
    with drv.lock:
        return drv.wait(lambda: conn.state is State.CLOSED, time.monotonic() + timeout)


def lesson(lab: Lab, les: Lesson) -> None:
    with lab.enter("client"):
        drv_a = Driver(background=False)
    with lab.enter("server"):
        drv_b = Driver(background=False)
    listener = tcpscapy.listen(PORT, SERVER, driver=drv_b, msl=MSL)
    with in_thread(lambda: listener.accept(timeout=5), "accept") as accepted:
        a = tcpscapy.connect(SERVER, PORT, driver=drv_a, msl=MSL, timeout=5)
    b: Connection = accepted["result"]
    listener.close()
    a.sendall(b"bye")
    assert b.recv(timeout=3) == b"bye"
    les.section(f"A = {CLIENT}:{a.local[1]} and B = {SERVER}:{PORT} close at the same time")
    a.close()  # A's FIN goes out; B does not read it yet
    b.close()  # B's FIN goes out, then B reads A's FIN
    a.wait_closed(3)
    b.wait_closed(3)
    les.say(f"after the exchange: A is {a.state}, B is {b.state}")
    both_waited = a.state is State.TIME_WAIT and b.state is State.TIME_WAIT
    started = time.monotonic()
    closed = run_until_closed(a, 4 * MSL + 2) and run_until_closed(b, 4 * MSL + 2)
    les.fact("time_wait_seconds", round(time.monotonic() - started, 3))
    les.ladder(a.trace, "A's view")
    les.ladder(b.trace, "B's view")

    for name, conn in (("A", a), ("B", b)):
        trace = list(conn.trace)
        path = states(trace)
        fin_out = next(i for i, e in enumerate(trace) if e.direction == "out"
                       and e.segment and e.segment.flags & FIN)
        fin_in = next(i for i, e in enumerate(trace) if e.direction == "in"
                      and e.segment and e.segment.flags & FIN)
        les.check(f"{name} went FIN-WAIT-1 -> CLOSING -> TIME-WAIT -> CLOSED",
                  passes(path, State.FIN_WAIT_1, State.CLOSING, State.TIME_WAIT, State.CLOSED)
                  and State.FIN_WAIT_2 not in path, " -> ".join(map(str, path[2:])))
        les.check(f"{name} sent its FIN before the other's FIN arrived", fin_out < fin_in)
        les.check(f"{name} acknowledged the other's FIN with a bare ACK",
                  any(e.segment.flags == ACK for e in segments(trace[fin_in:], "out")))
    les.check("both sides, not just one, waited in TIME-WAIT", both_waited)
    les.check("both TIME-WAITs ended after 2 x MSL", closed)


if __name__ == "__main__":
    run(5, "Simultaneous close", lesson)
