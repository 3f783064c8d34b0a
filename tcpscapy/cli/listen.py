"""`tcpscapy listen [HOST:]PORT`: a server on tcpscapy's engine (echo, discard, file, HTTP).

The server (tcpscapy.cli._server) serves every connection on one event-loop
thread. The main thread only waits, so SIGINT/SIGTERM are handled there: the
listener closes, open connections are reset, the summary is printed.

With `--workers N` the process forks N worker processes that each run that same
server on one shared listening address (tcpscapy.io.workers spreads the flows);
the parent only supervises: it tags and prints their lines, sums their summaries,
passes a stop signal on, and stops them all if one of them dies.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

import tcpscapy
from tcpscapy import errors
from tcpscapy.api import Listener, _translate, resolve
from tcpscapy.cli._common import (
    Command,
    Output,
    Style,
    catch_stop_signals,
    check_writable,
    engine_option_flags,
    engine_options,
    parse_address,
    require_net_admin,
    signal_name,
)
from tcpscapy.cli._server import Server, Service, discard, echo, first_line, http, send_file
from tcpscapy.cli._server import svg_path_for as svg_path_for  # where tests and users look
from tcpscapy.core.stack import ANY
from tcpscapy.io import workers

STOP_WAIT = 30.0  # seconds stopped workers get to finish before they are killed

# Only the codes listen can give: nothing it does connects, routes or times out a peer.
EXIT_CODES = """\b
Exit codes:
  0  success (--once served its connection)
  1  other error (or a worker died)
  2  bad usage (also HOST not an address of this host)
  4  needs root
  7  unknown host (HOST)
  9  address in use
  130/143  stopped by SIGINT/SIGTERM"""

_EPILOG = f"""\b
Examples:
  tcpscapy listen 7                        echo on every local address
  tcpscapy listen 10.77.0.2:8080 --http ./site
  tcpscapy listen 9000 --file big.iso --max-conns 4 --syncookies always
  tcpscapy listen 7 --once --ladder-svg handout.svg
  tcpscapy listen 8080 --http ./site --workers 2

\b
One line per connection on stderr: peer, bytes in/out, duration, how it
ended (-v adds the connection's ladder; --json writes JSON objects instead;
-q prints errors only).
SIGINT (Ctrl-C) or SIGTERM stops listening, resets the open connections (RST),
prints the listener's counters and exits with 130 or 143.

\b
With --workers N, every line comes from one of N worker processes and starts
with its tag, [w1] to [wN] (with --json, a "worker" field); the summary adds
up the workers' counters and says how many connections each served. If a
worker dies, the others are stopped too (its flows would move to workers
that do not know them) and listen exits with 1 or the worker's error code.

{EXIT_CODES}"""


def print_summary(out: Output, report: dict[str, Any], *,
                  workers: list[dict[str, Any]] | None = None) -> None:
    """The summary lines (or JSON object); `workers`: each worker's own report."""
    if out.style == "json":
        extra = {} if workers is None else {"workers": workers}
        out.json(type="summary", **report, **extra)
        return
    if out.style == "quiet":
        return
    out.line(f"{report['listen']}: {report['connections']} connections, in "
             f"{report['bytes_in']} B, out {report['bytes_out']} B")
    if workers is not None:
        out.line("workers: " + ", ".join(f"w{w['worker']} {w['connections']}"
                                         for w in workers) + " connections")
    out.line("counters: " + " ".join(f"{k}={v}" for k, v in report["counters"].items()))


def _check_svg(path: str, once: bool, option: str = "--ladder-svg") -> None:
    """Fail before listening if `option`'s FILE cannot be written (FILE, or its directory)."""
    try:
        if once:
            with open(path, "w"):
                pass
        elif not os.access(Path(path).parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "directory not writable")
    except OSError as exc:
        raise errors.UsageError(f"cannot write {option} {path}: {exc.strerror}") from None


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
@click.option("--plot", "plot_path", metavar="FILE",
              help="Write each connection's time-sequence graph, cwnd and RTT as an SVG "
              "picture: FILE with --once, else FILE named after the client.")
