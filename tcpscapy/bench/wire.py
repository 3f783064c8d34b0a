"""Figures on the wire: tcpscapy against the kernel and Scapy, in a lab of our own.

One lab (prefix `tsj` + random hex) serves every wire figure: it is built on
first use and removed by `Wire.close()`. The server host runs kernel listeners
and tcpscapy listeners as separate processes (tcpscapy.bench.peers); the client
host runs a client peer for the kernel's and Scapy's clients, while tcpscapy's
own client runs in this process, its thread moved into the client namespace.
Before each figure, whatever it does not use is stopped: an idle tcpscapy
process in the lab still decodes every frame on its link and would take CPU
from the figure (`Wire._only`). The `tcpscapy listen` figures run the command
itself (`--file` of an empty file: accept, close), with its per-connection
lines drained by a thread here.

Each figure function returns one sample; the runner repeats it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import tcpscapy
from tcpscapy.bench.peers import Json, Peer
from tcpscapy.io.driver import close_all
from tcpscapy.lab import ADDRESSES, Lab

Figure = tuple[str, str, Callable[[], float]]

# Figure names, used by the runner for ratios and targets.
CONNECT_TCPSCAPY = "client handshake: tcpscapy.connect()"
CONNECT_KERNEL = "client handshake: kernel connect()"
CONNECT_TCPLINK = "client handshake: Scapy TCP_client.tcplink()"
CONNECT_SR1 = "client handshake: Scapy sr1(SYN)"
SERVER_TCPSCAPY = "server: tcpscapy.listen() accept+close"
SERVER_KERNEL = "server: kernel listener accept+close"
SERVER_TCPSCAPY_2 = "server: 2 tcpscapy.listen() processes, 2 ports"
SERVER_TCPSCAPY_2_OWN = "server: 2 tcpscapy.listen() processes, each fed only its port"
SERVER_CLI = "server: tcpscapy listen (the command) accept+close"
SERVER_CLI_WORKERS_2 = "server: tcpscapy listen --workers 2 accept+close"
SERVER_CPU = "server: tcpscapy listener CPU per handshake"
BULK_SEND = "bulk: tcpscapy.connect() sends to a kernel sink"
BULK_RECV = "bulk: tcpscapy.connect() receives from a kernel source"
BULK_KERNEL_SEND = "bulk: kernel client sends to a kernel sink"
BULK_KERNEL_RECV = "bulk: kernel client receives from a kernel source"

CLIENT_THREADS = 4  # kernel clients in flight against a listener
WARMUP = 10  # handshakes before each latency sample, not timed
RECV_MAX = 1 << 20


@dataclass(frozen=True)
class Sizes:
    handshakes: int  # per latency sample (tcpscapy, kernel)
    scapy_handshakes: int  # per latency sample (Scapy is ~1000x slower)
    cycles: int  # kernel client connections per server sample
    bulk: int  # bytes per transfer


FULL = Sizes(handshakes=300, scapy_handshakes=4, cycles=2000, bulk=20_000_000)
QUICK = Sizes(handshakes=50, scapy_handshakes=2, cycles=500, bulk=4_000_000)


class Wire:
    """The lab and its peers, shared by the wire figures; a context manager."""

    def __init__(self, sizes: Sizes = FULL) -> None:
        self.sizes = sizes
        self._lab: Lab | None = None
        self._peers: list[Peer] = []
        self._kernel_ports: dict[str, int] = {}
        self._servers: list[Peer] = []  # tcpscapy listener processes now running
        self._servers_config: tuple[int, str] = (0, "all")  # (how many, feed)
        self._client_driver = False  # this process has a tcpscapy driver in the client host
        self._client: Peer | None = None
        self._cli: tuple[int, subprocess.Popen[bytes], int] | None = None  # workers, proc, port
        self._empty: str | None = None  # the file the `listen --file` figures serve
        self.notes: dict[str, str] = {}  # facts seen while measuring, for BENCHMARKS.md

    # -- the lab -------------------------------------------------------------------------

    @property
    def lab(self) -> Lab:
        """The lab, built (with its kernel servers and client peer) on first use."""
        if self._lab is None:
            lab = Lab(f"tsj{secrets.token_hex(3)}")
            # Room for the 10,000 idle connections of the memory figure and every
            # TIME-WAIT the handshake figures leave in the client host. A failed
            # up() removes what it made itself.
            lab.up(sysctls=[("client", "net.ipv4.ip_local_port_range", "1024 65535")])
            self._lab = lab
            servers = self._start(Peer(lab, "server", "kernel-servers", self.server_addr))
            self._kernel_ports = {k: int(v) for k, v in servers.ready.items()}
            self._client = self._start(Peer(lab, "client", "client"))
        return self._lab

    def _start(self, peer: Peer) -> Peer:
        self._peers.append(peer)
        return peer

    @property
    def server_addr(self) -> str:
        return ADDRESSES["server"]

    @property
    def client(self) -> Peer:
        _ = self.lab
        assert self._client is not None
        return self._client

    def kernel_port(self, mode: str) -> int:
        _ = self.lab
        return self._kernel_ports[mode]

    def tcpscapy_servers(self, n: int = 1, feed: str = "all") -> list[Peer]:
        """Exactly `n` tcpscapy accept+close listener processes with this `feed` ("own-port"
        narrows each one's packet sockets to its port, see peers); others are stopped."""
        self._only(servers=(n, feed))
        return self._servers

    def tcpscapy_ports(self, n: int = 1, feed: str = "all") -> list[int]:
        return [int(peer.ready["port"]) for peer in self.tcpscapy_servers(n, feed)]

    def idle(self) -> None:
        """Stop every tcpscapy process and driver in the lab (a figure of kernel peers,
        or one that starts its own)."""
        self._only()

    def holder(self, trace_limit: int | None = None) -> Peer:
        """A fresh tcpscapy listener process that keeps every connection (memory figures);
        its connections keep `trace_limit` trace entries (None: the library's default)."""
        self._only()
        limit = "default" if trace_limit is None else str(trace_limit)
        return self._start(Peer(self.lab, "server", "tcpscapy-holder", self.server_addr, limit))

    def cli_port(self, workers: int) -> int:
        """The port of a `tcpscapy listen --workers N --file EMPTY` running alone in the lab."""
        self._only(cli=workers)
        assert self._cli is not None
        return self._cli[2]

    def _start_cli(self, workers: int) -> None:
        if self._empty is None:
            fd, self._empty = tempfile.mkstemp(prefix="tcpscapy-bench-", suffix=".empty")
            os.close(fd)
        argv = [sys.executable, "-m", "tcpscapy", "listen", f"{self.server_addr}:0",
                "--file", self._empty, "--backlog", "4096", "--json",
                "--workers", str(workers)]
        proc = self.lab.popen("server", argv, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        listening = _readline_within(proc.stderr, 60.0)
        try:
            port = int(json.loads(listening)["port"])
        except (ValueError, KeyError, TypeError):
            proc.terminate()
            proc.wait(30)
            raise RuntimeError(f"tcpscapy listen --workers {workers} did not start: "
                               f"{listening.decode(errors='replace').strip()!r}") from None
        # A line per connection: drain them, or the command blocks on a full pipe.
        threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
        self._cli = (workers, proc, port)

    def _stop_cli(self) -> None:
        if self._cli is None:
            return
        _, proc, _ = self._cli
        self._cli = None
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the workers stop, the guard rule goes
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _only(self, *, servers: tuple[int, str] = (0, "all"), client: bool = False,
              cli: int = 0) -> None:
        """Leave running only what a figure uses: an idle tcpscapy process in the lab
        still decodes every frame on its link, and would steal the figure's CPU."""
        if self._cli is not None and self._cli[0] != cli:
            self._stop_cli()
        if cli and self._cli is None:
            self._start_cli(cli)
        if self._servers_config != servers:
            for peer in self._servers:
                peer.stop()
            self._servers = []
            self._servers_config = (0, "all")
            n, feed = servers
            for _ in range(n):
                peer = Peer(self.lab, "server", "tcpscapy-server", self.server_addr, feed)
                self._servers.append(self._start(peer))
            self._servers_config = servers
        if not client and self._client_driver:
            with self.lab.enter("client"):
                close_all(linger=0)
            self._client_driver = False

    @contextmanager
    def in_client(self, *, tcpscapy_driver: bool = False) -> Iterator[None]:
        """Run the block in the client host (this thread only); `tcpscapy_driver` if it
        uses tcpscapy there (its driver then stays open for the next such figure)."""
        self._only(client=tcpscapy_driver)
        with self.lab.enter("client"):
            if tcpscapy_driver:
                self._client_driver = True
            yield

    def close(self) -> None:
        """Stop every peer, close this process's drivers, remove the lab."""
        if self._empty is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._empty)
            self._empty = None
        lab, self._lab = self._lab, None
        if lab is None:
            return
        try:
            self._stop_cli()
            for peer in self._peers:
                peer.stop()
            if self._client_driver:
                with lab.enter("client"):
                    close_all(linger=0)
        finally:
            self._peers.clear()
            self._servers.clear()
            self._servers_config = (0, "all")
            self._client_driver = False
            lab.down()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- 1. client handshake latency -----------------------------------------------------

    def tcpscapy_connect_us(self) -> float:
        """Median µs of tcpscapy.connect() (each then aborted) to a kernel listener."""
        host, port = self.server_addr, self.kernel_port("close")
        samples = []
        with self.in_client(tcpscapy_driver=True):
            for i in range(WARMUP + self.sizes.handshakes):
                began = time.perf_counter()
                conn = tcpscapy.connect(host, port, timeout=5)
                took = time.perf_counter() - began
                conn.abort()
                if i >= WARMUP:
                    samples.append(took)
        return statistics.median(samples) * 1e6

    def kernel_connect_us(self) -> float:
        """Median µs of the kernel's connect() from the same host to the same listener."""
        address = (self.server_addr, self.kernel_port("close"))
        samples = []
        with self.in_client():
            for i in range(WARMUP + self.sizes.handshakes):
                sock = socket.socket()
                began = time.perf_counter()
                sock.connect(address)
                took = time.perf_counter() - began
                sock.close()
                if i >= WARMUP:
                    samples.append(took)
        return statistics.median(samples) * 1e6

    def _scapy_us(self, op: str) -> float:
        self._only()
        answer = self.client.ask(op=op, host=self.server_addr, port=self.kernel_port("discard"),
                                 count=self.sizes.scapy_handshakes)
        return float(statistics.median(answer["samples"])) * 1e6

    def tcplink_us(self) -> float:
        """Median µs from TCP_client.tcplink() to ESTABLISHED (then closed, not timed)."""
        return self._scapy_us("tcplink")

    def sr1_us(self) -> float:
        """Median µs of sr1() of a SYN until the SYN-ACK."""
        return self._scapy_us("sr1")

    # -- 2. server handshakes per second -------------------------------------------------

    def _cycles(self, ports: list[int]) -> Json:
        count = self.sizes.cycles
        answer = self.client.ask(op="cycles", host=self.server_addr, ports=ports, count=count,
                                 threads=CLIENT_THREADS)
        if answer["errors"]:
            raise RuntimeError(f"{answer['errors']} of {count} kernel client connections failed")
        return answer

    def _cycles_per_second(self, ports: list[int]) -> float:
        return self.sizes.cycles / float(self._cycles(ports)["seconds"])

    def tcpscapy_server_per_second(self) -> float:
        return self._cycles_per_second(self.tcpscapy_ports(1))

    def kernel_server_per_second(self) -> float:
        self._only()
        return self._cycles_per_second([self.kernel_port("close")])

    def tcpscapy_two_servers_per_second(self) -> float:
        """Two listener processes on two ports, the clients spread over both: what two
        cores give without the kernel's fan-out (each process still reads every packet)."""
        return self._cycles_per_second(self.tcpscapy_ports(2))

    def tcpscapy_two_own_servers_per_second(self) -> float:
        """As above, each process seeing only its own port's packets: the most that
        `listen --workers 2` over PACKET_FANOUT_HASH could give on this machine."""
        return self._cycles_per_second(self.tcpscapy_ports(2, "own-port"))

    def cli_server_per_second(self) -> float:
        """`tcpscapy listen` itself, one process: what --workers is compared with (the
        command adds a thread and a summary line per connection to the library's loop)."""
        return self._cycles_per_second([self.cli_port(1)])

    def cli_workers_per_second(self) -> float:
        """`tcpscapy listen --workers 2`: the kernel's fan-out spreads the flows over two
        worker processes, which share one port, one guard rule and the secrets."""
        return self._cycles_per_second([self.cli_port(2)])

    def tcpscapy_server_cpu_us(self) -> float:
        """CPU µs the tcpscapy listener process spends per accepted handshake.

        Also notes the kernel clients' CPU per handshake and how busy both cores
        were: what is left for a second listener worker (fan-out) on this machine.
        """
        (server,) = self.tcpscapy_servers(1)
        before, idle_before = server.ask(), _cpu_idle()
        clients = self._cycles(self.tcpscapy_ports(1))
        after, idle_after = server.ask(), _cpu_idle()
        handshakes = int(after["accepted"] - before["accepted"])
        listener_us = float(after["cpu"] - before["cpu"]) / handshakes * 1e6
        wall = float(clients["seconds"])
        busy = 1 - (idle_after - idle_before) / (wall * (os.cpu_count() or 1))
        self.notes["server CPU"] = (
            f"per handshake, tcpscapy listener {listener_us:,.0f} µs CPU, kernel clients "
            f"(Python) {clients['cpu'] / handshakes * 1e6:,.0f} µs CPU; all {os.cpu_count()} "
            f"cores {max(busy, 0):.0%} busy meanwhile (last run)")
        return listener_us

    # -- 3. bulk transfer ----------------------------------------------------------------

    def _payload(self) -> bytes:
        return bytes(self.sizes.bulk)

    def tcpscapy_send_mb_s(self) -> float:
        """MB/s of tcpscapy.connect() sending to a kernel sink (until it reports the count)."""
        data, size = self._payload(), self.sizes.bulk
        with self.in_client(tcpscapy_driver=True):
            conn = tcpscapy.connect(self.server_addr, self.kernel_port("sink"), timeout=5)
            try:
                began = time.perf_counter()
                conn.sendall(data)
                conn.shutdown()
                reply = _read_all(conn.recv)
                took = time.perf_counter() - began
            finally:
                conn.close()
        _check(int.from_bytes(reply, "big"), size, "the sink counted")
        largest = max((len(e.segment.payload) for e in conn.trace
                       if e.segment is not None and e.direction == "out"), default=0)
        self.notes["bulk segments"] = (f"tcpscapy sent full segments of {largest} payload "
                                       f"bytes (MSS {conn.engine.snd_mss}, timestamps "
                                       f"{'on' if conn.engine.ts_ok else 'off'})")
        return size / 1e6 / took

    def tcpscapy_recv_mb_s(self) -> float:
        """MB/s of tcpscapy.connect() receiving from a kernel source (until its FIN)."""
        size = self.sizes.bulk
        with self.in_client(tcpscapy_driver=True):
            conn = tcpscapy.connect(self.server_addr, self.kernel_port("source"), timeout=5)
            try:
                began = time.perf_counter()
                conn.sendall(size.to_bytes(8, "big"))
                got = _count_all(conn.recv)
                took = time.perf_counter() - began
            finally:
                conn.close()
        _check(got, size, "received")
        return size / 1e6 / took

    def kernel_send_mb_s(self) -> float:
        data, size = self._payload(), self.sizes.bulk
        with self.in_client():
            sock = socket.create_connection((self.server_addr, self.kernel_port("sink")), 5)
            with sock:
                began = time.perf_counter()
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                reply = _read_all(sock.recv)
                took = time.perf_counter() - began
        _check(int.from_bytes(reply, "big"), size, "the sink counted")
        return size / 1e6 / took

    def kernel_recv_mb_s(self) -> float:
        size = self.sizes.bulk
        with self.in_client():
            sock = socket.create_connection((self.server_addr, self.kernel_port("source")), 5)
            with sock:
                began = time.perf_counter()
                sock.sendall(size.to_bytes(8, "big"))
                got = _count_all(sock.recv)
                took = time.perf_counter() - began
        _check(got, size, "received")
        return size / 1e6 / took

    # -- the list ------------------------------------------------------------------------

    def figures(self) -> list[Figure]:
        return [
            (CONNECT_TCPSCAPY, "µs", self.tcpscapy_connect_us),
            (CONNECT_KERNEL, "µs", self.kernel_connect_us),
            (CONNECT_TCPLINK, "µs", self.tcplink_us),
            (CONNECT_SR1, "µs", self.sr1_us),
            (SERVER_TCPSCAPY, "handshakes/s", self.tcpscapy_server_per_second),
            (SERVER_KERNEL, "handshakes/s", self.kernel_server_per_second),
            (SERVER_TCPSCAPY_2, "handshakes/s", self.tcpscapy_two_servers_per_second),
            (SERVER_TCPSCAPY_2_OWN, "handshakes/s", self.tcpscapy_two_own_servers_per_second),
            (SERVER_CLI, "handshakes/s", self.cli_server_per_second),
            (SERVER_CLI_WORKERS_2, "handshakes/s", self.cli_workers_per_second),
            (SERVER_CPU, "CPU µs", self.tcpscapy_server_cpu_us),
            (BULK_SEND, "MB/s", self.tcpscapy_send_mb_s),
            (BULK_RECV, "MB/s", self.tcpscapy_recv_mb_s),
            (BULK_KERNEL_SEND, "MB/s", self.kernel_send_mb_s),
            (BULK_KERNEL_RECV, "MB/s", self.kernel_recv_mb_s),
        ]


def _readline_within(stream: IO[bytes], timeout: float) -> bytes:
    """One line from `stream`, or b'' if none came within `timeout` s."""
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


def _drain(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.read(65536):
            pass


def _cpu_idle() -> float:
    """Seconds all cores spent idle since boot (/proc/stat: idle + iowait)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    data = b""
    while chunk := recv(RECV_MAX):
        data += chunk
    return data


def _count_all(recv: Callable[[int], bytes]) -> int:
    total = 0
    while chunk := recv(RECV_MAX):
        total += len(chunk)
    return total


def _check(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"bulk transfer incomplete: {what} {got} of {want} bytes")
