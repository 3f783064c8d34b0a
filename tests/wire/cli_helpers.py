"""Helpers for the `tcpscapy connect/listen` wire tests: kernel peers, counters, cleanliness.

Every CLI run is a subprocess started inside a lab host (`ip netns exec`), so
it owns its own driver, guard rules and exit code, as a user's would.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tcpscapy.io import iptables
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab

TCPSCAPY = [sys.executable, "-m", "tcpscapy"]
SERVER, CLIENT = "10.77.0.2", "10.77.0.1"
RUN_TIMEOUT = 60

# A kernel TCP server: prints its port, then serves each connection in a thread.
#   echo   echo until EOF, then close
#   greet  send b"hello" and close at once (the peer closes second)
#   count  read until EOF, answer b"got N", close
#   reset  read one chunk, then close with SO_LINGER 0: an RST
KERNEL_SERVER = r"""
import socket, struct, sys, threading
host, mode = sys.argv[1], sys.argv[2]
srv = socket.create_server((host, 0), backlog=256)
print(srv.getsockname()[1], flush=True)
def serve(c):
    with c:
        if mode == "greet":
            c.sendall(b"hello")
            return
        if mode == "reset":
            c.recv(65536)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
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


def close_and_check_nothing_left(lab: Lab) -> None:
    """Close every in-process driver; then no guard rule and no driver thread may remain."""
    close_all(linger=1.0)
    for host in ("client", "server"):
        with lab.enter(host):
            assert iptables.status() == [], f"guard rules left in {host}"
    assert [t.name for t in threading.enumerate() if t.name.startswith("tcpscapy")] == []


def kernel_server(lab: Lab, mode: str = "echo", host: str = "server") -> int:
    """Start a kernel server in `host` (stopped by lab.down()); return its port."""
    proc = lab.popen(host, [sys.executable, "-c", KERNEL_SERVER, lab.addr(host), mode],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def tcpscapy_run(lab: Lab, host: str, *args: str, input: bytes | None = None,
                 timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """`tcpscapy ARGS` in `host`; stdout and stderr captured as bytes."""
    return lab.run(host, [*TCPSCAPY, *args], input=input, capture_output=True, timeout=timeout,
                   stdin=None if input is not None else subprocess.DEVNULL)


def tcpscapy_popen(lab: Lab, host: str, *args: str,
                   stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """`tcpscapy ARGS` running in `host`; `finish` stops it if the test does not."""
    proc = lab.popen(host, [*TCPSCAPY, *args], stdin=stdin, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    _started.setdefault(lab.prefix, []).append(proc)
    return proc


_started: dict[str, list[subprocess.Popen[bytes]]] = {}


def _default_sigint() -> None:
    # A test run started in the background (`pytest &`) ignores SIGINT, and children
    # inherit that; the CLI respects an ignored SIGINT, so give it the default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(stream: Any, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read `stream` (a pipe) until `needle` appears; everything read so far."""
    got = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while needle not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"{needle!r} did not appear within {timeout} s; got {got!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"stream ended before {needle!r}; got {got!r}")
        got += chunk
    return got


def json_objects(stderr: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a --json run's stderr (every line must be one)."""
    return [json.loads(line) for line in stderr.decode().splitlines()]


def segments(objs: list[dict[str, Any]], direction: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("type") == "segment"
            and (direction is None or o["dir"] == direction)]


def states(objs: list[dict[str, Any]]) -> list[str]:
    return [o["new"] for o in objs if o.get("type") == "state"]


def tcp_counters(lab: Lab, host: str) -> dict[str, int]:
    """The Tcp: line of /proc/net/snmp in `host`'s namespace (EstabResets, ...)."""
    text = lab.run(host, ["cat", "/proc/net/snmp"], capture_output=True, text=True,
                   check=True).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    return dict(zip(names, map(int, values), strict=True))


def guard_rules(lab: Lab) -> dict[str, list[str]]:
    """tcpscapy's iptables rules left in each lab host, by host (both backends)."""
    left: dict[str, list[str]] = {}
    for host in lab.hosts:
        with lab.enter(host):
            rules = [rule.describe() for rule in iptables.status()]
        if rules:
            left[host] = rules
    return left


def lab_processes(lab: Lab) -> list[int]:
    """PIDs of processes running inside any of the lab's namespaces."""
    pids: list[int] = []
    for name in lab.namespaces():
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        pids += [int(p) for p in out.stdout.split()]
    return pids


def assert_clean(lab: Lab) -> None:
    """No guard rule of ours in any host of the lab."""
    assert guard_rules(lab) == {}


def finish(lab: Lab) -> None:
    """After a test: SIGTERM any tcpscapy process it left running (each cleans up after
    itself on SIGTERM), then check that no guard rule is left in the lab."""
    for proc in _started.pop(lab.prefix, []):
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=15)
    assert_clean(lab)


def still_there_after(pid: int, limit: float) -> bool:
    """True if process `pid` has not ended within `limit` seconds (a pidfd: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        return not select.select([fd], [], [], limit)[0]
    finally:
        os.close(fd)


def recv_exactly(conn: Any, size: int) -> bytes:
    """Exactly `size` bytes from a tcpscapy Connection (15 s a read); fails if it closes first."""
    got = bytearray()
    while len(got) < size:
        chunk = conn.recv(timeout=15)
        assert chunk, "the peer closed early"
        got += chunk
    return bytes(got)
