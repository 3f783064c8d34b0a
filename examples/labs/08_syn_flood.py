"""Lab 8: a SYN flood against a plain listener and against SYN cookies.

The attacker host sends thousands of SYNs from spoofed addresses of the lab
subnet (nobody there answers the SYN-ACKs), bounded in count and time, at a
tcpscapy echo listener on the server host with a backlog of 16. Meanwhile a
kernel client on the client host tries to connect.

Round 1, syncookies="never": the 16 places fill with half-open connections
that will not complete for a minute; every further SYN, the real client's
too, is dropped. The client times out.

Round 2, syncookies="auto" (Linux's tcp_syncookies=1): once the queue is
full, the listener answers with a SYN cookie -- an ISN that encodes the
connection, so it keeps no state -- and rebuilds the connection from the
client's ACK. The real client gets through.
"""

from __future__ import annotations

import threading

from labkit import SERVER, Lesson, in_thread, kernel_python, run, wait_for

import tcpscapy
from tcpscapy import errors
from tcpscapy.core.segment import ACK
from tcpscapy.io.flood import flood
from tcpscapy.lab import Lab

BACKLOG = 16
SYNS, RATE = 6000, 4000  # 1.5 s of flood

KERNEL_CLIENT = r"""
import socket, sys, time
start = time.monotonic()
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])),
                                  timeout=float(sys.argv[3])) as s:
        s.sendall(b"real client")
        print("connected", f"{time.monotonic() - start:.3f}", s.recv(100).decode())
except OSError as exc:
    print("failed", f"{time.monotonic() - start:.3f}", type(exc).__name__)
"""


def serve(listener: tcpscapy.Listener, stop: threading.Event) -> list[tcpscapy.Connection]:
    """Echo one message per connection until told to stop; returns the connections."""
    served = []
    while not stop.is_set():
        try:
            conn = listener.accept(timeout=0.1)
        except errors.TimedOut:
            continue
        except errors.ConnectionClosed:
            break
        conn.sendall(conn.recv(timeout=2))
        conn.close()
        conn.wait_closed(2)
        served.append(conn)
    return served


def overflowing(listener: tcpscapy.Listener) -> bool:
    counters = listener.engine.counters
    return counters["syns_dropped"] + counters["cookies_sent"] > 0


def attack_round(lab: Lab, les: Lesson, mode: str,
                 port: int) -> tuple[str, dict[str, int], list[tcpscapy.Connection]]:
    with lab.enter("server"):
        listener = tcpscapy.listen(port, SERVER, backlog=BACKLOG, syncookies=mode)
    stop = threading.Event()
    with in_thread(lambda: serve(listener, stop), "serve") as served:
        def attack() -> object:
            with lab.enter("attacker"):
                return flood(SERVER, port, SYNS, rate=RATE)

        with in_thread(attack, "flood") as flooded:
            # The real client comes once the queue is full: the listener turns SYNs away.
            wait_for(lambda: overflowing(listener), 5)
            # Without cookies it gives up after 1.2 s (one SYN retransmission, both
            # during the flood); with cookies it has time to be served even by a
            # listener on a loaded machine (its echo once took a second).
            patience = "1.2" if mode == "never" else "10"
            result = kernel_python(lab, "client", KERNEL_CLIENT, SERVER, str(port),
                                   patience).stdout.strip()
        stop.set()
    counters = dict(listener.engine.counters)
    listener.close()
    summary = flooded.get("result")
    les.say(f"attacker: {summary.summary() if summary else flooded.get('error')}")
    les.say(f"the real client: {result}")
    les.say("listener counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()
                                              if not k.startswith("tfo")))
    les.fact(f"{mode}_client", result)
    les.fact(f"{mode}_counters", counters)
    conns = served.get("result") or []
    les.fact(f"{mode}_served", len(conns))
    for conn in conns:
        les.ladder(conn.trace, f"the listener's view of the real client {conn.remote[0]}")
    return result, counters, conns


def lesson(lab: Lab, les: Lesson) -> None:
    les.section(f"1. syncookies=never, backlog {BACKLOG}: {SYNS} spoofed SYNs at {RATE}/s")
    result, counters, _ = attack_round(lab, les, "never", 8000)
    les.check("the flood filled the queue and the listener dropped SYNs",
              counters["syns_dropped"] > SYNS // 2)
    les.check("no SYN cookies were sent", counters["cookies_sent"] == 0)
    les.check("the real client could not connect during the flood", result.startswith("failed"))

    les.section(f"2. syncookies=auto, backlog {BACKLOG}: the same flood")
    result, counters, conns = attack_round(lab, les, "auto", 8001)
    les.check("once the queue was full, the listener answered with SYN cookies",
              counters["cookies_sent"] > SYNS // 2)
    les.check("the real client's ACK carried a valid cookie", counters["cookies_validated"] >= 1)
    les.check("the real client connected and got its echo",
              result.startswith("connected") and result.endswith("real client"))
    first = next((e.segment for conn in conns for e in conn.trace if e.segment), None)
    les.say("the listener's record of that connection starts at the client's ACK: it kept "
            "nothing for the SYN, the cookie in the ACK told it everything")
    les.check("the listener kept no state for the SYN (its record starts at the ACK)",
              first is not None and first.flags == ACK)


if __name__ == "__main__":
    run(8, "A SYN flood against a plain listener and against SYN cookies", lesson)
