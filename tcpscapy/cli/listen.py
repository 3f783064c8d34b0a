"""`tcpscapy listen [HOST:]PORT`: a server on tcpscapy's engine (echo, discard, file, HTTP).

A worker thread accepts; each connection gets its own thread. The main thread
only waits, so SIGINT/SIGTERM are handled there: the listener closes, open
connections are reset, the summary is printed.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

import tcpscapy
from tcpscapy import errors
from tcpscapy.api import Connection, Listener
from tcpscapy.cli import _http
from tcpscapy.cli._common import (
    EXIT_CODES_HELP,
    Command,
    Output,
    Recorder,
    check_writable,
    engine_option_flags,
    engine_options,
    entry_json,
    parse_address,
    require_net_admin,
    signal_name,
    start_worker,
    wait_or_signal,
)
from tcpscapy.core.state import State
from tcpscapy.io.driver import TRACE_LIMIT
from tcpscapy.svg import write_ladder_svg
from tcpscapy.trace import ladder

CLOSE_TIMEOUT = 10.0  # seconds a closed connection may take to finish its FIN exchange
CHUNK = 65536
IDLE_TIMEOUT = 300.0  # echo/discard: a silent client is dropped after this long

_EPILOG = f"""\b
Examples:
  tcpscapy listen 7                        echo on every local address
  tcpscapy listen 10.77.0.2:8080 --http ./site
  tcpscapy listen 9000 --file big.iso --max-conns 4 --syncookies always
  tcpscapy listen 7 --once --ladder-svg handout.svg