@click.option("--json", "as_json", is_flag=True, help="JSON objects on stderr instead of text.")
@click.option("-v", "--verbose", is_flag=True, help="Each connection's ladder (or its JSON "
              "entries) before its summary line.")
@click.option("-q", "--quiet", is_flag=True, help="No per-connection lines and no summary; "
              "errors only.")
@click.option("--absolute", is_flag=True, help="Absolute seq/ack in the ladder.")
@click.option("--workers", "worker_count", type=click.IntRange(1, workers.MAX_WORKERS), default=1,
              show_default=True, metavar="N",
              help="Serve with N processes, to use N cores: the kernel hands each "
              "connection to one of them (PACKET_FANOUT). Lines then come from several "
              "processes, tagged [w1]..[wN]; --backlog and --max-conns apply to each; "
              "--pcap writes FILE-w1.pcap and so on.")
def listen(target: str, echo_flag: bool, discard_flag: bool, file: str | None,
           http_dir: str | None, backlog: int, max_conns: int | None, once: bool,
           mss: int | None, wscale: str | None, no_sack: bool, no_timestamps: bool,
           window: int | None, retries: int | None, rto: float | None,
           user_timeout: float | None, keepalive: float | None, nodelay: bool,
           cc: str | None, ecn: str | None, syncookies: str,
           tfo: bool, pcap_path: str | None, svg_path: str | None, as_json: bool,
           verbose: bool, quiet: bool, absolute: bool, worker_count: int,
           plot_path: str | None) -> None:
    """Listen on [HOST:]PORT (all local addresses without HOST; port 0 picks one) on
    tcpscapy's own TCP engine, serving many clients at once. Needs root."""
    style: Style = "json" if as_json else "quiet" if quiet else "ladder"
    out = Output("listen", style=style, relative=not absolute)
    try:
        if quiet and (as_json or verbose):
            raise errors.UsageError(f"-q and {'--json' if as_json else '-v'} exclude each other")
        mode, service = _service(echo_flag, discard_flag, file, http_dir)
        host, port = parse_address(target, host_optional=True)
        options = engine_options(mss=mss, wscale=wscale, no_sack=no_sack,
                                 no_timestamps=no_timestamps, window=window, retries=retries,
                                 rto=rto, user_timeout=user_timeout, keepalive=keepalive,
                                 nodelay=nodelay, cc=cc, ecn=ecn)
        options.update(syncookies=syncookies, tfo=tfo)
        if worker_count > 1 and once:
            raise errors.UsageError("--once serves one connection: it takes no --workers")
        for path in _pcap_paths(pcap_path, worker_count):
            check_writable(path)
        if svg_path:
            _check_svg(svg_path, once)
        if plot_path:
            _check_svg(plot_path, once, "--plot")
        require_net_admin()
        plan = Plan(service, mode, backlog, options, verbose, max_conns, once, svg_path,
                    plot_path)
        if worker_count > 1:
            sys.exit(_run_workers(worker_count, host, port, plan, pcap_path, out))
        listener = tcpscapy.listen(port, host, backlog=backlog, **options)
    except errors.TcpscapyError as exc:
        out.error(str(exc), exc.exit_code)
        sys.exit(exc.exit_code)

    def announce() -> None:
        ip, bound = listener.local
        out.note(f"listening on {ip}:{bound} ({mode})", type="listening",
                 listen=f"{ip}:{bound}", port=bound, mode=mode)

    wait = catch_stop_signals()  # before announcing: a stop signal is never lost or raised
    server, signum = _serve(listener, plan, out, pcap_path, announce, wait)
    print_summary(out, server.report())
    if signum is not None:
        out.error(f"stopped by {signal_name(signum)}", 128 + signum)
        sys.exit(128 + signum)
    if server.error is not None:
        code = errors.exit_code(server.error)
        out.error(first_line(server.error), code)
        sys.exit(code)


