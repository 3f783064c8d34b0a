"""The lossy-path table: 10 MB up and down through random loss, tcpscapy vs the kernel.

    python -m tcpscapy.bench.lossy [--size BYTES] [--loss 0,1,2,5] [--repeat N] [--write]

One lab of its own (prefix `ccb` + random hex). Loss is made on the lab's switch
(iptables FORWARD `-m statistic --mode random --probability P -j DROP`, both
directions, through br_netfilter), as the wire loss tests do: the LAN RTT of a
veth bridge, well under a millisecond. Up: the client sends SIZE bytes to a
kernel sink, which answers the count; tcpscapy.connect() with each congestion
control, and a kernel client with TCP_CONGESTION cubic and bbr. Down: the
client asks a kernel source for SIZE bytes, which the kernel sends with
TCP_CONGESTION cubic or bbr; the client is tcpscapy.connect() or a kernel
socket (the sender's controller is the kernel's either way: the figure shows
tcpscapy's receiving side: SACK, ACK policy, window). Each cell is the median of
`--repeat` runs of the wall time from connect to the last byte (up: to the
sink's count). Ratios are tcpscapy's time over the kernel's in the same run.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tcpscapy
from tcpscapy import netns
from tcpscapy.core.cc import NAMES
from tcpscapy.io.driver import close_all
from tcpscapy.lab import ADDRESSES, Lab

PORT = 7100
TIMEOUT = 120.0
SERVER = r"""
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("ready", flush=True)
def exactly(c, n):
    got = b""
    while len(got) < n:
        part = c.recv(n - len(got))
        if not part:
            raise ConnectionError("short header")
        got += part
    return got
def serve(c):
    with c:
        c.settimeout(120)
        try:
            op, size, cc = exactly(c, 1), int.from_bytes(exactly(c, 8), "big"), exactly(c, 8)
            if op == b"S":  # sink: count to EOF, answer the count
                n = 0
                while data := c.recv(1 << 20):
                    n += len(data)
                c.sendall(n.to_bytes(8, "big"))
            else:  # source: send `size` bytes with the asked congestion control
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.rstrip(b"\0"))
                chunk = memoryview(bytes(1 << 20))
                while size > 0:
                    size -= c.send(chunk[: min(size, 1 << 20)])
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
SWITCH_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def header(op: bytes, size: int, cc: str) -> bytes:
    return op + size.to_bytes(8, "big") + cc.encode().ljust(8, b"\0")


