"""A SYN flood from random spoofed sources costs `tcpscapy listen --syncookies always`
no memory per source: its RSS grows by a bounded amount, and curl still gets served.

The sources are any unicast address outside the lab subnet (as hping3
--rand-source), a new one nearly every SYN; the lab hosts have no route to them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tcpscapy.lab import Lab

pytestmark = pytest.mark.wire
LAB_PREFIX = "rl"
SERVER = "10.77.0.2"
SYNS = 20_000
GROWTH_LIMIT_KB = 8 * 1024  # bounded caches fill (MACs, address parses): ~4-5 MB measured


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def curl(lab: Lab) -> subprocess.CompletedProcess[str]:
    return lab.run("client", ["curl", "-sS", "--max-time", "20", f"http://{SERVER}/hello.txt"],
                   capture_output=True, text=True, timeout=40)


def test_a_random_source_flood_leaves_the_listener_small_and_serving(lab: Lab,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("still here\n")
    listener = lab.popen("server", [sys.executable, "-m", "tcpscapy", "listen", f"{SERVER}:80",
                                    "--http", str(tmp_path), "--syncookies", "always", "--json"],
                         stderr=subprocess.PIPE, text=True)
    assert listener.stderr is not None
    assert json.loads(listener.stderr.readline())["type"] == "listening"
    try:
        assert curl(lab).stdout == "still here\n"  # warm: the first connection's imports
        before = rss_kb(listener.pid)  # `ip netns exec` execs: the pid is the listener's
        flood = subprocess.run([sys.executable, "-m", "tcpscapy", "lab", "flood", "--prefix",
                                lab.prefix, "--count", str(SYNS), "--random-sources", "--json"],
                               capture_output=True, text=True, timeout=120)
        assert flood.returncode == 0, flood.stderr
        report = json.loads(flood.stdout)
        assert report["sent"] == SYNS and report["outside"]
        served = curl(lab)
        after = rss_kb(listener.pid)
    finally:
        listener.send_signal(signal.SIGTERM)
        _, err = listener.communicate(timeout=30)
    assert served.returncode == 0 and served.stdout == "still here\n", served.stderr
    summary = next(json.loads(line) for line in err.splitlines()
                   if line.startswith("{") and json.loads(line)["type"] == "summary")
    assert summary["counters"]["cookies_sent"] > 5000  # it did answer thousands of sources
    assert after - before < GROWTH_LIMIT_KB, f"RSS grew {after - before} KB"