@dataclass(frozen=True)
class Plan:
    """What each server (the only one, or every worker's) is told to do."""

    service: Service
    mode: str
    backlog: int
    options: dict[str, Any]
    verbose: bool
    max_conns: int | None
    once: bool
    svg_path: str | None
    plot_path: str | None = None


def _serve(listener: Listener, plan: Plan, out: Output, pcap_path: str | None,
           announce: Callable[[], None],
           wait: Callable[[threading.Event], int | None]) -> tuple[Server, int | None]:
    """Accept and serve until done or a stop signal (returned); open connections are
    then reset and reported."""
    pcap = _pcap_writer(pcap_path) if pcap_path else None
    server = Server(listener, plan.service, out, verbose=plan.verbose,
                    max_conns=plan.max_conns, once=plan.once, pcap=pcap, svg=plan.svg_path)
    server.plot_path = plan.plot_path
    announce()
    server.start()
    signum = wait(server.done)
    server.stop()
    server.close_pcap()
    return server, signum


# -- --workers N ---------------------------------------------------------------------------


def _pcap_paths(path: str | None, count: int) -> list[str]:
    """--pcap FILE: FILE itself, or one file per worker (cap.pcap -> cap-w1.pcap, ...)."""
    if path is None:
        return []
    if count == 1:
        return [path]
    base = Path(path)
    suffix = base.suffix or ".pcap"
    return [str(base.with_name(f"{base.stem}-w{i}{suffix}")) for i in range(1, count + 1)]


def _run_workers(count: int, host: str | None, port: int, plan: Plan, pcap_path: str | None,
                 out: Output) -> int:
    """The parent of `count` workers: set up what they share, fork them, print their
    lines and the summary, stop them all on a signal or when one dies. Returns the exit
    code. The fan-out's rule and port are released on every path."""
    ip = ANY if host is None else resolve(host)
    fan = workers.FanOut(ip, port, count)
    try:
        fan.open()
    except Exception as exc:
        raise _as_tcpscapy_error(_translate(exc, f"listen on {ip}:{port}")) from None
    pcaps = _pcap_paths(pcap_path, count)
    sup = _Supervisor(out, count)

    def worker_main(index: int, channel: workers.Channel) -> int:
        return _worker(index, channel, fan, plan, out, pcaps[index - 1] if pcaps else None)

    try:
        with workers.WorkerGroup(count, worker_main) as group:
            sup.run(group, fan, f"{ip}:{fan.port}", fan.port, plan.mode)
    finally:
        fan.close()
    return sup.finish()


def _as_tcpscapy_error(exc: Exception) -> errors.TcpscapyError:
    if isinstance(exc, errors.TcpscapyError):
        return exc
    return errors.TcpscapyError(first_line(exc))


