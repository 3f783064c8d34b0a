"""What a connection costs: the client loops, owning a port, keep-alive requests.

- Two client loops, interleaved in one run so both see the same machine: each round
  is tcpscapy.connect() then close(), then connect() then abort(), to a kernel
  listener; the figure is the median µs of each kind of round (connect plus the
  close or abort call). An aborted port goes back to the warm pool like a closed
  one, and a fresh port costs a bind() and one kernel-set member, not an iptables
  process, so neither loop pays for a port.
- Owning a port: the RST guard's own_port() + disown_port() of one port (one netlink
  message each to the guard's ipset), against one `iptables` rule insert + delete
  (what every new port cost before the set).
- Keep-alive: `tcpscapy listen --http` and a kernel server (tcpscapy.bench.peers,
  each response in one send) serve the same 571-byte page; a kernel client sends
  GETs one after another on one connection (as `ab -k -c1`); the median µs of a
  request (the mean, which `ab` gives, swings with whatever else the two cores run).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import tcpscapy
from tcpscapy.bench.peers import PAGE
from tcpscapy.bench.wire import Figure, Wire, _drain, _readline_within
from tcpscapy.io import iptables
from tcpscapy.io.guard import RstGuard

LOOP_CLOSE = "client loop: connect()+close(), interleaved with the abort loop"
LOOP_ABORT = "client loop: connect()+abort(), interleaved with the close loop"
PORT_SET = "owning a port: guard own_port()+disown_port() (ipset member, netlink)"
PORT_IPTABLES = "owning a port, before: one iptables rule insert + delete"
KEEPALIVE_TCPSCAPY = "keep-alive: tcpscapy listen --http, per request"
KEEPALIVE_KERNEL = "keep-alive: kernel server (one send per response), per request"

ROUNDS = 150  # of each kind per sample
WARMUP = 10
PORTS = 500  # own+disown pairs per sample
SPAWNS = 5  # iptables insert+delete pairs per sample
REQUESTS = 200  # keep-alive requests per sample (after WARMUP on their own connection)


def _loops(w: Wire) -> tuple[float, float]:
    """(close round µs, abort round µs), medians of one interleaved run."""
    host, port = w.server_addr, w.kernel_port("close")
    closes: list[float] = []
    aborts: list[float] = []
    with w.in_client(tcpscapy_driver=True):
        for i in range(2 * (WARMUP + ROUNDS)):
            began = time.perf_counter()
            conn = tcpscapy.connect(host, port, timeout=5)
            if i % 2:
                conn.abort()
            else:
                conn.close()
            took = time.perf_counter() - began
            if i >= 2 * WARMUP:
                (aborts if i % 2 else closes).append(took)
    return statistics.median(closes) * 1e6, statistics.median(aborts) * 1e6


_aborts: list[float] = []  # the abort half of each close-loop sample, for LOOP_ABORT


def close_loop_us(w: Wire) -> float:
    close_us, abort_us = _loops(w)
    _aborts.append(abort_us)
    return close_us


def abort_loop_us(w: Wire) -> float:
    """The abort half of a close-loop sample of this run (a run of its own without one)."""
    return _aborts.pop(0) if _aborts else _loops(w)[1]


def port_set_us(w: Wire) -> float:
    """µs of one own_port() + disown_port() on a started guard (its rule already in)."""
    with w.in_client(), RstGuard() as guard:
        guard.own_port("127.0.0.1", 1)  # the first port installs the rule and the set
        began = time.perf_counter()
        for port in range(30000, 30000 + PORTS):
            guard.own_port("127.0.0.1", port)
            guard.disown_port("127.0.0.1", port)
        return (time.perf_counter() - began) / PORTS * 1e6


def port_iptables_us(w: Wire) -> float:
    """µs of inserting and deleting one per-port rule as the guard did before the set."""
    with w.in_client():
        backend = iptables.default_backend()
        began = time.perf_counter()
        for i in range(SPAWNS):
            spec = iptables.rst_rule_spec(30000 + i, 0x7C5, 10000, os.getpid())
            iptables.insert_rule(backend, spec)
            iptables.delete_rule(backend, spec)
        return (time.perf_counter() - began) / SPAWNS * 1e6


def _keepalive_us(w: Wire, port: int, path: str) -> float:
    for count in (WARMUP, REQUESTS):  # the first connection warms up the server
        answer = w.client.ask(op="keepalive", host=w.server_addr, port=port, count=count,
                              path=path)
    if answer["bytes"] != len(PAGE):
        raise RuntimeError(f"keep-alive: got {answer['bytes']} bytes, not {len(PAGE)}")
    return float(answer["median"]) * 1e6


def keepalive_kernel_us(w: Wire) -> float:
    w.idle()
    return _keepalive_us(w, w.kernel_port("http"), "/")


def keepalive_tcpscapy_us(w: Wire) -> float:
    """`tcpscapy listen --http` alone in the lab (started for the sample, then stopped)."""
    w.idle()
    with tempfile.TemporaryDirectory(prefix="tcpscapy-bench-") as site:
        (Path(site) / "page.txt").write_bytes(PAGE)
        argv = [sys.executable, "-m", "tcpscapy", "listen", f"{w.server_addr}:0",
                "--http", site, "--json"]
        proc = w.lab.popen("server", argv, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            listening = _readline_within(proc.stderr, 60.0)
            try:
                port = int(json.loads(listening)["port"])
            except (ValueError, KeyError, TypeError):
                raise RuntimeError(f"tcpscapy listen --http did not start: "
                                   f"{listening.decode(errors='replace').strip()!r}") from None
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return _keepalive_us(w, port, "/page.txt")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def figures(w: Wire) -> list[Figure]:
    return [
        (LOOP_CLOSE, "µs", lambda: close_loop_us(w)),
        (LOOP_ABORT, "µs", lambda: abort_loop_us(w)),
        (PORT_SET, "µs", lambda: port_set_us(w)),
        (PORT_IPTABLES, "µs", lambda: port_iptables_us(w)),
        (KEEPALIVE_TCPSCAPY, "µs", lambda: keepalive_tcpscapy_us(w)),
        (KEEPALIVE_KERNEL, "µs", lambda: keepalive_kernel_us(w)),
    ]
