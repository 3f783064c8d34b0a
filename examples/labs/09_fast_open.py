"""Lab 9: TCP Fast Open saves a round trip.

A kernel web server on the server host accepts Fast Open
(net.ipv4.tcp_fastopen=3 in its namespace, TCP_FASTOPEN on the socket).
tcpscapy's client fetches a page twice with tfo=True (RFC 7413):

1. It has no cookie yet: its SYN carries an empty Fast Open option (a cookie
   request) and no data. The SYN-ACK brings a cookie; the request goes after
   the handshake, as always: the answer comes two round trips after the SYN.
2. It has the cookie: the SYN carries the cookie *and the request*. The
   server checks the cookie, hands the request to its application at once,
   and the SYN-ACK acknowledges the data; the answer follows one round trip
   after the SYN.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from labkit import SERVER, Lesson, kernel_server, netstat_counter, run, segments

import tcpscapy
from tcpscapy.core.segment import SYN
from tcpscapy.lab import Lab
from tcpscapy.trace import TraceEntry

PORT = 80
REQUEST = b"GET / HTTP/1.0\r\nHost: 10.77.0.2\r\n\r\n"


def fetch(cache: Path) -> tuple[tcpscapy.Connection, bytes]:
    conn = tcpscapy.connect(SERVER, PORT, tfo=True, tfo_cache=cache, data=REQUEST, msl=0.2)
    answer = b""
    while chunk := conn.recv(timeout=3):
        answer += chunk
    conn.close()
    conn.wait_closed(2)
    return conn, answer


def round_trips(trace: list[TraceEntry]) -> int:
    """Round trips from our SYN to the answer: one for the request itself, plus one
    for each segment we had to hear from the server before the request could go."""
    heard = 0
    for entry in segments(trace):
        if entry.direction == "out" and entry.segment.payload:
            return heard + 1
        heard += entry.direction == "in"
    return -1


def lesson(lab: Lab, les: Lesson) -> None:
    lab.sysctl("server", "net.ipv4.tcp_fastopen", "3")
    kernel_server(lab, "server", PORT, "http", fastopen=True)
    with tempfile.TemporaryDirectory(prefix="lab9-") as tmp:
        cache = Path(tmp) / "tfo.json"

        les.section("1. first visit: ask for a cookie")
        with lab.enter("client"):
            first, answer1 = fetch(cache)
        trace1 = list(first.trace)
        les.ladder(trace1, "no cookie yet: the request waits for the handshake")
        syn1 = segments(trace1, "out")[0].segment
        synack1 = next(e.segment for e in segments(trace1, "in") if e.segment.flags & SYN)
        les.say(f"cookie request in the SYN: {syn1.options.tfo_cookie!r}; "
                f"cookie in the SYN-ACK: {(synack1.options.tfo_cookie or b'').hex()}")
        les.check("the first SYN asks for a cookie and carries no data",
                  syn1.options.tfo_cookie == b"" and not syn1.payload)
        les.check("the server's SYN-ACK hands out a cookie",
                  bool(synack1.options.tfo_cookie))
        les.check("the page arrived", answer1.endswith(b"hello\n"))

        les.section("2. second visit: the cookie and the request ride in the SYN")
        passive = netstat_counter(lab, "server", "TcpExt", "TCPFastOpenPassive")
        with lab.enter("client"):
            second, answer2 = fetch(cache)
        trace2 = list(second.trace)
        les.ladder(trace2, "with the cookie: data in the SYN")
        syn2 = segments(trace2, "out")[0].segment
        synack2 = next(e.segment for e in segments(trace2, "in") if e.segment.flags & SYN)
        n1, n2 = round_trips(trace1), round_trips(trace2)
        les.say(f"round trips from the SYN to the answer: {n1} the first time (the request "
                f"waited for the SYN-ACK), {n2} the second (the request rode in the SYN)")
        les.fact("round_trips", [n1, n2])
        les.check("the second SYN carries the cookie and the whole request",
                  syn2.options.tfo_cookie == synack1.options.tfo_cookie
                  and syn2.payload == REQUEST)
        les.check("the SYN-ACK acknowledges the SYN and its data",
                  synack2.ack == (syn2.seq + 1 + len(REQUEST)) % 2**32)
        les.check("the kernel counted a Fast Open connection (TCPFastOpenPassive)",
                  netstat_counter(lab, "server", "TcpExt", "TCPFastOpenPassive") == passive + 1)
        les.check("the request left before we heard from the server: one round trip, not two",
                  n1 == 2 and n2 == 1, f"{n1} vs {n2}")
        les.check("the same page arrived", answer2 == answer1)


if __name__ == "__main__":
    run(9, "TCP Fast Open saves a round trip", lesson)
