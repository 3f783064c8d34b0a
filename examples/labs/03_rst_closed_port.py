"""Lab 3: RST from a closed port; connection refused.

Nothing listens on the server's port 81. A SYN sent there is answered with
RST-ACK and the connection is refused -- for tcpscapy and for a kernel client
alike. A stray ACK sent to the same port draws a different RST: RFC 9293
§3.10.7.1 builds the reset from the offending segment, so that its sender
accepts it. tcpscapy's own engine follows the same rules for a port it
listens on but has no connection for.
"""

from __future__ import annotations

import random

from labkit import CLIENT, SERVER, Lesson, kernel_python, probe, run, segments

import tcpscapy
from tcpscapy import errors
from tcpscapy.core.segment import ACK, RST, SYN, Segment
from tcpscapy.lab import Lab

CLOSED_PORT = 81
LISTEN_PORT = 7000

KERNEL_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("connected")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


def rst_text(seg: Segment | None) -> str:
    if seg is None:
        return "no answer"
    flags = "RST-ACK" if seg.flags == RST | ACK else "RST" if seg.flags == RST else hex(seg.flags)
    return f"{flags} seq={seg.seq} ack={seg.ack}"


def lesson(lab: Lab, les: Lesson) -> None:
    les.section(f"1. tcpscapy connects to {SERVER}:{CLOSED_PORT}, where nothing listens")
    with lab.enter("client"):
        try:
            tcpscapy.connect(SERVER, CLOSED_PORT, timeout=5)
            refusal, trace = None, []
        except errors.ConnectionRefused as exc:
            refusal, trace = exc, list(exc.trace)  # type: ignore[attr-defined]
    les.say(f"tcpscapy.connect raised: {type(refusal).__name__}: {refusal}")
    if trace:
        les.ladder(trace, "the refused connection")
    pair = [e.segment for e in segments(trace)]
    syn, rst = ([*pair, None, None])[:2]
    les.check("connect() fails with ConnectionRefused", refusal is not None)
    les.check("the answer to the SYN is RST-ACK with seq 0 and ack = ISN + 1",
              syn is not None and rst is not None and rst.flags == RST | ACK
              and rst.seq == 0 and rst.ack == (syn.seq + 1) % 2**32, rst_text(rst))

    les.section("2. a kernel client gets the same answer: ECONNREFUSED")
    out = kernel_python(lab, "client", KERNEL_CONNECT, SERVER, str(CLOSED_PORT)).stdout.strip()
    les.say(f"python socket.create_connection: {out}")
    les.check("the kernel client sees ConnectionRefusedError (errno 111)",
              out == "ConnectionRefusedError 111")

    les.section("3. a stray ACK (no SYN) to the closed port")
    sport, ack_no = random.randint(20000, 60000), random.getrandbits(32)
    stray = Segment(CLIENT, SERVER, sport, CLOSED_PORT, seq=1000, ack=ack_no, flags=ACK,
                    window=1024)
    answer = probe(lab, "client", stray)
    les.say(f"sent  ACK seq=1000 ack={ack_no} to port {CLOSED_PORT}")
    les.say(f"got   {rst_text(answer)}")
    les.check("the kernel answers a stray ACK with a bare RST whose seq is that ACK's ack",
              answer is not None and answer.flags == RST and answer.seq == ack_no)

    les.section("4. a stray SYN with data gets RST-ACK acknowledging SYN + data")
    syn_data = Segment(CLIENT, SERVER, sport + 1, CLOSED_PORT, seq=5000, ack=0, flags=SYN,
                       window=1024, payload=b"12345")
    answer = probe(lab, "client", syn_data)
    les.say(f"sent  SYN seq=5000 with 5 bytes; got {rst_text(answer)}")
    les.check("without an ACK to echo, the RST acknowledges everything the segment held",
              answer is not None and answer.flags == RST | ACK and answer.seq == 0
              and answer.ack == 5000 + 1 + 5)

    les.section(f"5. tcpscapy's engine, listening on {LISTEN_PORT}, answers a stray ACK alike")
    with lab.enter("server"):
        listener = tcpscapy.listen(LISTEN_PORT, SERVER)
    stray = stray.replace(dport=LISTEN_PORT, sport=sport + 2)
    answer = probe(lab, "client", stray)
    listener.close()
    les.say(f"sent  ACK seq=1000 ack={ack_no} to tcpscapy's listener; got {rst_text(answer)}")
    les.check("in LISTEN, any ACK is bad: tcpscapy answers RST with seq = its ack",
              answer is not None and answer.flags == RST and answer.seq == ack_no)


if __name__ == "__main__":
    run(3, "RST from a closed port; connection refused", lesson)
