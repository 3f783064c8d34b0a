"""`tcpscapy connect HOST:PORT`: netcat on tcpscapy's engine, with the segment ladder.

Threads: a worker opens the connection and copies the peer's bytes to stdout,
a second one copies stdin (or --send) to the peer and half-closes at EOF; the
driver loop runs on whichever of them is waiting. The main thread only waits,
so SIGINT/SIGTERM are handled there and never interrupt the engine mid-segment.
"""

from __future__ import annotations

import os
import select
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

import tcpscapy
from tcpscapy import errors
from tcpscapy.api import Connection, check_lab_destination, resolve
from tcpscapy.cli._common import (
    EXIT_CODES_HELP,
    Command,
    LivePrinter,
    Output,
    Style,
    catch_stop_signals,
    check_writable,
    engine_option_flags,
    engine_options,
    parse_address,
    require_net_admin,
    signal_name,
    start_worker,
    unescape,
)
from tcpscapy.cli._plot import check_plot_path, write_plot
from tcpscapy.cli._streams import reopen_closed
from tcpscapy.svg import MAX_ROWS, write_ladder_svg
from tcpscapy.trace import fast_open_lines

CLOSE_TIMEOUT = 10.0  # seconds to wait for the FIN exchange to finish after both sides closed
STDIN_CHUNK = 65536
STDIN_GRACE = 0.05  # --tfo: seconds to wait for the first stdin bytes, to put them in the SYN

_EPILOG = f"""\b
Examples (10.77.0.2 is the lab's server: `tcpscapy lab up` first):
  tcpscapy lab exec client -- tcpscapy connect 10.77.0.2:80 --send 'GET / HTTP/1.0\\r\\n\\r\\n'
  head -c 1M /dev/urandom | tcpscapy lab exec client -- tcpscapy connect 10.77.0.2 7 -q > out
  tcpscapy connect example.test:http --no-sack --wscale off --mss 536 --json
  tcpscapy lab exec client -- tcpscapy connect 10.77.0.2:80 --tfo --ladder-svg tfo.svg \\
      --send 'GET / HTTP/1.0\\r\\n\\r\\n'

\b
A lab address (10.77.0.0/24; the routed lab's 10.78.0.0/16) is refused unless
this namespace is in that lab: from outside it would leave by the default
route to the real network. --no-lab-check allows it, for your own namespaces
on those addresses.

\b
The ladder (stderr): time since the first entry, our state, an arrow per
segment (flags in Scapy letters, seq/ack relative to each side's ISN unless
--absolute, window, len, options) and our state changes; the handshake RTT
at the end. --json writes one object per segment and state change instead.

\b
--tfo (TCP Fast Open): the first connection to a server asks for a cookie,
later ones put the cookie and the first data in the SYN: the --send text, or
the stdin bytes already there when connecting (the rest follows the
handshake). Cookies are cached per server address in --tfo-cache (default
$XDG_CACHE_HOME/tcpscapy/tfo.json); a server that ignores Fast Open gets plain
SYNs for an hour.

\b
SIGINT (Ctrl-C) or SIGTERM resets the connection (RST), so the peer forgets it
at once, and exits with 130 or 143.

{EXIT_CODES_HELP}"""


