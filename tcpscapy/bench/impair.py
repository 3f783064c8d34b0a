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
from collections.abc import Callable
from pathlib import Path

from tcpscapy.routed import RoutedLab

PORT = 7778
FLOOD_COUNT = 150_000
FLOOD_SECONDS = 5.0
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
began = time.monotonic()
end, rate = began + %(seconds)f, %(rate)f
for i in range(%(count)d):
    try:
        s.sendto(payload, ("%(dst)s", %(port)d))
    except OSError:
        pass
    if i & 15 == 0:
        now = time.monotonic()
        if now > end:
            break
        if rate and now < began + i / rate:  # paced: bursts of 16 at most
            time.sleep(began + i / rate - now)
print(i + 1, time.monotonic() - began, flush=True)
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


def forwarding_rate(lab: RoutedLab, rate: float = 0.0) -> tuple[float, float, float]:
    """(packets/s through the router, packets per CPU-second of the process, packets/s the
    sender sent), the sender as fast as it can (`rate` 0: saturation) or paced at `rate`."""
    pid, sent_before = _forwarded(lab)
    cpu_before = _cpu_seconds(pid)
    receiver = _start(lab, "server", RECEIVER % {"port": PORT})
    sender = lab.popen("client", [sys.executable, "-c", SENDER % {
        "seconds": FLOOD_SECONDS, "count": FLOOD_COUNT, "rate": rate, "dst": lab.addr("server"),
        "port": PORT}], stdout=subprocess.PIPE, text=True)
    sent_out, _ = sender.communicate(timeout=FLOOD_SECONDS + 30)
    sent_count, sent_seconds = sent_out.split()
    out, _ = receiver.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    _, sent = _forwarded(lab)
    per_cpu_second = (sent - sent_before) / max(_cpu_seconds(pid) - cpu_before, 1e-3)
    return (float(result["packets"] / result["seconds"]), per_cpu_second,
            int(sent_count) / float(sent_seconds))


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


GOAL_PPS = 20_000.0  # the goal: this many packets/s with < 1 ms of own delay
IMPAIRED = {"delay": 0.001, "jitter": 0.0002, "loss": 0.01}  # every packet through the heap


def measure() -> dict[str, float]:
    lab = RoutedLab(f"tsbi{secrets.token_hex(3)}")
    try:
        lab.up()
        _start(lab, "server", ECHO % {"port": PORT + 1})
        kernel_rtt = round_trip_us(lab)
        lab.path(clear=True)
        neutral_rtt = round_trip_us(lab)
        # Paced first: a flood makes the process step down from real-time priority for a
        # second or two (see daemon.Daemon.schedule), which is not what this run is about.
        lab.path(clear=True, **IMPAIRED)  # also restarts the own-delay record
        paced_rate, _, offered = forwarding_rate(lab, GOAL_PPS)
        own = (lab.path_status() or {}).get("own_delay_us", {})
        rate, per_cpu, _ = forwarding_rate(lab)  # still impaired
        lab.path(clear=True)
        impaired_rate, impaired_per_cpu = rate, per_cpu
        rate, per_cpu, _ = forwarding_rate(lab)
        return {"rate": rate, "per_cpu": per_cpu, "impaired_rate": impaired_rate,
                "impaired_per_cpu": impaired_per_cpu, "added": (neutral_rtt - kernel_rtt) / 2,
                "kernel_rtt": kernel_rtt, "rtt": neutral_rtt,
                "paced_rate": paced_rate, "offered": offered, "own_p99": float(own.get("p99", 0.0))}
    finally:
        lab.down()


RATE = "impairment router: forwarding rate at saturation (100-byte UDP, no impairment)"
PER_CPU = "impairment router: packets per CPU-second of the process (no impairment)"
IMPAIRED_RATE = "impairment router: forwarding rate at saturation (1 ms ±0.2 ms delay, 1% loss)"
IMPAIRED_PER_CPU = "impairment router: packets per CPU-second (1 ms ±0.2 ms delay, 1% loss)"
ADDED = "impairment router: latency added per pass (UDP round trip on minus off, halved)"
OFFERED = "impairment router: sent by the client, paced at 20k packets/s"
PACED = "impairment router: delivered of that (1 ms delay, 1% loss)"
OWN_P99 = "impairment router: own delay p99 at 20k packets/s offered (1 ms delay, 1% loss)"
# One lab gives every figure: the first measures, the others take that run's values.
_pending: dict[str, list[float]] = {}


def _figure(key: str) -> Callable[[], float]:
    _pending[key] = []

    def take() -> float:
        if not _pending[key]:
            m = measure()
            for k, values in _pending.items():
                values.append(m[k])
        return _pending[key].pop(0)
    return take


FIGURES = [
    (RATE, "packets/s", _figure("rate")),
    (PER_CPU, "packets/s", _figure("per_cpu")),
    (IMPAIRED_RATE, "packets/s", _figure("impaired_rate")),
    (IMPAIRED_PER_CPU, "packets/s", _figure("impaired_per_cpu")),
    (ADDED, "µs", _figure("added")),
    (OFFERED, "packets/s", _figure("offered")),
    (PACED, "packets/s", _figure("paced_rate")),
    (OWN_P99, "µs", _figure("own_p99")),
]


if __name__ == "__main__":
    m = measure()
    print(f"forwarding {m['rate']:,.0f} packets/s ({m['per_cpu']:,.0f} per CPU-second); "
          f"with delay and loss {m['impaired_rate']:,.0f} packets/s "
          f"({m['impaired_per_cpu']:,.0f} per CPU-second); "
          f"round trip {m['kernel_rtt']:.0f} µs kernel alone, {m['rtt']:.0f} µs through the "
          f"process: +{m['added']:.0f} µs per pass; {m['offered']:,.0f}/s sent (paced at 20k/s), "
          f"{m['paced_rate']:,.0f}/s delivered, own delay p99 {m['own_p99']:.0f} µs")
