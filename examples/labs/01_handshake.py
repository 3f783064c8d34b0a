"""Lab 1: the three-way handshake, and the options each side offers.

tcpscapy on the client host opens a connection to a Linux (kernel) echo
server on the server host, twice: first offering every option, then offering
only a small MSS. The ladders show SYN, SYN-ACK, ACK with their sequence
numbers and options; the checks say what to read in them.
"""

from __future__ import annotations

from labkit import SERVER, Lesson, kernel_server, run, segments, states

import tcpscapy
from tcpscapy.core.segment import ACK, SYN
from tcpscapy.core.state import State
from tcpscapy.lab import Lab

PORT = 7


def option_names(seg: object) -> set[str]:
    opts = seg.options  # type: ignore[attr-defined]
    names = {"mss"} if opts.mss is not None else set()
    names |= {"sack"} if opts.sack_permitted else set()
    names |= {"timestamps"} if opts.timestamps is not None else set()
    names |= {"wscale"} if opts.wscale is not None else set()
    return names


def lesson(lab: Lab, les: Lesson) -> None:
    kernel_server(lab, "server", PORT, "echo")

    les.section("1. tcpscapy offers MSS, SACK, timestamps and window scaling")
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, PORT, msl=0.2)
        conn.sendall(b"hello")
        echoed = conn.recv()
        engine = conn.engine
        negotiated = {"mss": engine.snd_mss, "sack": engine.sack_ok,
                      "timestamps": engine.ts_ok,
                      "wscale": f"ours {engine.rcv_wscale}, theirs {engine.snd_wscale}"}
        conn.close()
        conn.wait_closed(3)
    trace = conn.trace
    les.ladder(trace, "client's view: tcpscapy left, the kernel right")

    syn, synack, ack = (e.segment for e in segments(trace)[:3])
    assert syn is not None and synack is not None and ack is not None
    les.say(f"our SYN:     ISN {syn.seq}, options {sorted(option_names(syn))}")
    les.say(f"the SYN-ACK: ISN {synack.seq}, ack {synack.ack}, "
            f"options {sorted(option_names(synack))}")
    les.say(f"in use: {negotiated}")
    les.say(f"so the kernel's window field counts units of {1 << engine.snd_wscale} bytes, "
            f"ours units of {1 << engine.rcv_wscale}")
    les.check("the SYN carries only SYN and the client's ISN", syn.flags == SYN)
    les.check("the SYN-ACK acknowledges the client's ISN + 1",
              synack.flags == SYN | ACK and synack.ack == (syn.seq + 1) % 2**32)
    les.check("the third segment acknowledges the server's ISN + 1",
              ack.flags == ACK and ack.ack == (synack.seq + 1) % 2**32 and
              ack.seq == (syn.seq + 1) % 2**32)
    les.check("the client went CLOSED -> SYN-SENT -> ESTABLISHED",
              states(trace)[:3] == [State.CLOSED, State.SYN_SENT, State.ESTABLISHED])
    les.check("the kernel offers all four options back when the SYN offers them",
              option_names(synack) == {"mss", "sack", "timestamps", "wscale"})
    les.check("both sides agreed on SACK, timestamps and window scaling",
              engine.sack_ok and engine.ts_ok and engine.ws_ok, str(negotiated))
    les.check("the data went through", echoed == b"hello")
    les.fact("kernel_synack_options", sorted(option_names(synack)))

    les.section("2. tcpscapy offers only MSS 1000 (no SACK, timestamps, window scaling)")
    with lab.enter("client"):
        conn = tcpscapy.connect(SERVER, PORT, mss=1000, sack=False, timestamps=False,
                                wscale=None, msl=0.2)
        conn.sendall(bytes(3000))
        got = b""
        while len(got) < 3000 and (chunk := conn.recv(timeout=3)):
            got += chunk
        conn.close()
        conn.wait_closed(3)
    trace = conn.trace
    les.ladder(trace, "the same handshake with fewer options")
    syn, synack = (e.segment for e in segments(trace)[:2])
    assert syn is not None and synack is not None
    sizes = [len(e.segment.payload) for e in segments(trace, "in") if e.segment.payload]
    les.say(f"the SYN-ACK now offers {sorted(option_names(synack))}; "
            f"the echo came back in segments of {sizes} bytes")
    les.check("the kernel offers SACK, timestamps, window scaling only if the SYN did",
              option_names(synack) == {"mss"})
    les.check("the kernel still states its own MSS", synack.options.mss is not None)
    les.check("the kernel sends at most the 1000 bytes our MSS allows per segment",
              len(sizes) >= 3 and max(sizes) <= 1000 and sum(sizes) == 3000, str(sizes))


if __name__ == "__main__":
    run(1, "The three-way handshake and the options each side offers", lesson)