class Client:
    """One connection's session; run() on a worker thread, the outcome in `code`/`error`."""

    def __init__(self, host: str, port: int, options: dict[str, Any], data: bytes | None,
                 printer: LivePrinter, timeout: float | None, *, no_fin: bool = False) -> None:
        self.host, self.port = host, port
        self.options = options
        self.data = data
        self.printer = printer
        self.timeout = timeout
        self.no_fin = no_fin
        self.conn: Connection | None = None
        self.done = threading.Event()
        self.code = 0
        self.error: BaseException | None = None
        self.sent = self.received = 0
        self.stopping = False  # the main thread took over: workers report nothing more
        self._fin_sent = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            self.conn = conn = tcpscapy.connect(self.host, self.port, timeout=self.timeout,
                                                on_record=self.printer.record, **self.options)
            self.sent += len(self.options.get("data", b""))  # queued with the SYN (--tfo)
            threading.Thread(target=self._send_side, name="tcpscapy-stdin", daemon=True).start()
            out = sys.stdout.buffer
            while chunk := conn.recv():
                try:
                    out.write(chunk)
                    out.flush()
                except OSError as exc:  # stdout closed (e.g. `| head`): stop here
                    conn.abort()
                    raise errors.TcpscapyError(f"cannot write to stdout: {exc.strerror}; "
                                               "connection reset") from None
                self.received += len(chunk)
            self._fin_sent.wait()  # netcat: done when both directions are closed
            if self.no_fin:
                conn.shutdown()  # the peer closed first: now our FIN
            if not self.done.is_set():
                conn.wait_closed(CLOSE_TIMEOUT)
            self._finish(None)
        except Exception as exc:
            self._finish(exc)

    def _send_side(self) -> None:
        conn = self.conn
        assert conn is not None
        try:
            if self.data is not None:
                conn.sendall(self.data)
                self.sent += len(self.data)
            else:
                while chunk := _read_stdin():
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            if not self.no_fin:
                conn.shutdown()  # FIN: we have nothing more to say
            self._fin_sent.set()  # (with --no-fin, sent once the peer has closed)
        except Exception as exc:
            self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        with self._lock:
            if self.done.is_set() or self.stopping:
                return
            self.error = exc
            self.code = 0 if exc is None else errors.exit_code(exc)
            self.done.set()

    def stop(self, signum: int) -> None:
        """SIGINT/SIGTERM: reset the connection (if open) and take over the outcome."""
        with self._lock:
            self.stopping = True
            self.code = 128 + signum
            self.error = None
        if self.conn is not None:
            self.conn.abort()


def _read_stdin() -> bytes:
    try:
        return os.read(sys.stdin.fileno(), STDIN_CHUNK)
    except (OSError, ValueError):  # no stdin at all: as if empty
        return b""


def _stdin_now(grace: float) -> tuple[bytes, bool]:
    """(bytes, EOF reached) of what stdin holds within `grace` seconds, without
    waiting longer: the data a Fast Open SYN can carry."""
    try:
        ready = select.select([sys.stdin.fileno()], [], [], grace)[0]
    except (OSError, ValueError):  # no stdin at all: as if empty
        return b"", True
    if not ready:
        return b"", False
    chunk = _read_stdin()
    return chunk, not chunk


