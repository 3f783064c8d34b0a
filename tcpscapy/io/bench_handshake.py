"""Handshake latency: tcpscapy.connect() against the kernel's own connect(), in a lab.

    sudo python -m tcpscapy.io.bench_handshake [ROUNDS]

Builds a throw-away lab (prefix tsdbench + random digits), starts a kernel
listener in the server namespace and times, from the client namespace, ROUNDS
kernel connect() calls and ROUNDS tcpscapy.connect() calls (each after 20
warm-up rounds; ours are aborted with RST, which the kernel listener ignores).
A timing script, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import secrets
import socket
import statistics
import subprocess
import sys
import time

import tcpscapy
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab

WARMUP = 20
SERVER_CODE = r"""
import socket
srv = socket.create_server(("10.77.0.2", 0), backlog=4096)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    conn.close()
"""


def summary(name: str, seconds: list[float]) -> float:
    xs = sorted(seconds)
    median = statistics.median(xs)
    p10, p90 = xs[len(xs) // 10], xs[len(xs) * 9 // 10]
    print(f"{name:20} median {median * 1e6:7.1f} us   p10 {p10 * 1e6:7.1f}   "
          f"p90 {p90 * 1e6:7.1f}   (n={len(xs)})")
    return median


def main(rounds: int = 200) -> None:
    lab = Lab(f"tsdbench{secrets.token_hex(3)}")
    lab.up()
    try:
        server = lab.popen("server", [sys.executable, "-c", SERVER_CODE],
                           stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        kernel: list[float] = []
        ours: list[float] = []
        with lab.enter("client"):
            for i in range(WARMUP + rounds):
                sock = socket.socket()
                start = time.perf_counter()
                sock.connect(("10.77.0.2", port))
                took = time.perf_counter() - start
                sock.close()
                if i >= WARMUP:
                    kernel.append(took)
            for i in range(WARMUP + rounds):
                start = time.perf_counter()
                conn = tcpscapy.connect("10.77.0.2", port)
                took = time.perf_counter() - start
                conn.abort()
                if i >= WARMUP:
                    ours.append(took)
        k = summary("kernel connect()", kernel)
        o = summary("tcpscapy.connect()", ours)
        print(f"tcpscapy / kernel: {o / k:.1f}x")
    finally:
        close_all(linger=0)
        lab.down()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
