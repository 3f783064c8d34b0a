"""Lab 7: window scaling and a slow reader (zero window, window probes).

A kernel server sends 300 kB to a tcpscapy client whose receive buffer is
only 64 KiB and which does not read for a few seconds. Watch the window field: with
window scaling (RFC 7323) the 16-bit field counts units of 2^shift bytes, so
"win=512" from us means 512 << 7 = 65536 bytes. As the unread bytes pile up,
our window shrinks to zero and the sender must stop; it then sends zero-window
probes (RFC 9293 §3.8.6.1) at growing intervals, and we keep answering
"win=0" until the application reads. Then a window update lets the rest flow.
"""

from __future__ import annotations

import hashlib
import itertools
import time

from labkit import SERVER, Lesson, kernel_server, run, segments, wait_for

import tcpscapy
from tcpscapy.lab import Lab
from tcpscapy.trace import TraceEntry

PORT = 9100
SIZE = 300_000
BUFFER = 65536
PROBES = 3  # the reader sleeps until the sender has probed this often
MAX_PAUSE = 6.0


def expected() -> bytes:
    return (b"0123456789" * (SIZE // 10 + 1))[:SIZE]


def probes(trace: list[TraceEntry]) -> list[TraceEntry]:
    """The sender's zero-window probes: empty segments one byte below what we had."""
    found, end = [], None
    for entry in trace:
        seg = entry.segment
        if seg is None or entry.direction != "in":
            continue
        if seg.payload:
            end = max(end or 0, seg.seq + len(seg.payload))
        elif end is not None and seg.seq == (end - 1) % 2**32 and not seg.flags & 0x07:
            found.append(entry)
    return found


def snapshot(conn: tcpscapy.Connection) -> list[TraceEntry]:
    with conn.driver.lock:  # the driver appends from its own thread
        return list(conn.trace)


def next_out(trace: list[TraceEntry], entry: TraceEntry) -> TraceEntry | None:
    """Our first segment after `entry`."""
    later = trace[trace.index(entry) + 1:]
    return next((e for e in later if e.segment is not None and e.direction == "out"), None)


def lesson(lab: Lab, les: Lesson) -> None:
    kernel_server(lab, "server", PORT, f"blob:{SIZE}")
    with lab.enter("client"):
        opened = time.monotonic()
        conn = tcpscapy.connect(SERVER, PORT, window=BUFFER, wscale=7, msl=0.2,
                                trace_limit=None)
        # The slow reader: nothing is read while the buffer fills and the sender probes.
        wait_for(lambda: len(probes(snapshot(conn))) >= PROBES, MAX_PAUSE)
        paused = time.monotonic() - opened
        stalled = conn.engine.rcv_nxt
        started = time.monotonic()
        data = b""
        while chunk := conn.recv(timeout=5):
            data += chunk
        drained = time.monotonic() - started
        conn.close()
        conn.wait_closed(2)
    trace = list(conn.trace)
    engine = conn.engine
    out = segments(trace, "out")
    first_ack = out[1].segment
    zero = [e for e in out if e.segment.window == 0]
    found = probes(trace)
    reopen = next((e for e in out if zero and e.time > zero[-1].time
                   and e.segment.window > 0), None)
    if zero:  # the excerpt: the handshake, the window closing, the probes, the reopening
        first = trace.index(zero[0])
        last = trace.index(reopen) if reopen is not None else len(trace) - 1
        les.excerpt(trace, [(0, 5), (first - 6, last + 2)],
                    "the handshake, then the window closing, the probes and the reopening")
    answered = [p for p in found if (reply := next_out(trace, p)) is not None
                and reply.segment is not None and reply.segment.window == 0]
    times = [zero[0].time] + [p.time for p in found] if zero else []
    intervals = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    les.say(f"window scaling: we offered shift {engine.rcv_wscale}, the kernel "
            f"{engine.snd_wscale}; our first ACK says win={first_ack.window}, "
            f"i.e. {first_ack.window << engine.rcv_wscale} bytes")
    les.say(f"after {paused:.1f} s unread: {(stalled - engine.irs - 1) % 2**32} bytes in, "
            f"{len(zero)} ACKs with win=0 from us, {len(found)} probes from the kernel")
    les.say(f"from our first win=0 to each probe: intervals of {intervals} s")
    les.say(f"then the reader drained the rest in {drained:.3f} s")
    les.fact("probe_intervals", intervals)
    les.check("window scaling is in use and the window field is scaled by 2^7",
              engine.ws_ok and engine.rcv_wscale == 7
              and first_ack.window << 7 >= BUFFER - 1460)
    les.check("the slow reader's window fell to zero", bool(zero))
    les.check("the sender stopped at about the buffer size",
              BUFFER - 1460 * 2 <= (stalled - engine.irs - 1) % 2**32 <= BUFFER + 1460 * 2)
    les.check("the kernel sent zero-window probes while the window was shut", len(found) >= 2)
    les.check("each probe was answered at once with win=0", len(answered) == len(found))
    les.check("the probes came at growing intervals (back-off)",
              len(intervals) >= 2 and all(b >= a * 1.5 for a, b in
                                          itertools.pairwise(intervals)),
              str(intervals))
    les.check("reading reopened the window (a window update)", reopen is not None)
    les.check(f"all {SIZE} bytes arrived intact",
              hashlib.sha256(data).digest() == hashlib.sha256(expected()).digest())


if __name__ == "__main__":
    run(7, "Window scaling and a slow reader: zero window, window probes", lesson)
