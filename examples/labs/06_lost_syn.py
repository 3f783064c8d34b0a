"""Lab 6: a lost SYN and a lost SYN-ACK: retransmission and back-off.

Part 1: the server host's firewall drops the first two SYNs it receives
(iptables, inside the lab's own namespace). tcpscapy's client retransmits its
SYN when its retransmission timer fires, doubling the timeout each time (RFC
6298 §5.5). The initial RTO is 0.25 s here so the lab is quick; RFC 6298 and
Linux start at 1 s, so a real client waits 1 s, then 2 s more.

Part 2: the roles turn: a tcpscapy listener answers a kernel client, and the
client host drops the first SYN-ACK. The listener retransmits its SYN-ACK
after its RTO; the kernel client, whose own SYN timer would fire only after
1 s, never needs to.

Part 3: tcpscapy's client again, and the kernel server's first SYN-ACK is
lost: the client's ladder looks just like a lost SYN. The kernel answers the
retransmitted SYN with a SYN-ACK for the same connection.
"""

from __future__ import annotations

import itertools
import time

from labkit import (
    SERVER,
    Lesson,
    drop_first,
    dropped,
    in_thread,
    kernel_python,
    kernel_server,
    run,
    segments,
)

import tcpscapy
from tcpscapy.core.segment import ACK, SYN
from tcpscapy.lab import Lab

RTO = 0.25
PORT_1, PORT_2, PORT_3 = 8080, 8081, 8082

KERNEL_CLIENT = r"""
import socket, sys, time
start = time.monotonic()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    took = time.monotonic() - start
    s.sendall(b"ping")
    print(f"{took:.3f}", s.recv(10).decode())
"""


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


def lesson(lab: Lab, les: Lesson) -> None:
    kernel_server(lab, "server", PORT_1, "echo")
    les.section("1. the server host drops the first two SYNs")
    drop_first(lab, "server", "INPUT", ["-p", "tcp", "--dport", str(PORT_1), "--syn"], 2)
    with lab.enter("client"):
        start = time.monotonic()
        conn = tcpscapy.connect(SERVER, PORT_1, rto=RTO, timeout=10)
        took = time.monotonic() - start
        conn.close()
        conn.wait_closed(2)
    les.ladder(conn.trace, "three SYNs, one SYN-ACK")
    syns = [e for e in segments(conn.trace, "out") if e.segment.flags == SYN]
    intervals = gaps([e.time for e in syns])
    les.say(f"SYNs sent at intervals of {intervals} s; connected after {took:.3f} s; "
            f"the firewall dropped {dropped(lab, 'server', 'INPUT')}")
    les.fact("syn_intervals", intervals)
    les.check("the server's firewall dropped exactly two SYNs",
              dropped(lab, "server", "INPUT") == 2)
    les.check("the client sent its SYN three times, all with the same ISN",
              len(syns) == 3 and len({e.segment.seq for e in syns}) == 1)
    les.check(f"the first retransmission came after the initial RTO ({RTO} s)",
              len(intervals) == 2 and RTO * 0.9 <= intervals[0] <= RTO + 0.15, str(intervals))
    les.check("the second waited twice as long (exponential back-off)",
              len(intervals) == 2 and 1.6 <= intervals[1] / intervals[0] <= 2.5, str(intervals))

    les.section("2. the client host drops the first SYN-ACK of a tcpscapy listener")
    drop_first(lab, "client", "INPUT",
               ["-p", "tcp", "--sport", str(PORT_2), "--tcp-flags", "SYN,ACK", "SYN,ACK"], 1)
    with lab.enter("server"):
        listener = tcpscapy.listen(PORT_2, SERVER, rto=RTO)

    def serve() -> object:
        conn = listener.accept(timeout=5)
        conn.sendall(conn.recv(timeout=3))
        conn.close()
        conn.wait_closed(2)
        return conn

    with in_thread(serve, "serve") as served:
        res = kernel_python(lab, "client", KERNEL_CLIENT, SERVER, str(PORT_2))
    listener.close()
    took_text, _, echoed = res.stdout.strip().partition(" ")
    server_conn = served.get("result")
    if server_conn is None:
        raise RuntimeError(f"the listener did not serve: {served.get('error')}; {res.stderr}")
    trace = list(server_conn.trace)  # type: ignore[attr-defined]
    les.ladder(trace, "the listener's view: its SYN-ACK goes out twice")
    synacks = [e for e in segments(trace, "out") if e.segment.flags == SYN | ACK]
    syns_in = [e for e in segments(trace, "in") if e.segment.flags == SYN]
    interval = gaps([e.time for e in synacks])
    les.say(f"SYN-ACKs sent at an interval of {interval} s; the kernel client connected "
            f"after {took_text} s and got {echoed!r} back")
    les.fact("synack_interval", interval)
    les.check("the client host's firewall dropped one SYN-ACK",
              dropped(lab, "client", "INPUT") == 1)
    les.check("the listener retransmitted its SYN-ACK after its RTO",
              len(synacks) == 2 and RTO * 0.9 <= interval[0] <= RTO + 0.15, str(interval))
    les.check("the kernel client never had to resend its SYN (its timer is 1 s)",
              len(syns_in) == 1)
    les.check("the connection then worked", echoed == "ping")

    les.section("3. the server host drops the kernel's first SYN-ACK to tcpscapy's client")
    kernel_server(lab, "server", PORT_3, "echo")
    drop_first(lab, "server", "OUTPUT",
               ["-p", "tcp", "--sport", str(PORT_3), "--tcp-flags", "SYN,ACK", "SYN,ACK"], 1)
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, PORT_3, rto=RTO, timeout=10)
        conn.close()
        conn.wait_closed(2)
    les.ladder(conn.trace, "the client's view: as if its SYN had been lost")
    syns = [e for e in segments(conn.trace, "out") if e.segment.flags == SYN]
    synacks_in = [e for e in segments(conn.trace, "in") if e.segment.flags == SYN | ACK]
    les.check("the server host's firewall dropped one SYN-ACK",
              dropped(lab, "server", "OUTPUT") == 1)
    les.check("the client resent its SYN after its RTO and got one SYN-ACK",
              len(syns) == 2 and len(synacks_in) == 1)
    les.check("the SYN-ACK acknowledges the same ISN: the kernel kept the connection",
              len(synacks_in) == 1 and synacks_in[0].segment.ack == (syns[0].segment.seq + 1)
              % 2**32)


if __name__ == "__main__":
    run(6, "A lost SYN and a lost SYN-ACK: retransmission and back-off", lesson)
