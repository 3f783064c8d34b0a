"""SYN cookies on the wire: a tcpscapy listener in a lab, flooded from the attacker host.

Each figure builds its own lab (a unique prefix), runs the listener as a
separate process in the server host (so its memory is its own), floods it with
tcpscapy.io.flood from the attacker host in this process, and removes the lab.
Runs are bounded: a few seconds each. Needs root.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from tcpscapy.io.flood import flood
from tcpscapy.lab import Lab

PORT = 80
FLOOD_SECONDS = 3.0  # the throughput run: flood flat out for this long
FLOOD_CAP = 1_000_000  # SYNs; the duration ends the throughput run first
MEMORY_SYNS = 100_000
MEMORY_WARMUP = 5_000  # fills the bounded tables (orphan trace, neighbours) first
MEMORY_RATE = 20_000.0  # SYNs/s: below what the listener answers, so it sees all of them
SETTLE = 10.0  # seconds to wait for the listener to catch up with the flood

# The listener: prints "ready", then one JSON line (its clock, counters, VmRSS in KB)
# for each line it reads on stdin; stops at EOF.
LISTENER_CODE = r"""
import json, sys, time
import tcpscapy
ls = tcpscapy.listen(int(sys.argv[2]), sys.argv[1], syncookies="always")
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
print("ready", flush=True)
for _ in sys.stdin:
    print(json.dumps({"t": time.monotonic(), "rss_kb": rss(), **ls.engine.counters}),
          flush=True)
ls.close()
"""


class Listener:
    """The listener process in the lab's server host; `sample()` reads its counters."""

    def __init__(self, lab: Lab) -> None:
        self.proc = lab.popen("server", [sys.executable, "-c", LISTENER_CODE,
                                         lab.addr("server"), str(PORT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._stdout().readline().strip() != "ready":
            raise RuntimeError("the benchmark listener did not start")

    def _stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def sample(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._stdout().readline()))

    def close(self) -> None:
        """End of input: the listener closes and exits (its driver removes its guard rule)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def settle(self, syns: int) -> dict[str, float]:
        """Sample until the listener has counted `syns` SYNs or stops counting."""
        deadline = time.monotonic() + SETTLE
        last = self.sample()
        while last["syns_received"] < syns and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.sample()
            if now["syns_received"] == last["syns_received"]:
                return now  # the rest was dropped before it reached the listener
            last = now
        return last


@contextmanager
def flooded_lab() -> Iterator[tuple[Lab, Listener]]:
    lab = Lab(f"tsib{secrets.token_hex(3)}")
    try:
        lab.up()
        listener = Listener(lab)
        try:
            yield lab, listener
        finally:
            listener.close()
    finally:
        lab.down()


def _flood(lab: Lab, count: int, *, rate: float | None = None,
           duration: float | None = None) -> int:
    with lab.enter("attacker"):
        return flood(lab.addr("server"), PORT, count, rate=rate, duration=duration).sent


def cookies_per_second_on_the_wire() -> float:
    """Cookie SYN-ACKs the listener sends per second while flooded flat out."""
    with flooded_lab() as (lab, listener):
        _flood(lab, 2_000, rate=20_000.0)  # warm up: first-time paths and tables
        before = listener.sample()
        _flood(lab, FLOOD_CAP, duration=FLOOD_SECONDS)
        after = listener.sample()
        return (after["cookies_sent"] - before["cookies_sent"]) / (after["t"] - before["t"])


def memory(syns: int = MEMORY_SYNS) -> tuple[float, float, int]:
    """(VmRSS KB before, after, SYNs the listener counted) for `syns` flood SYNs."""
    with flooded_lab() as (lab, listener):
        _flood(lab, MEMORY_WARMUP, rate=MEMORY_RATE)
        before = listener.settle(MEMORY_WARMUP)
        _flood(lab, syns, rate=MEMORY_RATE)
        after = listener.settle(int(before["syns_received"]) + syns)
        return before["rss_kb"], after["rss_kb"], int(after["syns_received"]
                                                       - before["syns_received"])


def memory_growth_kb() -> float:
    """Listener VmRSS growth over 100,000 flood SYNs answered with cookies, in KB."""
    before, after, _ = memory()
    return after - before


FIGURES = [
    ("wire: cookie SYN-ACKs answered per second under flood", "SYN-ACKs/s",
     cookies_per_second_on_the_wire),
    ("wire: listener RSS growth over 100,000 flood SYNs", "KB", memory_growth_kb),
]


if __name__ == "__main__":
    print(f"cookies/s: {cookies_per_second_on_the_wire():,.0f}")
    rss_before, rss_after, counted = memory()
    print(f"VmRSS before {rss_before:,.0f} KB, after {rss_after:,.0f} KB "
          f"({rss_after - rss_before:+,.0f} KB) over {counted:,} SYNs")
