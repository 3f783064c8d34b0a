"""Lab 11: why did my transfer hang? Path MTU discovery, and a path MTU black hole.

A routed lab: client — router — server. Every host has MTU 1500 and offers MSS
1460, but the router's link toward the server takes only 1280-byte packets.
Every segment leaves with DF ("don't fragment") set, so the router may not cut
a 1500-byte packet: it drops it.

Part 1: the router says so, with ICMP "fragmentation needed (mtu 1280)" (RFC
1191). tcpscapy lowers its MSS to 1240 and resends what was lost at once,
without waiting for a retransmission timeout and without treating it as
congestion. The next connection to the same host starts at 1240: the path MTU
is cached per destination for 10 minutes.

Part 2: a firewall on the router drops those ICMP messages (a "black hole",
still common). Now nothing tells the sender: its full-size segments vanish. A
Linux client with the default net.ipv4.tcp_mtu_probing=0 hangs: it resends the
same 1448 bytes with growing timeouts, for many minutes. tcpscapy, after two
timeouts of full-size segments with nothing acknowledged, suspects a black hole
and steps down to 1160 bytes (RFC 8899's 1200-byte base), and the transfer
completes; Linux does the same with tcp_mtu_probing=1. (tcpscapy's RTO is 0.25 s
here so the lab is quick; with the standard 1 s the step comes after 3 s.)
"""

from __future__ import annotations

import subprocess
import sys
import time

from labkit import Lesson, kernel_server, run, segments

import tcpscapy
from tcpscapy.io.driver import Driver
from tcpscapy.lab import Lab
from tcpscapy.routed import RoutedLab

PORT = 8080
RTO = 0.25  # tcpscapy's retransmission timeout in part 2 (1 s by default): a quicker lab
SIZE = 300_000
MTU = 1280

# A kernel client: send SIZE bytes, half-close, wait for "got N"; with WAIT seconds per
# blocking call. Prints the answer (or "stuck"), its current MSS and retransmissions so far
# (struct tcp_info: tcpi_retransmits at byte 2, tcpi_snd_mss at byte 16).
KERNEL_CLIENT = r"""
import socket, struct, sys
host, port, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=wait)
try:
    s.sendall(bytes(size))
    s.shutdown(socket.SHUT_WR)
    answer = s.recv(100).decode()
except TimeoutError:
    answer = "stuck"
info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
print(answer.replace(" ", "_"), struct.unpack_from("=I", info, 16)[0], info[2])
"""


def routed_lab(prefix: str) -> Lab:
    return RoutedLab(prefix, mtu_server_side=MTU)


def notes(conn: tcpscapy.Connection, start: str) -> list[tuple[float, str]]:
    return [(e.time, e.note) for e in conn.trace if e.note.startswith(start)]


def upload(conn: tcpscapy.Connection) -> str:
    conn.sendall(bytes(SIZE), timeout=30)
    conn.shutdown()
    answer = conn.recv(100, timeout=30).decode()
    conn.close()
    conn.wait_closed(2)
    return answer


