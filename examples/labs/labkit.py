"""What every lab script shares: a throwaway lab, kernel peers, checks, the ladder.

A lab script calls `run(number, title, lesson)`. `run` builds a lab of its own
(namespaces PREFIX<random>-client|server|attacker|sw: client 10.77.0.1, server
10.77.0.2, attacker 10.77.0.3; PREFIX is "lab", or `--prefix P` on the
script's command line, or $TCPSCAPY_LAB_PREFIX), calls `lesson(lab, les)`, and
always removes the lab again. The lesson prints what happens and calls `les.check(...)` for
each outcome it teaches; the script ends with a line

    RESULT {"lab": 4, "ok": true, "checks": {...}, "facts": {...}}

(for the test suite) and exits 0 only if every check held, 1 if one did not,
4 without root.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from tcpscapy import netns
from tcpscapy.core.segment import Segment
from tcpscapy.core.state import State
from tcpscapy.io import codec
from tcpscapy.io.driver import close_all
from tcpscapy.io.rawsock import open_link
from tcpscapy.lab import Lab, LabUsageError
from tcpscapy.trace import TraceEntry, ladder

CLIENT, SERVER, ATTACKER = "10.77.0.1", "10.77.0.2", "10.77.0.3"
EXIT_NEEDS_ROOT = 4

# A kernel (Linux TCP) server: `python3 -c KERNEL_SERVER HOST PORT MODE [fastopen]`.
# It prints "ready" once listening, then serves each connection in a thread:
#   echo      send back what arrives until EOF, then close
#   count     read until EOF, answer b"got N", close
#   greet     send b"hello\n" and close at once (the server closes first)
#   blob:N    send N bytes (b"0123456789" repeated), then close
#   http      read one request, answer a tiny HTTP response, close
# With "fastopen" the listening socket accepts TCP Fast Open (TCP_FASTOPEN).
KERNEL_SERVER = r"""
import contextlib, socket, sys, threading
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.create_server((host, port), backlog=128)
if "fastopen" in sys.argv[4:]:
    srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