class _Supervisor:
    """The parent's loop over its workers' events; see _run_workers."""

    def __init__(self, out: Output, count: int) -> None:
        self.out = out
        self.count = count
        self.ready: dict[int, int] = {}  # worker -> pid
        self.reports: dict[int, dict[str, Any]] = {}
        self.failed: workers.Worker | None = None
        self.signum: int | None = None
        self.listening = ""
        self.stopping = False

    def run(self, group: workers.WorkerGroup, fan: workers.FanOut, listen: str, port: int,
            mode: str) -> None:
        while not self._ended() and len(self.ready) < self.count:
            self._handle(group.events())
        if not self._ended():
            fan.release_groups()  # every worker has joined: flows hash over them alone
            self.listening = listen
            pids = [self.ready[i] for i in sorted(self.ready)]
            self.out.note(f"listening on {listen} ({mode}, {self.count} workers: pids "
                          f"{' '.join(map(str, pids))})", type="listening", listen=listen,
                          port=port, mode=mode, workers=self.count, pids=pids)
        while not self._ended():
            self._handle(group.events())
        self.stopping = True
        group.signal_all(self.signum or signal.SIGTERM)
        for event in group.until_all_exited(STOP_WAIT):
            self._handle([event])

    def _ended(self) -> bool:
        return self.signum is not None or self.failed is not None

    def _handle(self, events: list[workers.Event]) -> None:
        for event in events:
            if isinstance(event, workers.Line):
                self.out.line(_tagged(event.worker.index, event.text, self.out.style))
            elif isinstance(event, workers.Message):
                obj, index = event.obj, event.worker.index
                if "ready" in obj:
                    self.ready[index] = event.worker.pid
                if "report" in obj:
                    self.reports[index] = obj["report"]
            elif isinstance(event, workers.Exited):
                if not self.stopping and self.failed is None:
                    self.failed = event.worker
            elif self.signum is None:
                self.signum = event.signum

    def finish(self) -> int:
        """Print the summary and the last line; the exit code."""
        if self.listening:
            reports = [{"worker": i, "pid": self.ready.get(i), **self.reports[i]}
                       for i in sorted(self.reports)]
            print_summary(self.out, _add_up(self.listening, reports), workers=reports)
        if self.signum is not None:
            self.out.error(f"stopped by {signal_name(self.signum)}", 128 + self.signum)
            return 128 + self.signum
        assert self.failed is not None and self.failed.status is not None
        failed = self.failed
        own = failed.exit_code or 0
        code = own if 0 < own < 128 else 1
        how = workers.describe_status(failed.status)
        if own in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            how = f"was stopped by {signal_name(own - 128)}"
        self.out.error(f"worker {failed.index} (pid {failed.pid}) {how}: stopped them all",
                       code)
        return code


def _add_up(listen: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    counters: dict[str, int] = {}
    for report in reports:
        for name, value in report["counters"].items():
            counters[name] = counters.get(name, 0) + value
    return {"listen": listen, **{key: sum(r[key] for r in reports)
                                 for key in ("connections", "bytes_in", "bytes_out")},
            "counters": counters}


def _tagged(index: int, text: str, style: str) -> str:
    """A worker's line as the parent prints it: [wN] first, or a "worker" field."""
    if style != "json":
        return f"[w{index}] {text}"
    if text.startswith("{") and text.endswith("}"):
        return f'{{"worker":{index}' + ("," if text != "{}" else "") + text[1:]
    return json.dumps({"type": "output", "worker": index, "text": text},
                      separators=(",", ":"))


def _worker(index: int, channel: workers.Channel, fan: workers.FanOut, plan: Plan,
            out: Output, pcap_path: str | None) -> int:
    """One worker process: the same server as without --workers, on the shared address;
    its lines go to the parent, its summary too. Returns the exit code."""
    stop = workers.StopSignals()
    fan.release_groups()  # this child's copies of the parent's sockets
    driver = fan.driver(index)
    try:
        try:
            listener = tcpscapy.listen(fan.port, fan.ip, backlog=plan.backlog, driver=driver,
                                       **plan.options)
        except errors.TcpscapyError as exc:
            out.error(str(exc), exc.exit_code)
            return exc.exit_code

        def announce() -> None:
            channel.send(ready=True)

        server, signum = _serve(listener, plan, out, pcap_path, announce, stop.wait)
        channel.send(report=server.report())
        if signum is not None:
            return 128 + signum
        if server.error is not None:
            code = errors.exit_code(server.error)
            out.error(first_line(server.error), code)
            return code
        return 0
    finally:
        driver.close()


def _pcap_writer(path: str) -> Any:
    from scapy.utils import PcapWriter

    writer = PcapWriter(path, linktype=228, sync=True)  # 228: raw IPv4, as write_pcap
    writer.write_header(None)
    return writer
