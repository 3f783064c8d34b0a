"""The impairment process: runs inside the routed lab's router namespace.

    python -m tcpscapy.impair.daemon --dir RUNDIR --netns ROUTER_NS

One NFQUEUE per direction takes every packet the router forwards toward the server or the
client (iptables mangle FORWARD, `--queue-bypass`: if this process dies, packets pass). The
model (model.Shaper) decides each packet's fate; a packet to delay is kept and gets its
ACCEPT verdict when its time comes (nfqueue verdicts may come in any order), so the kernel
holds the packet and only a reference waits here, in a heap ordered by departure time.
Duplicates leave through a raw IP socket, CE marks are a rewritten payload.

Control: a Unix socket RUNDIR/path.sock, one JSON request line, one JSON answer line:
{"op": "get"} or {"op": "set", "direction": "both", "clear": false, "params": {...}}.
The process exits on SIGTERM/SIGINT, and by itself when its namespace is deleted; on every
exit it removes its rules and lets held packets go.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import itertools
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netfilterqueue import NetfilterQueue, Packet

from tcpscapy.impair.model import DIRECTIONS, NEUTRAL, PathError, Shaper
from tcpscapy.routed import router_iface

QUEUES: dict[str, int] = {"to-server": 7701, "to-client": 7702}
RULE_COMMENT = "tcpscapy-path"
SOCKET_NAME, PIDFILE_NAME, LOG_NAME = "path.sock", "path.pid", "path.log"
MODULE = "tcpscapy.impair.daemon"
QUEUE_MAXLEN = 20_000  # packets the kernel may hold for us per direction
LATENESS_SAMPLES = 16384
MAX_REQUEST = 64 * 1024
PR_SET_TIMERSLACK = 29
SO_TIMESTAMP = 29  # Linux; the socket module does not export it
NICE = -10  # when flooded: CFS weight ~10x a nice-0 process
FLOODED_CPU = 0.8  # share of a core above which we give up real-time priority
SLICE = 64  # packets read from one queue before the loop looks at timers and control
MAX_QUEUED = 10.0  # a kernel timestamp older than this is a clock step, not a wait

Iptables = Callable[..., "subprocess.CompletedProcess[str]"]


def rule_specs() -> list[list[str]]:
    """Each direction's queue takes what the router forwards out of that end's link."""
    return [["FORWARD", "-o", router_iface(d.removeprefix("to-")), "-j", "NFQUEUE",
             "--queue-num", str(q), "--queue-bypass", "-m", "comment", "--comment", RULE_COMMENT]
            for d, q in QUEUES.items()]


def remove_rules(iptables: Iptables) -> int:
    """Delete every rule of ours in mangle FORWARD (also those a killed process left)."""
    listing = iptables("-t", "mangle", "-S", "FORWARD").stdout
    removed = 0
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and RULE_COMMENT in words:
            iptables("-t", "mangle", "-D", *words[1:])
            removed += 1
    return removed


def with_ce(packet: bytes) -> bytes:
    """The IPv4 packet with ECN = CE (11) and its header checksum fixed."""
    header = bytearray(packet[: (packet[0] & 0x0F) * 4])
    header[1] |= 0x03
    header[10:12] = b"\0\0"
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + packet[len(header):]


def _local_iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def _kernel_queue_drops() -> dict[str, dict[str, int]]:
    """Per direction: packets the kernel dropped because our queue was full / we were slow."""
    out: dict[str, dict[str, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines():
            f = line.split()
            for d, q in QUEUES.items():
                if int(f[0]) == q:
                    out[d] = {"queue_full": int(f[5]), "user_dropped": int(f[6])}
    return out


class _Yield(Exception):
    """Raised from the queue callback after SLICE packets: NetfilterQueue.run reads until
    EAGAIN, which a flood never gives; this hands control back to the loop (each read
    holds one packet, whose verdict is given before, so nothing is left without one)."""


class Daemon:
    def __init__(self, rundir: Path, netns_name: str) -> None:
        self.rundir, self.netns_name = rundir, netns_name
        self.shapers = {d: Shaper(NEUTRAL, d) for d in DIRECTIONS}
        self.heap: list[tuple[float, int, Packet, bytes | None]] = []
        self.order = itertools.count()
        self.lateness: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self.max_lateness = 0.0
        self.waited: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self.started = time.monotonic()
        self.second_start, self.second_count, self.last_rate = self.started, 0, 0
        self.second_cpu = time.process_time()
        self.scheduling = "normal"
        self.budget = SLICE
        self.stopping = False
        self.queues: dict[str, NetfilterQueue] = {}
        self.conns: dict[int, tuple[socket.socket, bytearray]] = {}
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    # -- packets ---------------------------------------------------------------------

    def take(self, direction: str, pkt: Packet) -> None:
        self.on_packet(direction, pkt)
        self.budget -= 1
        if self.budget <= 0:
            raise _Yield

    def on_packet(self, direction: str, pkt: Packet) -> None:
        now = time.monotonic()
        if self.heap and self.heap[0][0] <= now:
            self.fire(now)
        stamp = pkt.get_timestamp()  # arrival at the router: how long it waited for us
        if stamp:
            self.waited.append(min(max(time.time() - stamp, 0.0), MAX_QUEUED))
        shaper = self.shapers[direction]
        p = shaper.params
        if shaper.passes_all:  # nothing to do: the common case, kept short
            pkt.accept()
            shaper.counters["packets"] += 1
            shaper.counters["sent"] += 1
            self.note_release(now)
            return
        payload = pkt.get_payload() if p.ce or p.ce_threshold or p.duplicate else None
        if payload is not None and int.from_bytes(payload[2:4], "big") != len(payload):
            payload = None  # a truncated copy (over ~4 KB): never rewrite or copy a part
        ect = payload is not None and len(payload) > 1 and payload[1] & 0x03 != 0
        fate = shaper.fate(now, pkt.get_payload_len(), ect)
        if fate.drop:
            pkt.drop()
            return
        if fate.mark_ce and payload is not None:
            payload = with_ce(payload)
            pkt.set_payload(payload)
        copy = payload if fate.duplicate else None
        if fate.depart <= now:
            self.release(pkt, copy, now)
        else:
            heapq.heappush(self.heap, (fate.depart, next(self.order), pkt, copy))

    def release(self, pkt: Packet, copy: bytes | None, due: float) -> None:
        pkt.accept()
        if copy is not None:
            with contextlib.suppress(OSError):  # e.g. EMSGSIZE: the copy is just not sent
                self.raw.sendto(copy, (socket.inet_ntoa(copy[16:20]), 0))
        self.note_release(due)

    def note_release(self, due: float) -> None:
        """Own delay: from when the packet was due (read, or its departure time) to now."""
        late = time.monotonic() - due
        self.lateness.append(late)
        if late > self.max_lateness:
            self.max_lateness = late
        self.second_count += 1

    def fire(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            due, _, pkt, copy = heapq.heappop(heap)
            self.release(pkt, copy, due)

    # -- control ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        samples, waited = sorted(self.lateness), sorted(self.waited)

        def pct(values: list[float], q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1e6, 1) \
                if values else 0.0

        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "held": len(self.heap),
            "scheduling": self.scheduling,
            "rate_pps": self.last_rate,
            "own_delay_us": {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99),
                             "max": round(self.max_lateness * 1e6, 1), "samples": len(samples)},
            "kernel_wait_us": {"p50": pct(waited, 0.5), "p99": pct(waited, 0.99)},
            "kernel_drops": _kernel_queue_drops(),
            "directions": {d: {"params": s.params.as_dict(), "describe": s.params.describe(),
                               "counters": dict(s.counters)} for d, s in self.shapers.items()},
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "set":
            direction = request.get("direction", "both")
            if direction not in (*DIRECTIONS, "both"):
                raise PathError(f"unknown direction {direction!r}")
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise PathError("params must be an object")
            targets = DIRECTIONS if direction == "both" else (direction,)
            new = {d: (NEUTRAL if request.get("clear") else self.shapers[d].params)
                   .changed(**params) for d in targets}  # all valid before any changes
            self.lateness.clear()  # own delay is told for the settings now in force
            self.waited.clear()
            self.max_lateness = 0.0
            for d, params_d in new.items():
                counters = self.shapers[d].counters
                self.shapers[d] = Shaper(params_d, d)
                self.shapers[d].counters = counters  # counters run on across changes
                print(f"{d}: {params_d.describe()}", file=sys.stderr, flush=True)
        elif op != "get":
            raise PathError(f"unknown op {op!r}")
        return {"ok": True, **self.status()}

    def on_control(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = listener.accept()
            conn.setblocking(False)
            if len(self.conns) >= 16:
                conn.close()
                return
            self.conns[conn.fileno()] = (conn, bytearray())

    def on_conn(self, fd: int) -> None:
        conn, buf = self.conns[fd]
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if chunk and b"\n" not in buf and len(buf) < MAX_REQUEST:
            return
        del self.conns[fd]
        with conn:
            if not chunk and not buf:
                return
            try:
                if b"\n" not in buf and len(buf) >= MAX_REQUEST:
                    raise PathError(f"a request is one line under {MAX_REQUEST} bytes")
                request = json.loads(bytes(buf).split(b"\n", 1)[0])
                if not isinstance(request, dict):
                    raise PathError("a request is a JSON object")
                answer = self.handle(request)
            except (PathError, ValueError, TypeError) as e:
                answer = {"ok": False, "error": str(e).splitlines()[0] if str(e) else "bad"}
            conn.setblocking(True)
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    # -- main loop -------------------------------------------------------------------

    def run(self) -> None:
        with contextlib.suppress(OSError):  # precise timers: the default slack is 50 µs
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        self.schedule(realtime=True)
        # Any socket asking for receive timestamps makes the kernel stamp every packet on
        # arrival (a global switch); nfqueue hands the stamp over with the packet.
        self.stamper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stamper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        for d, q in QUEUES.items():
            nfq = NetfilterQueue()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # rcvbuf smaller than asked
                nfq.bind(q, lambda pkt, d=d: self.take(d, pkt), max_len=QUEUE_MAXLEN,
                         sock_len=8 * 1024 * 1024)
            self.queues[d] = nfq
        remove_rules(_local_iptables)  # a killed predecessor's (binding proved it is gone)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        sock_path = self.rundir / SOCKET_NAME
        sock_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        try:
            for spec in rule_specs():
                res = _local_iptables("-t", "mangle", "-A", *spec)
                if res.returncode != 0:
                    raise SystemExit(f"iptables: {res.stderr.strip()}")
            pidfile = self.rundir / PIDFILE_NAME
            (self.rundir / (PIDFILE_NAME + ".tmp")).write_text(f"{os.getpid()}\n")
            os.replace(self.rundir / (PIDFILE_NAME + ".tmp"), pidfile)
            print(f"forwarding, pid {os.getpid()}", file=sys.stderr, flush=True)
            self._loop(listener, wake_r)
        finally:
            remove_rules(_local_iptables)
            self.fire(float("inf"))  # let everything held go
            for nfq in self.queues.values():
                nfq.unbind()
            listener.close()
            sock_path.unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError, ValueError):
                pidfile = self.rundir / PIDFILE_NAME
                if int(pidfile.read_text()) == os.getpid():
                    pidfile.unlink()
            print("stopped", file=sys.stderr, flush=True)

    def _loop(self, listener: socket.socket, wake: socket.socket) -> None:
        nfq_fds = {nfq.get_fd(): nfq for nfq in self.queues.values()}
        check_ns_at = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now - self.second_start >= 1.0:
                self.every_second(now)
            if now >= check_ns_at:  # the lab went down without us: leave, nothing to serve
                if not os.path.exists(f"/run/netns/{self.netns_name}"):
                    print(f"namespace {self.netns_name} is gone", file=sys.stderr, flush=True)
                    return
                check_ns_at = now + 1.0
            timeout = 1.0 if not self.heap else min(1.0, max(0.0, self.heap[0][0] - now))
            fds = [*nfq_fds, listener.fileno(), wake.fileno(), *self.conns]
            ready, _, _ = select.select(fds, [], [], timeout)
            for fd in ready:
                if fd in nfq_fds:
                    self.budget = SLICE
                    with contextlib.suppress(_Yield):
                        nfq_fds[fd].run(block=False)
                elif fd == listener.fileno():
                    self.on_control(listener)
                elif fd == wake.fileno():
                    with contextlib.suppress(BlockingIOError):
                        wake.recv(64)
                elif fd in self.conns:
                    self.on_conn(fd)
            if self.heap:
                self.fire(time.monotonic())

    def schedule(self, realtime: bool) -> None:
        """Real-time priority 1 while we keep up cheaply, nice -10 while flooded.

        A router's forwarding runs before any process (netem's in softirq); on a busy
        machine a normal process waits milliseconds to be scheduled, so packets would too.
        Real-time priority 1 preempts every normal process on wake-up. Flooded (over
        FLOODED_CPU of a core), we step down, so a flood never takes a core from the
        machine; the kernel's real-time throttling (95 %) is the last guard.
        """
        try:
            if realtime:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
                self.scheduling = "real-time (SCHED_FIFO 1)"
                return
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
            self.scheduling = f"nice {NICE} (flooded: over {FLOODED_CPU:.0%} of a core)"
        except OSError as e:
            self.scheduling = f"normal ({e.strerror})"

    def every_second(self, now: float) -> None:
        elapsed = now - self.second_start
        self.last_rate = round(self.second_count / elapsed)
        cpu = time.process_time()
        busy = (cpu - self.second_cpu) / elapsed
        if busy > FLOODED_CPU and self.scheduling.startswith("real-time"):
            self.schedule(realtime=False)
        elif busy < FLOODED_CPU / 2 and not self.scheduling.startswith("real-time"):
            self.schedule(realtime=True)
        self.second_start, self.second_count, self.second_cpu = now, 0, cpu

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="the lab's runtime directory")
    parser.add_argument("--netns", required=True, help="the router namespace we run in")
    args = parser.parse_args(argv)
    Daemon(args.dir, args.netns).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