def lesson(lab: Lab, les: Lesson) -> None:
    assert isinstance(lab, RoutedLab)
    server = lab.addr("server")
    kernel_server(lab, "server", PORT, "count")
    les.section("1. the router answers with ICMP \"fragmentation needed\"")
    with lab.enter("client"):
        conn = tcpscapy.connect(server, PORT)
        answer = upload(conn)
    les.ladder(list(conn.trace)[:22], "the first flight, the ICMP, the resend at 1240 bytes")
    icmp = notes(conn, "ICMP fragmentation needed")
    lowered = notes(conn, "MSS 1460 -> 1240")
    data = [e for e in segments(conn.trace, "out") if e.segment.payload]
    first = data[0]
    resend = next((e for e in data if e.segment.seq == first.segment.seq and e is not first),
                  None)
    les.say(f"the sink answered {answer!r}; {len(icmp)} ICMP messages, "
            f"{conn.engine.retransmissions} segments resent")
    les.check(f"the router answered with ICMP fragmentation needed (mtu {MTU})",
              bool(icmp) and icmp[0][1].endswith(f"(mtu {MTU})"))
    les.check("tcpscapy lowered its MSS from 1460 to 1240", bool(lowered))
    les.check("the lost data went again at the new size before any timeout (RTO 1 s)",
              resend is not None and len(resend.segment.payload) <= MTU - 40 - 12
              and resend.time - first.time < 0.5,
              f"{resend.time - first.time:.3f} s" if resend else "no resend")
    les.check(f"all {SIZE} bytes arrived", answer == f"got {SIZE}")
    with lab.enter("client"):
        again = tcpscapy.connect(server, PORT)
        answer = upload(again)
    sizes = {len(e.segment.payload) for e in segments(again.trace, "out")}
    les.check("the next connection starts at 1240 (cached): no ICMP this time",
              answer == f"got {SIZE}" and not notes(again, "ICMP")
              and max(sizes) == MTU - 40 - 12, f"largest segment {max(sizes)}")

    les.section("2. the router's firewall drops that ICMP: a black hole")
    lab.drop_icmp = True
    lab.up()  # the router as the options now say
    probing = lab.sysctl("client", "net.ipv4.tcp_mtu_probing")
    # Three clients at once, each takes a few seconds: the kernel as it comes, tcpscapy,
    # and the kernel with tcp_mtu_probing=1 on the attacker host (whose packets to the
    # server take the same 1280-byte link).
    stuck = lab.popen("client", [sys.executable, "-c", KERNEL_CLIENT, server, str(PORT),
                                 str(SIZE), "2"], stdout=subprocess.PIPE, text=True)
    lab.sysctl("attacker", "net.ipv4.tcp_mtu_probing", "1")
    probing_client = lab.popen("attacker", [sys.executable, "-c", KERNEL_CLIENT, server,
                                            str(PORT), str(SIZE), "30"],
                               stdout=subprocess.PIPE, text=True)
    with lab.enter("client"):
        driver = Driver()  # a fresh stack: nothing cached from part 1
        try:
            start = time.monotonic()
            conn = tcpscapy.connect(server, PORT, driver=driver, rto=RTO)
            answer = upload(conn)
            took = time.monotonic() - start
        finally:
            driver.close()
    out, _ = stuck.communicate(timeout=30)
    kernel_answer, mss, retransmits = [*out.split(), "?", "?", "?"][:3]
    les.say(f"kernel client, tcp_mtu_probing={probing}: {kernel_answer} after 2 s, "
            f"MSS {mss}, retransmissions {retransmits}")
    les.check("a Linux client with tcp_mtu_probing=0 hangs: its 1448-byte segments vanish",
              probing == "0" and kernel_answer == "stuck" and mss == "1448")
    les.ladder([e for e in conn.trace if e.state_change or e.note][:12],
               "tcpscapy: state changes and notes only")
    stepped = notes(conn, "MSS 1460 -> 1160")
    les.say(f"tcpscapy: {answer!r} after {took:.1f} s")
    les.check("tcpscapy suspected a black hole after two timeouts and stepped down to 1160",
              bool(stepped) and "black hole?" in stepped[0][1])
    les.check(f"tcpscapy's {SIZE} bytes all arrived through the black hole",
              answer == f"got {SIZE}")
    out, _ = probing_client.communicate(timeout=60)
    answer, mss, _ = [*out.split(), "?", "?", "?"][:3]
    les.say(f"kernel client, tcp_mtu_probing=1: {answer}, MSS now {mss}")
    les.check("with tcp_mtu_probing=1 the kernel finds its way too", answer == f"got_{SIZE}")

if __name__ == "__main__":
    run(11, "Why did my transfer hang? Path MTU discovery and black holes", lesson,
        make_lab=routed_lab)
