"""Lab 12: behind NAT -- what a masquerading router does to a connection.

The routed lab: client 10.78.1.2 -- router -- server 10.78.2.2; the router
MASQUERADEs what it forwards toward the server: it replaces the source address
with its own on that side, 10.78.2.1, and keeps a table (conntrack) of each
connection's mapping to translate the answers back.

Part 1: a tcpscapy client connects from port 40000 to a tcpscapy listener on
the server. The client's ladder shows its own 10.78.1.2:40000; the listener's
shows a peer 10.78.2.1:40000, the router. The router kept the port, since it
was free, and left the sequence numbers alone: both ladders, printed with
absolute numbers, show the same ISNs. `conntrack -L` on the router shows the
mapping: the original direction as the client sent it, the reply direction as
the server answers it.

Part 2: the router itself already holds a connection from 10.78.2.1:40001 to
the same server port. When the client connects from 40001 too, the pair
10.78.2.1:40001 -> 10.78.2.2:8080 is taken, so the router picks another
source port. The client never learns: it still sees its own port 40001.
This is why a server behind NAT cannot tell clients apart by address, and why
a client cannot know the address and port its peer sees (NAT traversal, STUN).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from labkit import Lesson, run, segments

import tcpscapy
from tcpscapy.io.driver import Driver
from tcpscapy.lab import Lab
from tcpscapy.routed import RoutedLab

PORT = 8080
SPORT = 40000  # part 1; part 2 uses SPORT + 1
MSL = 0.25

# A kernel client in the router's own namespace: holds ROUTER:SPORT -> SERVER:PORT open
# until its standard input closes.
HOLDER = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.connect((sys.argv[3], int(sys.argv[4])))
print("connected", flush=True)
sys.stdin.read()
"""


def nat_lab(prefix: str) -> Lab:
    return RoutedLab(prefix, nat=True)


def conntrack(lab: Lab, client: str) -> list[dict[str, str]]:
    """The router's TCP conntrack entries from `client`: the original direction's
    src/sport and the reply direction's dst/dport (where the answers go)."""
    argv = (["conntrack", "-L", "-p", "tcp"] if shutil.which("conntrack")
            else ["cat", "/proc/net/nf_conntrack"])  # the same lines, without the tool
    out = lab.run("router", argv, capture_output=True, text=True, check=True).stdout
    entries = []
    for line in out.splitlines():
        pairs = [word.split("=", 1) for word in line.split() if "=" in word]
        orig = dict(pairs[:4])  # src, dst, sport, dport as sent; then the reply's four
        reply = dict(pairs[4:8])
        if orig.get("src") == client and "tcp" in line:
            entries.append({"line": line.strip(), "src": orig["src"], "sport": orig["sport"],
                            "reply_dst": reply["dst"], "reply_dport": reply["dport"]})
    return entries


def connect_once(lab: Lab, client_drv: Driver, listener: tcpscapy.Listener, sport: int
                 ) -> tuple[tcpscapy.Connection, tcpscapy.Connection, list[dict[str, str]]]:
    """Connect from `sport`, exchange a line, read the router's table, close both ends."""
    a = tcpscapy.connect(lab.addr("server"), PORT, driver=client_drv, sport=sport, msl=MSL,
                         timeout=10)
    b = listener.accept(timeout=10)
    a.sendall(b"who am I?\n")
    b.recv(100, timeout=5)
    b.sendall(f"you are {b.remote[0]}:{b.remote[1]}\n".encode())
    answer = a.recv(100, timeout=5).decode().strip()
    table = conntrack(lab, lab.addr("client"))
    print(f"   client asked, the server answered: {answer!r}")
    a.close()
    b.close()
    a.wait_closed(3)
    b.wait_closed(3)
    return a, b, table


def entry_for(table: list[dict[str, str]], sport: int) -> dict[str, str] | None:
    return next((e for e in table if e["sport"] == str(sport)), None)


def lesson(lab: Lab, les: Lesson) -> None:
    assert isinstance(lab, RoutedLab)
    client, server, router = lab.addr("client"), lab.addr("server"), lab.gateway("server")
    with lab.enter("client"):
        client_drv = Driver()
    with lab.enter("server"):
        server_drv = Driver()
    listener = tcpscapy.listen(PORT, server, driver=server_drv, msl=MSL)

    les.section(f"1. {client}:{SPORT} connects to {server}:{PORT} through the NAT")
    a, b, table = connect_once(lab, client_drv, listener, SPORT)
    les.ladder(list(a.trace)[:6], "the client's view (absolute seq/ack)", absolute=True)
    les.ladder(list(b.trace)[:6], "the server's view (absolute seq/ack)", absolute=True)
    entry = entry_for(table, SPORT)
    les.say("the router's conntrack entry: " + (entry["line"] if entry else "none"))
    les.check("the client's ladder shows its own address and port",
              a.local == (client, SPORT), f"{a.local[0]}:{a.local[1]}")
    les.check("the server sees the router's address, not the client's",
              b.remote[0] == router, f"{b.remote[0]}:{b.remote[1]}")
    les.check("the router kept the source port: it was free", b.remote[1] == SPORT)
    syn_out = segments(a.trace, "out")[0].segment
    syn_in = segments(b.trace, "in")[0].segment
    les.check("NAT left the sequence numbers alone: the same ISN on both sides",
              syn_out.seq == syn_in.seq, f"{syn_out.seq} / {syn_in.seq}")
    les.check(f"conntrack maps {client}:{SPORT} to {router}:{SPORT}",
              entry is not None and (entry["reply_dst"], entry["reply_dport"])
              == (router, str(SPORT)))

    les.section(f"2. the router already uses {router}:{SPORT + 1}: the port is rewritten")
    holder = lab.popen("router", [sys.executable, "-c", HOLDER, router, str(SPORT + 1), server,
                                  str(PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True)
    assert holder.stdout is not None and holder.stdin is not None
    held = holder.stdout.readline().strip() == "connected"
    mine = listener.accept(timeout=10)  # the router's own connection
    a2, b2, table = connect_once(lab, client_drv, listener, SPORT + 1)
    holder.stdin.close()
    holder.wait(10)
    mine.close()
    les.ladder(list(a2.trace)[:3], "the client's view of its second connection")
    les.ladder(list(b2.trace)[:4], "the server's view of it")
    entry = entry_for(table, SPORT + 1)
    les.say("the router's conntrack entry: " + (entry["line"] if entry else "none"))
    les.say(f"the router's own connection: {mine.remote[0]}:{mine.remote[1]}")
    les.check(f"the router's own connection holds {router}:{SPORT + 1}",
              held and mine.remote == (router, SPORT + 1))
    les.check("the client still sees its own port", a2.local == (client, SPORT + 1))
    les.check("the server sees the router's address and another port",
              b2.remote[0] == router and b2.remote[1] != SPORT + 1,
              f"{b2.remote[0]}:{b2.remote[1]}")
    les.check("conntrack maps the client's port to the port the server sees",
              entry is not None and (entry["reply_dst"], entry["reply_dport"])
              == (router, str(b2.remote[1])))
    listener.close()
    client_drv.close()
    server_drv.close()


if __name__ == "__main__":
    run(12, "Behind NAT: what a masquerading router does to a connection", lesson,
        make_lab=nat_lab)