\b
One line per connection on stderr: peer, bytes in/out, duration, how it
ended (-v adds the connection's ladder; --json writes JSON objects instead).
SIGINT (Ctrl-C) or SIGTERM stops listening, resets the open connections (RST),
prints the listener's counters and exits with 130 or 143.

{EXIT_CODES_HELP}"""


class Counted:
    """A connection that counts the bytes the service reads and writes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bytes_in = self.bytes_out = 0

    def recv(self, max: int = CHUNK, timeout: float | None = IDLE_TIMEOUT) -> bytes:
        data = self.conn.recv(max, timeout)
        self.bytes_in += len(data)
        return data

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        self.conn.sendall(data, timeout)
        self.bytes_out += len(data)


Service = Callable[[Counted], None]


def echo(io: Counted) -> None:
    while data := io.recv():
        io.sendall(data)


def discard(io: Counted) -> None:
    while io.recv():
        pass


def send_file(path: Path) -> Service:
    def service(io: Counted) -> None:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                io.sendall(chunk)
    return service


def http(root: Path) -> Service:
    def service(io: Counted) -> None:
        _http.serve(io, root)
    return service


@dataclass
class Totals:
    connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(eq=False)
class Session:
    """One accepted connection: what its summary line needs."""

    conn: Connection
    io: Counted
    recorder: Recorder
    started: float = field(default_factory=time.monotonic)
    reported: bool = False


class Server:
    """Accepts and serves; run() on a worker thread, stop() from the main thread."""

    def __init__(self, listener: Listener, service: Service, out: Output, *, verbose: bool,
                 max_conns: int | None, once: bool, pcap: Any, svg: str | None = None) -> None:
        self.listener = listener
        self.service = service
        self.out = out
        self.verbose = verbose
        self.once = once
        self.pcap = pcap  # a scapy PcapWriter, or None
        self.svg = svg  # --ladder-svg FILE
        self.slots = threading.BoundedSemaphore(max_conns) if max_conns else None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.totals = Totals()
        self.stopping = False
        self._active: set[Session] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self.stopping:
                if self.slots is not None:
                    self.slots.acquire()
                recorder = Recorder(maxlen=None if self.pcap is not None else TRACE_LIMIT)
                try:
                    conn = self.listener.accept(on_record=recorder.record)
                except errors.ConnectionClosed:
                    break  # the listener was closed
                recorder.live = True
                session = Session(conn, Counted(conn), recorder)
                with self._lock:
                    self._active.add(session)
                if self.once:
                    self.listener.close()
                    self._serve(session)
                    break
                threading.Thread(target=self._serve, args=(session,), daemon=True,
                                 name="tcpscapy-serve").start()
        except Exception as exc:
            if not self.stopping:
                self.error = exc
        self.done.set()

    def _serve(self, session: Session) -> None:
        conn = session.conn
        failure: BaseException | None = None
        try:
            self.service(session.io)
            conn.close()
            conn.wait_closed(CLOSE_TIMEOUT)
        except Exception as exc:  # reset, a client silent for IDLE_TIMEOUT, ...
            failure = exc
            conn.abort()
        finally:
            if self.slots is not None:
                self.slots.release()
        self._report(session, failure)

    def _report(self, session: Session, failure: BaseException | None, *,
                stopped: bool = False) -> None:
        """The connection's summary line (and ladder, and pcap packets), once."""
        with self._lock:
            if session.reported:
                return
            session.reported = True
            self._active.discard(session)
        conn, io = session.conn, session.io
        duration = time.monotonic() - session.started
        peer = "{}:{}".format(*conn.remote)
        if stopped or (self.stopping and failure is not None):
            ended = "reset by us: stopped"
        elif failure is not None:
            ended = _first_line(failure)
        elif conn.state is State.TIME_WAIT:
            ended = "closed (TIME-WAIT)"
        elif conn.state is State.CLOSED:
            ended = conn.close_reason or "closed"
        else:
            ended = f"{conn.state}: the FIN exchange did not finish in {CLOSE_TIMEOUT:g} s"
        trace = session.recorder.snapshot()
        with self.out.lock:
            self.totals.connections += 1
            self.totals.bytes_in += io.bytes_in
            self.totals.bytes_out += io.bytes_out
            if self.out.style == "json":
                if self.verbose:
                    self.out.lines(entry_json(e, trace.time_offset, conn=peer) for e in trace)
                self.out.json(type="connection", peer=peer, bytes_in=io.bytes_in,
                              bytes_out=io.bytes_out, duration=round(duration, 6),
                              state=str(conn.state), ended=ended)
            else:
                if self.verbose:
                    self.out.line(ladder(trace, relative=self.out.relative, width=self.out.width,
                                         color=self.out.color, ascii_only=self.out.ascii_only))
                self.out.line(f"{peer}  in {io.bytes_in} B  out {io.bytes_out} B  "
                              f"{duration:.3f} s  {ended}")
            if self.pcap is not None:
                self.pcap.write(list(trace.to_scapy()))
                self.pcap.flush()
            if self.svg is not None:
                self._write_svg(trace, conn)

    def _write_svg(self, trace: Any, conn: Connection) -> None:
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

    def stop(self) -> None:
        """Close the listener, reset the open connections and report them."""
        self.stopping = True
        self.listener.close()
        with self._lock:
            sessions = list(self._active)
        for session in sessions:
            session.conn.abort()
        for session in sessions:
            self._report(session, None, stopped=True)

    def summary(self) -> None:
        counters = self.listener.engine.counters
        totals = self.totals
        ip, port = self.listener.local
        if self.out.style == "json":
            self.out.json(type="summary", listen=f"{ip}:{port}", connections=totals.connections,
                          bytes_in=totals.bytes_in, bytes_out=totals.bytes_out,
                          counters=counters)
            return
        self.out.line(f"{ip}:{port}: {totals.connections} connections, in {totals.bytes_in} B, "
                      f"out {totals.bytes_out} B")
        self.out.line("counters: " + " ".join(f"{k}={v}" for k, v in counters.items()))


def svg_path_for(base: str, peer: tuple[str, int]) -> str:
    """FILE with the peer in its name: ladder.svg -> ladder-10.77.0.1-40000.svg."""
    path = Path(base)
    suffix = path.suffix or ".svg"
    return str(path.with_name(f"{path.stem}-{peer[0]}-{peer[1]}{suffix}"))


def _check_svg(path: str, once: bool) -> None:
    """Fail before listening if --ladder-svg cannot be written (FILE, or its directory)."""
    try:
        if once:
            with open(path, "w"):
                pass
        elif not os.access(Path(path).parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "directory not writable")
    except OSError as exc:
        raise errors.UsageError(f"cannot write --ladder-svg {path}: {exc.strerror}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _service(echo_flag: bool, discard_flag: bool, file: str | None,
             http_dir: str | None) -> tuple[str, Service]:
    chosen = [name for name, on in (("--echo", echo_flag), ("--discard", discard_flag),
                                    ("--file", file is not None),
                                    ("--http", http_dir is not None)) if on]
    if len(chosen) > 1:
        raise errors.UsageError(f"{' and '.join(chosen)} exclude each other: choose one")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise errors.UsageError(f"--file {file}: no such file")
        try:
            path.open("rb").close()
        except OSError as exc:
            raise errors.UsageError(f"--file {file}: {exc.strerror}") from None
        return f"file {file}", send_file(path)
    if http_dir is not None:
        root = Path(http_dir)
        if not root.is_dir():
            raise errors.UsageError(f"--http {http_dir}: no such directory")
        return f"http {http_dir}", http(root)
    if discard_flag:
        return "discard", discard
    return "echo", echo


@click.command("listen", cls=Command, epilog=_EPILOG)
@click.argument("target", metavar="[HOST:]PORT")
@click.option("--echo", "echo_flag", is_flag=True, help="Send back what each client sends "
              "(the default).")
@click.option("--discard", "discard_flag", is_flag=True, help="Read and drop what clients send.")
@click.option("--file", metavar="FILE", help="Send FILE to each client, then close.")
@click.option("--http", "http_dir", metavar="DIR",
              help="Serve files under DIR over HTTP/1.1 (GET, HEAD).")
@click.option("--backlog", type=click.IntRange(1, 65535), default=128, show_default=True,
              help="Handshaking plus not yet accepted connections.")
@click.option("--max-conns", type=click.IntRange(1, 100000), metavar="N",
              help="Serve at most N clients at once; the rest wait in the backlog.")
@click.option("--once", is_flag=True, help="Serve one connection, then exit.")
@engine_option_flags(retries_help="SYN-ACK retransmissions before giving up (default 5).")
@click.option("--syncookies", type=click.Choice(["never", "auto", "always"]), default="auto",
              show_default=True, help="SYN cookies: when the SYN queue is full, or always.")
@click.option("--tfo", is_flag=True, help="Accept TCP Fast Open (data in the SYN with a "
              "valid cookie).")
@click.option("--pcap", "pcap_path", metavar="FILE", help="Write every segment to a pcap file.")
@click.option("--ladder-svg", "svg_path", metavar="FILE",
              help="Write each connection's ladder as an SVG picture: FILE with --once, "
              "else FILE named after the client (ladder-10.77.0.1-40000.svg).")
@click.option("--json", "as_json", is_flag=True, help="JSON objects on stderr instead of text.")
@click.option("-v", "--verbose", is_flag=True, help="Each connection's ladder (or its JSON "
              "entries) before its summary line.")
@click.option("--absolute", is_flag=True, help="Absolute seq/ack in the ladder.")
def listen(target: str, echo_flag: bool, discard_flag: bool, file: str | None,
           http_dir: str | None, backlog: int, max_conns: int | None, once: bool,
           mss: int | None, wscale: str | None, no_sack: bool, no_timestamps: bool,
           window: int | None, retries: int | None, rto: float | None,
           user_timeout: float | None, keepalive: float | None, syncookies: str,
           tfo: bool, pcap_path: str | None, svg_path: str | None, as_json: bool,
           verbose: bool, absolute: bool) -> None:
    """Listen on [HOST:]PORT (all local addresses without HOST; port 0 picks one) on
    tcpscapy's own TCP engine, serving many clients at once. Needs root."""
    out = Output("listen", style="json" if as_json else "ladder", relative=not absolute)
    try:
        mode, service = _service(echo_flag, discard_flag, file, http_dir)
        host, port = parse_address(target, host_optional=True)
        options = engine_options(mss=mss, wscale=wscale, no_sack=no_sack,
                                 no_timestamps=no_timestamps, window=window, retries=retries,
                                 rto=rto, user_timeout=user_timeout, keepalive=keepalive)
        options.update(syncookies=syncookies, tfo=tfo)
        if pcap_path:
            check_writable(pcap_path)
        if svg_path:
            _check_svg(svg_path, once)
        require_net_admin()
        listener = tcpscapy.listen(port, host, backlog=backlog, **options)
    except errors.TcpscapyError as exc:
        out.error(str(exc), exc.exit_code)
        sys.exit(exc.exit_code)

    pcap = _pcap_writer(pcap_path) if pcap_path else None
    server = Server(listener, service, out, verbose=verbose, max_conns=max_conns, once=once,
                    pcap=pcap, svg=svg_path)
    ip, bound = listener.local
    out.note(f"listening on {ip}:{bound} ({mode})", type="listening", listen=f"{ip}:{bound}",
             port=bound, mode=mode)
    start_worker(server.run, "tcpscapy-accept")
    signum = wait_or_signal(server.done)
    if signum is not None:
        server.stop()
    else:
        listener.close()
    server.summary()
    if pcap is not None:
        pcap.close()
    if signum is not None:
        out.error(f"stopped by {signal_name(signum)}", 128 + signum)
        sys.exit(128 + signum)
    if server.error is not None:
        code = errors.exit_code(server.error)
        out.error(_first_line(server.error), code)
        sys.exit(code)


def _pcap_writer(path: str) -> Any:
    from scapy.utils import PcapWriter

    writer = PcapWriter(path, linktype=228, sync=True)  # 228: raw IPv4, as write_pcap
    writer.write_header(None)
    return writer
