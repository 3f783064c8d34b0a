"""Lab 2: teardown, half-close and TIME-WAIT.

Part 1: tcpscapy sends a request and half-closes (FIN) while the kernel
server is still answering; the answer still arrives, then the kernel's FIN,
and tcpscapy waits in TIME-WAIT for 2 x MSL (MSL shortened to 0.5 s here; RFC
9293 says 2 minutes, Linux waits 60 s).

Part 2: the kernel closes first; now tcpscapy passes CLOSE-WAIT and LAST-ACK
and it is the kernel's socket that sits in TIME-WAIT (`ss` shows it).
"""

from __future__ import annotations

from labkit import SERVER, Lesson, kernel_server, passes, run, segments, states, wait_for

import tcpscapy
from tcpscapy.core.segment import FIN
from tcpscapy.core.state import State
from tcpscapy.lab import Lab

MSL = 0.5


def lesson(lab: Lab, les: Lesson) -> None:
    kernel_server(lab, "server", 9000, "count")
    kernel_server(lab, "server", 9001, "greet")

    les.section("1. tcpscapy closes first, half-way: FIN after its request, then it listens on")
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, 9000, msl=MSL)
        conn.sendall(b"x" * 1000)
        conn.shutdown()  # our FIN: we will send no more, but we still read
        answer = b""
        while chunk := conn.recv(timeout=3):
            answer += chunk
        conn.wait_closed(3)
        time_wait_at = next((e.time for e in conn.trace if e.state_change
                             and e.state_change[1] is State.TIME_WAIT), None)
        closed = wait_for(lambda: conn.state is State.CLOSED, 4 * MSL + 2)
    trace = list(conn.trace)
    les.ladder(trace, "the client's half-close")
    path = states(trace)
    fin_out = next(i for i, e in enumerate(trace) if e.direction == "out" and e.segment
                   and e.segment.flags & FIN)
    data_after_fin = [e for e in trace[fin_out:] if e.direction == "in" and e.segment
                      and e.segment.payload]
    les.say(f"the server's answer {answer!r} arrived after our FIN")
    les.check("the client passed FIN-WAIT-1, FIN-WAIT-2 and TIME-WAIT",
              passes(path, State.FIN_WAIT_1, State.FIN_WAIT_2, State.TIME_WAIT),
              " -> ".join(map(str, path)))
    les.check("data still arrived after our FIN (a half-closed connection)",
              bool(data_after_fin) and answer == b"got 1000")
    end = trace[-1]
    waited = end.time - time_wait_at if time_wait_at is not None and closed else None
    les.fact("time_wait_seconds", round(waited, 3) if waited is not None else None)
    les.check("TIME-WAIT lasted 2 x MSL, then CLOSED",
              closed and waited is not None and 2 * MSL * 0.95 <= waited <= 2 * MSL + 1.0,
              f"{waited:.3f} s" if waited is not None else "did not end")

    les.section("2. the kernel closes first: tcpscapy goes CLOSE-WAIT -> LAST-ACK")
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, 9001, msl=MSL)
        greeting = conn.recv(timeout=3)
        eof = conn.recv(timeout=3)  # b"": the kernel's FIN arrived
        conn.close()
        conn.wait_closed(3)
    trace = list(conn.trace)
    les.ladder(trace, "the server closes first")
    path = states(trace)
    port = conn.local[1]
    ss = lab.run("server", ["ss", "-Htan", "state", "time-wait", "dport", f"= :{port}"],
                 capture_output=True, text=True).stdout.strip()
    les.say(f"ss -tan state time-wait on the server: {ss or '(nothing)'}")
    les.check("tcpscapy passed CLOSE-WAIT and LAST-ACK, never TIME-WAIT",
              passes(path, State.CLOSE_WAIT, State.LAST_ACK, State.CLOSED)
              and State.TIME_WAIT not in path, " -> ".join(map(str, path)))
    les.check("the greeting came, then end-of-file", greeting == b"hello\n" and eof == b"")
    les.check("the kernel, which closed first, holds the connection in TIME-WAIT",
              f"{SERVER}:9001" in ss and f":{port}" in ss)
    les.fact("segments_part2", len(segments(trace)))


if __name__ == "__main__":
    run(2, "Teardown, half-close and TIME-WAIT", lesson)