class _ConnectCommand(Command):
    """Keeps the command line, to show it back inside `tcpscapy lab exec client --`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["tcpscapy.args"] = list(args)
        return super().parse_args(ctx, args)


@click.command("connect", cls=_ConnectCommand, epilog=_EPILOG)
@click.argument("target", metavar="HOST:PORT")
@click.argument("port_arg", metavar="[PORT]", required=False)
@click.option("--send", "send_text", metavar="TEXT",
              help=r"Send TEXT (escapes \r \n \t \\ \0 \xHH) instead of stdin, then FIN "
                   "(see --no-fin).")
@click.option("--no-fin", is_flag=True,
              help="At the end of stdin or --send, keep our side open (no FIN) until the "
                   "peer closes.")
@click.option("--no-lab-check", is_flag=True,
              help="Allow a lab address from outside the lab (your own namespaces).")
@engine_option_flags(retries_help="SYN retransmissions before giving up (default 7).")
@click.option("--sport", type=click.IntRange(1, 65535), metavar="PORT",
              help="Local port (default: a free one).")
@click.option("--iface", metavar="NAME", help="Send through this interface.")
@click.option("--timeout", type=click.FloatRange(0, None, min_open=True), metavar="SECONDS",
              help="Give up connecting after SECONDS (default: when the retries are spent).")
@click.option("--pcap", "pcap_path", metavar="FILE", help="Write every segment to a pcap file.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per segment and state change on stderr, no ladder.")
@click.option("-q", "--quiet", is_flag=True, help="No ladder; errors only.")
@click.option("--absolute", is_flag=True, help="Absolute seq/ack in the ladder.")
@click.option("--tfo", is_flag=True,
              help="TCP Fast Open: get a cookie, then send the first data in the SYN.")
@click.option("--tfo-cache", "tfo_cache", metavar="FILE",
              help="Fast Open cookie cache (default $XDG_CACHE_HOME/tcpscapy/tfo.json).")
@click.option("--ladder-svg", "svg_path", metavar="FILE",
              help="Write the ladder as an SVG picture to FILE at exit (a long one without "
                   "its middle, marked: see --ladder-svg-full).")
@click.option("--ladder-svg-full", "svg_full", is_flag=True,
              help="Every row in the --ladder-svg picture, however tall.")
@click.option("--plot", "plot_path", metavar="FILE",
              help="Write a time-sequence graph, cwnd and RTT as an SVG picture to FILE at exit.")
def connect(target: str, port_arg: str | None, send_text: str | None, no_fin: bool,
            no_lab_check: bool, mss: int | None, wscale: str | None,
            no_sack: bool, no_timestamps: bool, window: int | None, retries: int | None,
            rto: float | None, user_timeout: float | None, keepalive: float | None, nodelay: bool,
            cc: str | None, ecn: str | None, sport: int | None, iface: str | None,
            timeout: float | None,
            pcap_path: str | None, as_json: bool, quiet: bool, absolute: bool, tfo: bool,
            tfo_cache: str | None, svg_path: str | None, svg_full: bool,
            plot_path: str | None) -> None:
    """Connect to HOST:PORT or HOST PORT (a name or IPv4 address; PORT a number or a
    service name such as http) on tcpscapy's own TCP engine.

    Like netcat: stdin goes to the peer, the peer's bytes go to stdout; EOF on
    stdin sends FIN (half-close, unless --no-fin) and the command ends when both
    directions are closed. The segment ladder goes to stderr as it happens. Needs root.
    """
    closed = reopen_closed()  # stdin closed: nothing to send; stderr closed: no ladder
    style: Style = "json" if as_json else "quiet" if quiet else "ladder"
    out = Output("connect", style=style, relative=not absolute)
    try:
        if "stdout" in closed:
            raise errors.UsageError("stdout is closed (>&-): the peer's bytes would be lost; "
                                    "redirect it instead (>/dev/null to discard them)")
        if as_json and quiet:
            raise errors.UsageError("--json and -q exclude each other")
        host, port = _target(target, port_arg)
        data = unescape(send_text) if send_text is not None else None
        options = engine_options(mss=mss, wscale=wscale, no_sack=no_sack,
                                 no_timestamps=no_timestamps, window=window, retries=retries,
                                 rto=rto, user_timeout=user_timeout, keepalive=keepalive,
                                 nodelay=nodelay, cc=cc, ecn=ecn)
        options.update({k: v for k, v in (("sport", sport), ("iface", iface)) if v})
        if tfo_cache is not None and not tfo:
            raise errors.UsageError("--tfo-cache needs --tfo")
        if tfo_cache is not None:
            _check_tfo_cache(tfo_cache)
        if pcap_path:
            check_writable(pcap_path)
        if svg_full and not svg_path:
            raise errors.UsageError("--ladder-svg-full needs --ladder-svg")
        if svg_path:
            _check_svg(svg_path)
        if plot_path:
            check_plot_path(plot_path)
        if not no_lab_check:
            _check_lab(host, port)
        require_net_admin()
    except errors.TcpscapyError as exc:
        out.error(str(exc), exc.exit_code)
        sys.exit(exc.exit_code)

    if tfo:  # the data goes to connect(), to ride in the SYN
        early, stdin_eof = (data, True) if data is not None else _stdin_now(STDIN_GRACE)
        options.update(tfo=True, data=early, tfo_cache=tfo_cache)
        data = b"" if stdin_eof else None  # what the send side still has to copy
    printer = LivePrinter(out, keep_all=bool(pcap_path or svg_path or plot_path),
                          time_offset=time.time() - time.monotonic())
    options["lab_check"] = False  # checked above, before anything else happened
    client = Client(host, port, options, data, printer, timeout, no_fin=no_fin)
    wait = catch_stop_signals()  # before the worker starts: no signal is lost or raised
    start_worker(client.run, "tcpscapy-connect")
    signum = wait(client.done)
    if signum is not None:
        client.stop(signum)
    rtt = printer.finish()
    if pcap_path and printer.all is not None:
        printer.all.write_pcap(pcap_path)
    conn = client.conn
    if tfo and conn is not None:
        _report_fast_open(out, conn)
    if svg_path and printer.all is not None:
        _write_svg(out, printer, svg_path, f"tcpscapy connect {host}:{port}", full=svg_full)
    if plot_path and printer.all is not None:
        write_plot(out, conn, printer.all, plot_path, f"tcpscapy connect {host}:{port}")
    icmp = conn.driver.icmp_counters if conn is not None else {}
    if style == "json":
        out.json(type="summary", handshake_rtt=rtt, sent=client.sent, received=client.received,
                 state=str(conn.state) if conn else None,
                 reason=conn.close_reason if conn else None, exit=client.code,
                 **({"icmp": icmp} if icmp else {}))
    elif style == "ladder" and icmp:
        out.line("ICMP: " + " ".join(f"{k.removeprefix('icmp_')}={v}" for k, v in icmp.items()))
    if signum is not None:
        reset = " (connection reset)" if conn is not None else ""
        out.error(f"stopped by {signal_name(signum)}{reset}", client.code)
    elif client.error is not None:
        out.error(_message(client.error), client.code)
    sys.exit(client.code)


def _target(target: str, port_arg: str | None) -> tuple[str, int]:
    """HOST:PORT, or HOST PORT as netcat and telnet take them."""
    if port_arg is not None:
        if ":" in target:
            raise errors.BadAddress(f"bad address {target!r}: give HOST:PORT or HOST PORT, "
                                    "not both")
        target = f"{target}:{port_arg}"
    host, port = parse_address(target, host_optional=False, services=True)
    assert host is not None
    return host, port


def _check_lab(host: str, port: int) -> None:
    """Refuse a lab address from outside the lab, showing the command that works."""
    try:
        check_lab_destination(resolve(host))
    except errors.OutsideLab as exc:
        args = click.get_current_context().meta.get("tcpscapy.args", [f"{host}:{port}"])
        command = shlex.join(["tcpscapy", "lab", "exec", "client", "--", "tcpscapy",
                              "connect", *args])
        raise errors.OutsideLab(f"{exc.ip} is a lab address ({exc.subnet}) and this namespace "
                                f"is not in the lab: run `{command}` (--no-lab-check: your "
                                "own namespaces)", ip=exc.ip, subnet=exc.subnet) from None
    except errors.UnknownHost:
        pass  # connect() says so, with its exit code


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _report_fast_open(out: Output, conn: Connection) -> None:
    """What Fast Open did and what the cookie cache made of it (the ladder's footer
    already told what the segments did)."""
    fo = conn.fast_open
    if out.style == "json":
        def hexed(cookie: bytes | None) -> str | None:
            return cookie.hex() if cookie is not None else None
        out.json(type="fast_open", cookie_sent=hexed(fo.cookie_sent) if fo else None,
                 cookie_received=hexed(fo.cookie_received) if fo else None,
                 syn_data=fo.syn_data if fo else 0, data_acked=fo.data_acked if fo else 0,
                 experimental=fo.experimental if fo else False, cache=conn.tfo_note)
    elif conn.tfo_note:
        out.note(f"Fast Open cache: {conn.tfo_note}")


def _check_tfo_cache(path: str) -> None:
    """Fail before any traffic if the --tfo-cache FILE could not be kept (its directory
    is never created: a typo must not leave directories behind)."""
    file = Path(path)
    where = file.parent
    if not where.is_dir():
        raise errors.UsageError(f"cannot use --tfo-cache {path}: no directory {where}")
    if file.is_dir():
        raise errors.UsageError(f"cannot use --tfo-cache {path}: it is a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise errors.UsageError(f"cannot use --tfo-cache {path}: {where} is not writable")


def _check_svg(path: str) -> None:
    """Fail before any traffic if --ladder-svg FILE cannot be written."""
    try:
        with open(path, "w"):
            pass
    except OSError as exc:
        raise errors.UsageError(f"cannot write --ladder-svg {path}: {exc.strerror}") from None


def _write_svg(out: Output, printer: LivePrinter, path: str, title: str, *,
               full: bool = False) -> None:
    trace = printer.all
    assert trace is not None
    notes = fast_open_lines(trace)
    if notes:
        title += " \N{EM DASH} " + notes[0]
    try:
        write_ladder_svg(trace, path, title=title, max_rows=None if full else MAX_ROWS)
    except OSError as exc:
        out.error(f"cannot write --ladder-svg {path}: {exc.strerror}", 1)
