"""The impairment router (tcpscapy.impair) on the wire: how fast it forwards, what it adds.

In a routed lab of its own (prefix `tsbi` + random hex), with the impairment process on and
set to change nothing:
- forwarding rate: a client process sends UDP datagrams of 100 bytes as fast as it can for
  a bounded count; a server process counts what arrives between the first and the last.
  The sender outruns the router, so this is the router's rate at saturation, on a 2-core
  machine whose other core runs the sender and the receiver.
- added latency: UDP ping-pong client → server → client, the median round trip with the
  process on minus with it off, halved: what one pass through the process adds.
Needs root.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tcpscapy.routed import RoutedLab

PORT = 7778
FLOOD_COUNT = 200_000
FLOOD_SECONDS = 10.0
PINGS = 2000
WARMUP = 100

RECEIVER = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind(("0.0.0.0", %(port)d))
print("ready", flush=True)
s.settimeout(None)
s.recv(2048)
first = last = time.monotonic(); n = 1
s.settimeout(1.0)
try:
    while True:
        s.recv(2048); n += 1; last = time.monotonic()
except TimeoutError:
    pass
print(json.dumps({"packets": n, "seconds": last - first}), flush=True)
"""

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(72)  # + 28 bytes of headers = 100
end = time.monotonic() + %(seconds)f
for i in range(%(count)d):
    try:
        s.sendto(payload, ("%(dst)s", %(port)d))
    except OSError:
        pass
    if i & 1023 == 0 and time.monotonic() > end:
        break
"""

ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", %(port)d))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


def _start(lab: RoutedLab, host: str, code: str) -> subprocess.Popen[str]:
    proc = lab.popen(host, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the impairment benchmark's {host} process did not start")
    return proc


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _forwarded(lab: RoutedLab) -> tuple[int, int]:
    """(pid of the impairment process, packets it has let through toward the server)."""
    status = lab.path_status() or {}
    return status["pid"], status["directions"]["to-server"]["counters"]["sent"]


def forwarding_rate(lab: RoutedLab) -> tuple[float, float]:
    """(packets/s through the router at saturation, packets per CPU-second of the process)."""
    pid, sent_before = _forwarded(lab)
    cpu_before = _cpu_seconds(pid)
    receiver = _start(lab, "server", RECEIVER % {"port": PORT})
    sender = lab.popen("client", [sys.executable, "-c", SENDER % {
        "seconds": FLOOD_SECONDS, "count": FLOOD_COUNT, "dst": lab.addr("server"),
        "port": PORT}])
    sender.wait(timeout=FLOOD_SECONDS + 30)
    out, _ = receiver.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    _, sent = _forwarded(lab)
    per_cpu_second = (sent - sent_before) / max(_cpu_seconds(pid) - cpu_before, 1e-3)
    return float(result["packets"] / result["seconds"]), per_cpu_second


def round_trip_us(lab: RoutedLab) -> float:
    """Median UDP round trip client → server → client, in µs."""
    with lab.enter("client"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(2.0)
        s.connect((lab.addr("server"), PORT + 1))
        samples = []
        for i in range(WARMUP + PINGS):
            began = time.perf_counter()
            s.send(b"ping")
            s.recv(64)
            if i >= WARMUP:
                samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def measure() -> dict[str, float]:
    lab = RoutedLab(f"tsbi{secrets.token_hex(3)}")
    try:
        lab.up()
        _start(lab, "server", ECHO % {"port": PORT + 1})
        kernel_rtt = round_trip_us(lab)
        lab.path(clear=True)
        impaired_rtt = round_trip_us(lab)
        rate, per_cpu = forwarding_rate(lab)
        status = lab.path_status() or {}
        own = status.get("own_delay_us", {})
        return {"rate": rate, "per_cpu": per_cpu, "added": (impaired_rtt - kernel_rtt) / 2,
                "kernel_rtt": kernel_rtt, "rtt": impaired_rtt,
                "own_p99": float(own.get("p99", 0.0))}
    finally:
        lab.down()


RATE = "impairment router: forwarding rate at saturation (100-byte UDP, no impairment)"
ADDED = "impairment router: latency added per pass (UDP round trip on minus off, halved)"
OWN_P99 = "impairment router: own delay p99 under the flood, as `lab status` shows it"
# One lab gives all three; the rate figure measures, the others take that run's values.
_pending: dict[str, list[float]] = {"added": [], "own_p99": []}


def rate_pps() -> float:
    m = measure()
    for key, values in _pending.items():
        values.append(m[key])
    return m["rate"]


def _taken(key: str) -> float:
    if not _pending[key]:
        rate_pps()
    return _pending[key].pop(0)


def added_us() -> float:
    return _taken("added")


def own_p99_us() -> float:
    return _taken("own_p99")


FIGURES = [
    (RATE, "packets/s", rate_pps),
    (ADDED, "µs", added_us),
    (OWN_P99, "µs", own_p99_us),
]


if __name__ == "__main__":
    m = measure()
    print(f"forwarding {m['rate']:,.0f} packets/s ({m['per_cpu']:,.0f} per CPU-second); "
          f"round trip {m['kernel_rtt']:.0f} µs kernel alone, {m['rtt']:.0f} µs through the "
          f"process: +{m['added']:.0f} µs per pass; own delay p99 {m['own_p99']:.0f} µs")
