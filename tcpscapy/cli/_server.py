"""The server behind `tcpscapy listen`: one event-loop thread for every connection.

Services are steps (tcpscapy.cli._steps): the loop thread waits in the driver
(driver.wait, so it is the one that reads the sockets, as a library loop is) until
the listener has a connection to accept or some connection can go on: bytes to
read, room to send, a FIN exchange done, a deadline passed. It then accepts and
advances each ready connection with calls that do not block. No thread per
connection: ~100 µs of thread start and the GIL hand-offs between threads were most
of what the command cost over the library loop.

Each connection's report (its line, -v ladder, pcap packets, SVG) goes to a
reporter thread, so writing it never holds up the loop. stop() (from the main
thread, on a signal) ends the loop, which resets the open connections and queues
their reports; the summary is taken once the reporter has written them all.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpscapy import errors
from tcpscapy.api import Connection, Listener
from tcpscapy.cli import _http
from tcpscapy.cli._common import Output, Recorder, entry_json, start_worker
from tcpscapy.cli._plot import write_plot
from tcpscapy.cli._steps import Op, Recv, Steps, recv, sendall
from tcpscapy.core.state import State
from tcpscapy.io.driver import TRACE_LIMIT
from tcpscapy.svg import write_ladder_svg
from tcpscapy.trace import Trace, ladder

CLOSE_TIMEOUT = 10.0  # seconds a closed connection may take to finish its FIN exchange
CHUNK = 65536
IDLE_TIMEOUT = 300.0  # echo/discard: a silent client is dropped after this long
STOP_POLL = 0.2  # the loop looks at stop() at least this often
JOIN_WAIT = 30.0  # seconds stop() waits for the loop and the reporter

Service = Callable[[], Steps[None]]


# -- services ------------------------------------------------------------------------------


def echo() -> Steps[None]:
    while data := (yield from recv(CHUNK, IDLE_TIMEOUT)):
        yield from sendall(data)


def discard() -> Steps[None]:
    while (yield from recv(CHUNK, IDLE_TIMEOUT)):
        pass


def send_file(path: Path) -> Service:
    def service() -> Steps[None]:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield from sendall(chunk)
    return service


def http(root: Path) -> Service:
    def service() -> Steps[None]:
        yield from _http.serve_steps(root)
    return service


# -- the loop ------------------------------------------------------------------------------


@dataclass
class Totals:
    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(eq=False)
class Session:
    """One accepted connection: where its service stands, and what its report needs."""

    conn: Connection
    steps: Steps[None]
    recorder: Recorder | None
    started: float = field(default_factory=time.monotonic)
    op: Op | None = None  # what the service waits for; None once it is done
    deadline: float | None = None  # of a Recv, or of the FIN exchange once done
    pending: memoryview = field(default_factory=lambda: memoryview(b""))  # a Send's rest
    bytes_in: int = 0
    bytes_out: int = 0

    def ready(self) -> bool:
        """Can go on without blocking (driver lock held)."""
        if self.op is None:
            return self.conn.finished
        if isinstance(self.op, Recv):
            return self.conn.readable
        return self.conn.send_space != 0


@dataclass(frozen=True)
class _Report:
    session: Session
    failure: BaseException | None
    stopped: bool
    ended_at: float


class Server:
    """Accepts and serves on one loop thread; start(), then stop() from the main thread."""

    def __init__(self, listener: Listener, service: Service, out: Output, *, verbose: bool,
                 max_conns: int | None, once: bool, pcap: Any, svg: str | None = None) -> None:
        self.listener = listener
        self.service = service
        self.out = out
        self.verbose = verbose
        self.once = once
        self.max_conns = max_conns
        self.pcap = pcap  # a scapy PcapWriter, or None
        self.svg = svg  # --ladder-svg FILE
        self.plot_path: str | None = None  # --plot FILE
        self.done = threading.Event()  # the loop ended by itself (--once, an error)
        self.error: BaseException | None = None
        self.totals = Totals()
        self.stopping = False
        self._sessions: list[Session] = []
        self._accepted = 0
        self._reports: queue.SimpleQueue[_Report | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [start_worker(self._report_loop, "tcpscapy-report"),
                         start_worker(self._run, "tcpscapy-serve")]

    def stop(self) -> None:
        """End the loop (open connections are reset and reported); wait for the reports."""
        self.stopping = True
        for thread in reversed(self._threads):  # the loop first: it queues the last reports
            thread.join(JOIN_WAIT)

    def close_pcap(self) -> None:
        """Close --pcap under the output lock: a report still writing it finishes first
        (stop() waits for the reporter only so long), and later reports write nothing."""
        with self.out.lock:
            pcap, self.pcap = self.pcap, None
            if pcap is not None:
                pcap.close()

    # -- the loop thread -----------------------------------------------------------------

    def _run(self) -> None:
        drv = self.listener.driver
        try:
            while not self.stopping:
                with drv.lock:
                    drv.wait(self._anything_ready, self._next_deadline())
                now = time.monotonic()
                self._accept_ready()
                for session in [s for s in self._sessions if s.ready() or _due(s, now)]:
                    self._advance(session, now)
                if self.listener.closed and not self._sessions:
                    break  # --once served its connection
        except Exception as exc:
            if not self.stopping:
                self.error = exc
        finally:
            self._shut()
            self.done.set()

    def _anything_ready(self) -> bool:
        if self.stopping or (self._may_accept() and self.listener.acceptable):
            return True
        return any(s.ready() for s in self._sessions)

    def _next_deadline(self) -> float:
        due = time.monotonic() + STOP_POLL
        for s in self._sessions:
            if s.deadline is not None and s.deadline < due:
                due = s.deadline
        return due

    def _may_accept(self) -> bool:
        return not self.listener.closed and (self.max_conns is None
                                             or len(self._sessions) < self.max_conns)

    def _accept_ready(self) -> None:
        while self._may_accept() and self.listener.acceptable:
            recorder = None
            if self.verbose or self.pcap is not None or self.svg or self.plot_path:
                whole = self.pcap is not None or self.plot_path is not None
                recorder = Recorder(maxlen=None if whole else TRACE_LIMIT)
            try:
                conn = self.listener.accept(0, on_record=recorder.record if recorder else None)
            except (errors.ConnectionClosed, errors.TimedOut):
                return
            if recorder is not None:
                recorder.live = True
            self._accepted += 1
            session = Session(conn, self.service(), recorder)
            self._sessions.append(session)
            if self.once:
                self.listener.close()
            self._resume(session, None, None, time.monotonic())

    def _advance(self, s: Session, now: float) -> None:
        """Take `s` as far as it goes without blocking."""
        while True:
            op = s.op
            if op is None:  # closed by us: waiting for the FIN exchange
                if s.conn.finished or (s.deadline is not None and now >= s.deadline):
                    self._finish(s, None)
                return
            if isinstance(op, Recv):
                if s.conn.readable:
                    try:
                        data = s.conn.recv(op.max, 0)
                    except Exception as exc:
                        self._resume(s, None, exc, now)
                        continue
                    s.bytes_in += len(data)
                    self._resume(s, data, None, now)
                elif s.deadline is not None and now >= s.deadline:
                    self._resume(s, None, errors.TimedOut(
                        f"recv timed out after {op.timeout:g} s"), now)
                else:
                    return
                continue
            space = s.conn.send_space
            if space == 0:
                return
            try:
                chunk = s.pending[:space] if space > 0 else s.pending
                s.conn.send(chunk)  # fits: never blocks (raises once the connection is gone)
            except Exception as exc:
                self._resume(s, None, exc, now)
                continue
            s.bytes_out += len(chunk)
            s.pending = s.pending[len(chunk):]
            if s.pending:
                return
            self._resume(s, None, None, now)

    def _resume(self, s: Session, result: bytes | None, failure: BaseException | None,
                now: float) -> None:
        """Hand the service its result (or failure); note what it waits for next."""
        try:
            op = s.steps.throw(failure) if failure is not None else s.steps.send(result)
        except StopIteration:
            s.op, s.deadline = None, now + CLOSE_TIMEOUT
            s.conn.close()
            return
        except Exception as exc:  # reset, a client silent for IDLE_TIMEOUT, ...
            s.conn.abort()
            self._finish(s, exc)
            return
        s.op = op
        if isinstance(op, Recv):
            s.deadline = None if op.timeout is None else now + op.timeout
        else:
            s.deadline = None
            s.pending = memoryview(op.data).cast("B")

    def _finish(self, s: Session, failure: BaseException | None, *,
                stopped: bool = False) -> None:
        self._sessions.remove(s)
        s.steps.close()
        self._reports.put(_Report(s, failure, stopped, time.monotonic()))

    def _shut(self) -> None:
        """On the way out: stop listening, reset what is open, end the reporter."""
        with contextlib.suppress(Exception):  # the driver may be gone already
            self.listener.close()
        for s in list(self._sessions):
            with contextlib.suppress(Exception):
                s.conn.abort()
            self._finish(s, None, stopped=True)
        self._reports.put(None)

    # -- the reporter thread -------------------------------------------------------------

    def _report_loop(self) -> None:
        """Write reports as they come; whatever queued up meanwhile goes in one write."""
        ending = False
        while not ending:
            batch = [self._reports.get()]
            while not self._reports.empty():
                batch.append(self._reports.get_nowait())
            lines: list[str] = []
            for report in batch:
                if report is None:
                    ending = True
                    continue
                try:
                    lines += self._report_lines(report)
                except Exception as exc:  # a report must not stop the others
                    lines.append(f"tcpscapy listen: report failed: {exc}")
            with self.out.lock:
                self.out.lines(lines)

    def _report_lines(self, report: _Report) -> list[str]:
        """A connection's lines (and its pcap packets and SVG); adds it to the totals."""
        s, failure = report.session, report.failure
        conn = s.conn
        duration = report.ended_at - s.started
        peer = "{}:{}".format(*conn.remote)
        if report.stopped or (self.stopping and failure is not None):
            ended = "reset by us: stopped"
        elif failure is not None:
            ended = first_line(failure)
        elif conn.state is State.TIME_WAIT:
            ended = "closed (TIME-WAIT)"
        elif conn.state is State.CLOSED:
            ended = conn.close_reason or "closed"
        else:
            ended = f"{conn.state}: the FIN exchange did not finish in {CLOSE_TIMEOUT:g} s"
        with self.out.lock:  # report() reads the totals under it
            self.totals.connections += 1
            self.totals.bytes_in += s.bytes_in
            self.totals.bytes_out += s.bytes_out
        trace = s.recorder.snapshot() if s.recorder is not None else None
        out = self.out
        lines: list[str] = []
        if out.style == "json":
            if self.verbose and trace is not None:
                lines += [entry_json(e, trace.time_offset, conn=peer) for e in trace]
            lines.append(json.dumps({"type": "connection", "peer": peer, "bytes_in": s.bytes_in,
                                     "bytes_out": s.bytes_out, "duration": round(duration, 6),
                                     "state": str(conn.state), "ended": ended},
                                    separators=(",", ":")))
        elif out.style == "ladder":
            if self.verbose and trace is not None:
                lines.append(ladder(trace, relative=out.relative, width=out.width,
                                    color=out.color, ascii_only=out.ascii_only))
            lines.append(f"{peer}  in {s.bytes_in} B  out {s.bytes_out} B  "
                         f"{duration:.3f} s  {ended}")
        if trace is not None:
            with self.out.lock:  # close_pcap() waits for a write in progress
                if self.pcap is not None:
                    self.pcap.write(list(trace.to_scapy()))
                    self.pcap.flush()
        if trace is not None and self.svg is not None:
            self._write_svg(trace, conn)
        if trace is not None and self.plot_path is not None:
            (lip, lport), (rip, rport) = conn.local, conn.remote
            write_plot(self.out, conn, trace,
                       self.plot_path if self.once else svg_path_for(self.plot_path, conn.remote),
                       f"tcpscapy listen {lip}:{lport} \N{EM DASH} client {rip}:{rport}")
        return lines

    def _write_svg(self, trace: Trace, conn: Connection) -> None:
        """The connection's ladder as SVG: FILE itself with --once, else FILE named
        after the peer (a failure is reported, the server goes on)."""
        assert self.svg is not None
        path = self.svg if self.once else svg_path_for(self.svg, conn.remote)
        (lip, lport), (rip, rport) = conn.local, conn.remote
        title = f"tcpscapy listen {lip}:{lport} \N{EM DASH} client {rip}:{rport}"
        try:
            write_ladder_svg(trace, path, relative=self.out.relative, title=title)
        except OSError as exc:
            self.out.error(f"cannot write --ladder-svg {path}: {exc.strerror}", 1)

    # -- the summary ---------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The summary's figures: connections, bytes, the listener's counters."""
        ip, port = self.listener.local
        with self.out.lock:
            return {"listen": f"{ip}:{port}", "connections": self.totals.connections,
                    "bytes_in": self.totals.bytes_in, "bytes_out": self.totals.bytes_out,
                    "counters": {**self.listener.engine.counters,
                                 **self.listener.driver.icmp_counters}}


def _due(s: Session, now: float) -> bool:
    return s.deadline is not None and now >= s.deadline


def svg_path_for(base: str, peer: tuple[str, int]) -> str:
    """FILE with the peer in its name: ladder.svg -> ladder-10.77.0.1-40000.svg."""
    path = Path(base)
    suffix = path.suffix or ".svg"
    return str(path.with_name(f"{path.stem}-{peer[0]}-{peer[1]}{suffix}"))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