print("ready", flush=True)
def serve(c):
    with c, contextlib.suppress(OSError):  # a peer may reset: that is what some labs do
        if mode == "greet":
            c.sendall(b"hello\n")
        elif mode.startswith("blob:"):
            n = int(mode[5:])
            c.sendall((b"0123456789" * (n // 10 + 1))[:n])
        elif mode == "http":
            c.recv(65536)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
        else:
            total = 0
            while data := c.recv(65536):
                total += len(data)
                if mode == "echo":
                    c.sendall(data)
            if mode == "count":
                c.sendall(b"got %d" % total)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Lesson:
    """Prints what a lab shows and keeps the outcome of every check."""

    def __init__(self, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.checks: dict[str, bool] = {}
        self.facts: dict[str, Any] = {}
        self.color = sys.stdout.isatty()

    def section(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def ladder(self, trace: Iterable[TraceEntry], title: str | None = None, *,
               absolute: bool = False) -> None:
        """Print a ladder: seq/ack relative to each side's first seq unless `absolute`."""
        if title:
            print(f"\n-- {title}")
        width = shutil.get_terminal_size().columns if self.color else None
        print(ladder(trace, relative=not absolute, width=width, color=self.color), flush=True)

    def excerpt(self, trace: list[TraceEntry], spans: Iterable[tuple[int, int]],
                title: str) -> None:
        """A ladder of trace[start:stop] for each span, saying how many rows each gap left
        out (the data segments of a long transfer, say)."""
        entries: list[TraceEntry] = []
        omitted: dict[int, int] = {}
        at = 0
        for start, stop in spans:
            start, stop = max(start, at), min(stop, len(trace))
            if start > at:
                omitted[len(entries)] = start - at
            entries += trace[start:stop]
            at = max(at, stop)
        if at < len(trace):
            omitted[len(entries)] = len(trace) - at
        print(f"\n-- {title}")
        width = shutil.get_terminal_size().columns if self.color else None
        print(ladder(entries, width=width, color=self.color, omitted=omitted), flush=True)

    def fact(self, name: str, value: Any) -> Any:
        """A figure worth printing (and handing to the tests)."""
        self.facts[name] = value
        return value

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """One outcome the lab teaches: ✔ if it happened, ✘ (and a failing exit) if not."""
        ok = bool(ok)
        self.checks[name] = ok and self.checks.get(name, True)
        mark = "✔" if ok else "✘"
        print(f"   {mark} {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def run(number: int, title: str, lesson: Callable[[Lab, Lesson], None], *,
        make_lab: Callable[[str], Lab] = Lab) -> NoReturn:
    """Build a lab, run the lesson in it, remove the lab, print RESULT, exit.

    `make_lab(prefix)` builds another kind of lab (tcpscapy.routed.RoutedLab).
    """
    if not netns.is_privileged():
        print(f"lab {number} needs root (network namespaces, raw sockets): run it as root",
              file=sys.stderr)
        sys.exit(EXIT_NEEDS_ROOT)
    parser = argparse.ArgumentParser(description=f"Lab {number}: {title}")
    parser.add_argument("--prefix", default=os.environ.get("TCPSCAPY_LAB_PREFIX") or "lab",
                        help="lab namespace name prefix; a random suffix is added "
                             "(default: $TCPSCAPY_LAB_PREFIX, else lab)")
    args = parser.parse_args()
    les = Lesson(number, title)
    try:
        lab = make_lab(f"{args.prefix}{secrets.token_hex(3)}")
    except LabUsageError as exc:
        parser.error(str(exc))
    print(f"Lab {number}: {title}")
    print(f"(lab {lab.prefix}: client {lab.addr('client')}, server {lab.addr('server')}, "
          f"attacker {lab.addr('attacker')})")
    started = time.monotonic()
    try:
        lab.up()
        lesson(lab, les)
    except Exception as exc:
        traceback.print_exc()
        les.check("the lab ran to its end", False, f"{type(exc).__name__}: {exc}")
    finally:
        close_all(linger=0.5)
        lab.down()
    les.fact("seconds", round(time.monotonic() - started, 2))
    verdict = "every check held" if les.ok else "SOME CHECKS FAILED"
    print(f"\nLab {number}: {verdict} ({len(les.checks)} checks, {les.facts['seconds']} s)")
    print("RESULT " + json.dumps({"lab": number, "ok": les.ok, "checks": les.checks,
                                  "facts": les.facts}, default=str), flush=True)
    sys.exit(0 if les.ok else 1)


# -- kernel peers --------------------------------------------------------------------


def kernel_server(lab: Lab, host: str, port: int, mode: str = "echo", *,
                  fastopen: bool = False) -> subprocess.Popen[str]:
    """Start a kernel server in `host` (lab.down() stops it); returns once it listens."""
    argv = [sys.executable, "-c", KERNEL_SERVER, lab.addr(host), str(port), mode]
    proc = lab.popen(host, argv + (["fastopen"] if fastopen else []),
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the kernel {mode} server on {host}:{port} did not start")
    return proc


def kernel_python(lab: Lab, host: str, code: str, *args: str,
                  timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a small Python program with the kernel's sockets in `host`."""
    return lab.run(host, [sys.executable, "-c", code, *args], capture_output=True, text=True,
                   timeout=timeout)


def iptables(lab: Lab, host: str, *args: str) -> str:
    """Run iptables in `host` (the lab's own namespace: nothing outside is touched)."""
    res = lab.run(host, ["iptables", "-w", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)} in {host}: {res.stderr.strip()}")
    return res.stdout


def drop_first(lab: Lab, host: str, chain: str, match: list[str], n: int) -> None:
    """Drop the first `n` packets matching `match` in `host`'s `chain`.

    Each rule matches only the first packet it sees (-m statistic --mode nth
    --every a large number), so n such rules drop the first n and let every
    later one through.
    """
    for _ in range(n):
        iptables(lab, host, "-A", chain, *match, "-m", "statistic", "--mode", "nth",
                 "--every", "1000000", "--packet", "0", "-m", "comment", "--comment",
                 "lab drop", "-j", "DROP")


def dropped(lab: Lab, host: str, chain: str) -> int:
    """Packets the lab's DROP rules in `chain` dropped so far."""
    listing = iptables(lab, host, "-nvxL", chain)
    return sum(int(line.split()[0]) for line in listing.splitlines()
               if "lab drop" in line and line.split()[0].isdigit())


def netstat_counter(lab: Lab, host: str, group: str, name: str) -> int:
    """One counter of /proc/net/snmp or /proc/net/netstat (group "Tcp", "TcpExt", ...)."""
    values: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        text = lab.run(host, ["cat", path], capture_output=True, text=True, check=True).stdout
        rows = [line.split() for line in text.splitlines() if line.startswith(group + ":")]
        for names, numbers in zip(rows[::2], rows[1::2], strict=True):
            values.update(zip(names[1:], map(int, numbers[1:]), strict=True))
    return values.get(name, 0)


# -- raw probes ------------------------------------------------------------------------


def probe(lab: Lab, host: str, seg: Segment, timeout: float = 1.0) -> Segment | None:
    """Send one hand-made segment from `host` and return the first answer from its
    destination's port to its source port (None if none came within `timeout`)."""
    with lab.enter(host), open_link(seg.dst) as link:
        link.send(codec.encode(seg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for packet, skip_csum in link.recv_many():
                answer = codec.decode(packet, verify_checksum=not skip_csum)
                if answer is not None and (answer.src, answer.sport, answer.dport) == \
                        (seg.dst, seg.dport, seg.sport):
                    return answer
            time.sleep(0.002)
    return None


# -- reading traces --------------------------------------------------------------------


def states(trace: Iterable[TraceEntry], side: str = "local") -> list[State]:
    """The states one side went through, in order (the first one's old state first)."""
    out: list[State] = []
    for entry in trace:
        if entry.state_change is not None and entry.side == side:
            old, new = entry.state_change
            if not out:
                out.append(old)
            out.append(new)
    return out


def passes(path: list[State], *wanted: State) -> bool:
    """True if `path` contains `wanted` in this order (other states may lie between)."""
    it = iter(path)
    return all(any(state is want for state in it) for want in wanted)


def segments(trace: Iterable[TraceEntry], direction: str | None = None) -> list[TraceEntry]:
    """The entries that carry a segment, optionally only those going one way."""
    return [e for e in trace if e.segment is not None
            and (direction is None or e.direction == direction)]


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@contextmanager
def in_thread(target: Callable[[], Any], name: str) -> Iterator[dict[str, Any]]:
    """Run `target` on a thread for the block; its result (or exception) lands in the dict."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        thread.join(30)
