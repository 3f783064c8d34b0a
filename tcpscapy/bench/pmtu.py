"""Path MTU on the wire: 20 MB up through a router whose server-side link takes 1280 bytes.

The routed lab (tcpscapy.routed), both of the router's links at a route MTU of
1280 while the hosts keep 1500: the first full-size segments get "fragmentation
needed" from the router, and the sender has to learn. Each sample builds a
fresh lab (so neither side starts with a learnt path MTU: the kernel keeps one
per route for 10 minutes, tcpscapy per process), runs one client in the client
host -- tcpscapy.connect() or a kernel socket, in the same run -- against a
kernel sink in the server host that answers "got N" after EOF, and times from
connect() to that answer. The kernel client uses the lab's default congestion
control (bbr on this kernel); tcpscapy's is NewReno with SACK.
"""

from __future__ import annotations

import secrets
import subprocess
import sys

from tcpscapy.bench.wire import Figure

UP_TCPSCAPY = "20 MB up through a 1280-MTU router: tcpscapy.connect()"
UP_KERNEL = "20 MB up through a 1280-MTU router: kernel client"
SIZE = 20_000_000
MTU = 1280
PREFIX = "icb"
TIMEOUT = 120

SINK = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
total = 0
while data := conn.recv(1 << 20):
    total += len(data)
conn.sendall(b"got %d" % total)
conn.close()
"""

CLIENT = r"""
import socket, sys, time
mode, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = bytes(range(256)) * (size // 256) + bytes(size % 256)
if mode == "tcpscapy":
    import tcpscapy
    start = time.monotonic()
    conn = tcpscapy.connect(host, port)
    conn.sendall(data)
    conn.shutdown()
    reply = conn.recv(100, timeout=60)
else:
    start = time.monotonic()
    conn = socket.create_connection((host, port), timeout=60)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    reply = conn.recv(100)
took = time.monotonic() - start
conn.close()
if reply != b"got %d" % size:
    sys.exit(f"the sink answered {reply!r}")
print(took)
"""


def upload_seconds(mode: str, size: int = SIZE, mtu: int = MTU) -> float:
    """One upload of `size` bytes through a fresh routed lab; seconds."""
    from tcpscapy.routed import RoutedLab

    lab = RoutedLab(f"{PREFIX}{secrets.token_hex(3)}", mtu_client_side=mtu,
                    mtu_server_side=mtu)
    try:
        lab.up()
        sink = lab.popen("server", [sys.executable, "-c", SINK, lab.addr("server")],
                         stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        port = sink.stdout.readline().strip()
        if not port:
            raise RuntimeError("the kernel sink did not start")
        client = lab.popen("client", [sys.executable, "-c", CLIENT, mode, lab.addr("server"),
                                      port, str(size)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = client.communicate(timeout=TIMEOUT)
        if client.returncode != 0:
            raise RuntimeError(f"{mode} upload failed: {err.strip()[-300:]}")
        return float(out.strip())
    finally:
        lab.down()


def up_tcpscapy() -> float:
    return upload_seconds("tcpscapy")


def up_kernel() -> float:
    return upload_seconds("kernel")


FIGURES: list[Figure] = [
    (UP_TCPSCAPY, "s", up_tcpscapy),
    (UP_KERNEL, "s", up_kernel),
]