class Lossy:
    def __init__(self, size: int) -> None:
        self.size = size
        self.lab = Lab(f"ccb{secrets.token_hex(3)}")
        self.server = ADDRESSES["server"]
        self.loss = 0.0

    def __enter__(self) -> Lossy:
        self.lab.up()
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
        with netns.enter(self.lab.switch_ns):
            Path(SWITCH_NF).write_text("1\n")
        proc = self.lab.popen("server", [sys.executable, "-c", SERVER, self.server, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return self

    def __exit__(self, *exc: object) -> None:
        close_all(linger=0.2)
        self.lab.down()

    def set_loss(self, loss: float) -> None:
        """Replace the switch's DROP rules: `loss` of each direction's packets."""
        self._iptables("-F", "FORWARD")
        if loss:
            for host in ("client", "server"):
                self._iptables("-A", "FORWARD", "-s", ADDRESSES[host], "-m", "statistic",
                               "--mode", "random", "--probability", f"{loss:.4f}", "-j", "DROP")
        self.loss = loss

    def _iptables(self, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.lab.switch_ns, "iptables", "-w", "5", *args],
                       check=True, capture_output=True, timeout=20)

    # -- one transfer each; returns seconds ------------------------------------------------

    def tcpscapy_up(self, cc: str, **options: object) -> float:
        data = bytes(self.size)
        with self.lab.enter("client"):
            began = time.perf_counter()
            conn = tcpscapy.connect(self.server, PORT, timeout=10, cc=cc, **options)
            try:
                conn.sendall(header(b"S", 0, "") + data, timeout=TIMEOUT)
                conn.shutdown()
                reply = _read_all(lambda: conn.recv(1 << 20, timeout=TIMEOUT))
            finally:
                conn.close()
        took = time.perf_counter() - began
        _check(int.from_bytes(reply, "big"), self.size)
        return took

    def tcpscapy_down(self, sender_cc: str) -> float:
        with self.lab.enter("client"):
            began = time.perf_counter()
            conn = tcpscapy.connect(self.server, PORT, timeout=10)
            try:
                conn.sendall(header(b"R", self.size, sender_cc))
                got = _count_all(lambda: conn.recv(1 << 20, timeout=TIMEOUT))
            finally:
                conn.close()
        _check(got, self.size)
        return time.perf_counter() - began

    def kernel_up(self, cc: str) -> float:
        data = bytes(self.size)
        with self.lab.enter("client"):
            began = time.perf_counter()
            sock = socket.socket()
            sock.settimeout(TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
            with sock:
                sock.connect((self.server, PORT))
                sock.sendall(header(b"S", 0, "") + data)
                sock.shutdown(socket.SHUT_WR)
                reply = _read_all(lambda: sock.recv(1 << 20))
            took = time.perf_counter() - began
        _check(int.from_bytes(reply, "big"), self.size)
        return took

    def kernel_down(self, sender_cc: str) -> float:
        with self.lab.enter("client"):
            began = time.perf_counter()
            with socket.create_connection((self.server, PORT), TIMEOUT) as sock:
                sock.sendall(header(b"R", self.size, sender_cc))
                got = _count_all(lambda: sock.recv(1 << 20))
            took = time.perf_counter() - began
        _check(got, self.size)
        return took


def _read_all(recv: object) -> bytes:
    out = b""
    while chunk := recv():  # type: ignore[operator]
        out += chunk
    return out


def _count_all(recv: object) -> int:
    n = 0
    while chunk := recv():  # type: ignore[operator]
        n += len(chunk)
    return n


def _check(got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"transfer incomplete: {got} of {want} bytes")


Rows = list[tuple[str, float, dict[str, float]]]


def measure(size: int, losses: list[float], repeat: int) -> Rows:
    """(direction, loss, {column: median seconds}) for every row."""
    rows = []
    with Lossy(size) as bench:
        for loss in losses:
            bench.set_loss(loss)
            up: dict[str, list[float]] = {}
            down: dict[str, list[float]] = {}
            for _ in range(repeat):  # interleaved, so drifts hit every column alike
                for cc in NAMES:
                    up.setdefault(f"tcpscapy {cc}", []).append(bench.tcpscapy_up(cc))
                up.setdefault("tcpscapy cubic -hystart", []).append(
                    bench.tcpscapy_up("cubic", hystart=False))
                for cc in ("cubic", "bbr"):
                    up.setdefault(f"kernel {cc}", []).append(bench.kernel_up(cc))
                    down.setdefault(f"tcpscapy <- {cc}", []).append(bench.tcpscapy_down(cc))
                    down.setdefault(f"kernel <- {cc}", []).append(bench.kernel_down(cc))
            rows.append(("up", loss, {k: statistics.median(v) for k, v in up.items()}))
            rows.append(("down", loss, {k: statistics.median(v) for k, v in down.items()}))
            print(f"  {loss:.0%}: up {rows[-2][2]}\n       down {rows[-1][2]}", file=sys.stderr)
    return rows


def table(size: int, rows: Rows, repeat: int) -> str:
    mb = size / 1e6
    lines = [f"### Lossy path: {mb:g} MB through random loss, LAN RTT (veth bridge)", "",
             f"Median of {repeat} run(s) per cell, seconds; ratios are tcpscapy over the "
             "kernel in the same run (≤ 1.0: as fast or faster).", "",
             "| up: loss | tcpscapy newreno | tcpscapy cubic | tcpscapy cubic, no HyStart++ "
             "| tcpscapy bbr | kernel cubic | kernel bbr | cubic / kernel cubic "
             "| cubic no HyStart++ / kernel cubic | newreno / kernel cubic "
             "| bbr / kernel bbr |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for direction, loss, t in rows:
        if direction != "up":
            continue
        lines.append(
            f"| {loss:.0%} | {t['tcpscapy newreno']:.2f} | {t['tcpscapy cubic']:.2f} "
            f"| {t['tcpscapy cubic -hystart']:.2f} "
            f"| {t['tcpscapy bbr']:.2f} | {t['kernel cubic']:.2f} | {t['kernel bbr']:.2f} "
            f"| {t['tcpscapy cubic'] / t['kernel cubic']:.2f}x "
            f"| {t['tcpscapy cubic -hystart'] / t['kernel cubic']:.2f}x "
            f"| {t['tcpscapy newreno'] / t['kernel cubic']:.2f}x "
            f"| {t['tcpscapy bbr'] / t['kernel bbr']:.2f}x |")
    lines += ["", "| down: loss | tcpscapy <- kernel cubic | kernel <- kernel cubic "
              "| tcpscapy <- kernel bbr | kernel <- kernel bbr | ratio (cubic sender) "
              "| ratio (bbr sender) |", "|---|---|---|---|---|---|---|"]
    for direction, loss, t in rows:
        if direction != "down":
            continue
        lines.append(
            f"| {loss:.0%} | {t['tcpscapy <- cubic']:.2f} | {t['kernel <- cubic']:.2f} "
            f"| {t['tcpscapy <- bbr']:.2f} | {t['kernel <- bbr']:.2f} "
            f"| {t['tcpscapy <- cubic'] / t['kernel <- cubic']:.2f}x "
            f"| {t['tcpscapy <- bbr'] / t['kernel <- bbr']:.2f}x |")
    return "\n".join(lines)


BEGIN, END = "<!-- lossy:begin -->", "<!-- lossy:end -->"


def write(path: Path, generated: str) -> None:
    """Replace this table's block in BENCHMARKS.md (appended the first time)."""
    block = f"{BEGIN}\n{generated}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so the lab is removed on the way out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tcpscapy.bench.lossy")
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--loss", default="0,1,2,5", help="percent, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", metavar="FILE", help="put the table into FILE (BENCHMARKS.md)")
    args = parser.parse_args(argv)
    losses = [float(p) / 100 for p in args.loss.split(",")]
    signal.signal(signal.SIGTERM, _stop)
    rows = measure(args.size, losses, args.repeat)
    text = table(args.size, rows, args.repeat)
    print(text)
    if args.write:
        write(Path(args.write), text)


if __name__ == "__main__":
    main()
