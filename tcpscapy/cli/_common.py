"""What `tcpscapy connect` and `tcpscapy listen` share: parsing, engine options,
printing traces (live ladder or JSON) and turning SIGINT/SIGTERM into an orderly stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TextIO, TypeVar

import click

from tcpscapy import errors
from tcpscapy.core.cc import NAMES as CC_NAMES
from tcpscapy.core.state import State
from tcpscapy.trace import LadderWriter, Trace, TraceEntry, handshake_rtt, to_json_lines

EXIT_CODES_HELP = """\b
Exit codes:
  0  success            5  timed out (SYN or data retransmissions)
  1  other error        6  connection reset by the peer
  2  bad usage          7  unknown host
  3  connection refused 8  host unreachable (no route, no ARP answer)
  4  needs root         9  address in use
                        10  ICMP port/protocol unreachable or prohibited
  130/143  stopped by SIGINT/SIGTERM"""

DEFAULT_WIDTH = 120  # ladder width when stderr is not a terminal
MIN_WIDTH = 60
TIME_WIDTH = 11  # "1234.567 ms"
HEAD_ENTRIES = 32  # entries kept for the footer: the handshake is among the first
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13

Style = Literal["ladder", "json", "quiet"]
F = TypeVar("F", bound=Callable[..., Any])


# -- click: one-line usage errors --------------------------------------------------------


class _OneLineUsageError(click.UsageError):
    def show(self, file: Any = None) -> None:
        names, ctx = [], self.ctx
        while ctx is not None and ctx.parent is not None:  # the root is `tcpscapy` itself
            names.append(ctx.command.name or "")
            ctx = ctx.parent
        click.echo(" ".join(["tcpscapy", *reversed(names)]) + f": {self.format_message()} "
                   "(see --help)", err=True)


@contextmanager
def _usage_errors_on_one_line() -> Iterator[None]:
    try:
        yield
    except _OneLineUsageError:
        raise
    except click.UsageError as exc:
        raise _OneLineUsageError(exc.format_message(), exc.ctx) from None


class Command(click.Command):
    """A click command whose usage errors are one line on stderr, exit code 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        with _usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)


class Group(click.Group):
    """A click group with one-line usage errors, for itself and its subcommands."""

    command_class = Command

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        with _usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        with _usage_errors_on_one_line():  # e.g. no such subcommand
            return super().resolve_command(ctx, args)


def usage_error(message: str) -> click.UsageError:
    return _OneLineUsageError(message, click.get_current_context(silent=True))


# -- parsing -----------------------------------------------------------------------------


def parse_address(text: str, *, host_optional: bool, services: bool = False
                  ) -> tuple[str | None, int]:
    """HOST:PORT (or PORT alone when `host_optional`) -> (host or None, port).

    Port 0 is accepted only with `host_optional` (listen: pick a free port). With
    `services`, PORT may be a service name of /etc/services (http, ssh, ...).
    """
    text = text.strip()
    if text.startswith("[") or text.count(":") > 1:
        raise errors.BadAddress(f"bad address {text!r}: IPv6 is not supported")
    host, sep, port_text = text.rpartition(":")
    if not sep and not host_optional:
        raise errors.BadAddress(f"bad address {text!r}: expected HOST:PORT")
    if sep and not host:
        raise errors.BadAddress(f"bad address {text!r}: the host is empty")
    lo = 0 if host_optional else 1
    if services and port_text and not port_text.isdigit():
        try:
            return (host or None), socket.getservbyname(port_text, "tcp")
        except OSError:
            raise errors.BadAddress(f"bad port {port_text!r} in {text!r}: no such TCP "
                                    "service in /etc/services") from None
    if not port_text.isdigit() or not lo <= int(port_text) <= 0xFFFF:
        raise errors.BadAddress(f"bad port {port_text!r} in {text!r}: expected {lo}-65535")
    return (host or None), int(port_text)


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.|$)", re.DOTALL)
_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\", "0": b"\0"}


def unescape(text: str) -> bytes:
    r"""The bytes of --send TEXT: UTF-8, with \r \n \t \\ \0 and \xHH escapes."""
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode()
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            out.append(int(code[1:], 16))
        elif code in _ESCAPES:
            out += _ESCAPES[code]
        else:
            shown = "\\" + code if code else "a trailing \\"
            raise errors.UsageError(f"bad escape {shown} in --send: use \\r \\n \\t \\\\ \\0 "
                                    "or \\xHH")
        pos = match.end()
    return bytes(out + text[pos:].encode())


def parse_wscale(value: str | None) -> int | Literal[False] | None:
    """--wscale N|off -> N, None (off); False when not given (engine default)."""
    if value is None:
        return False
    if value.lower() in ("off", "none", "no"):
        return None
    if not value.isdigit() or int(value) > 14:
        raise errors.BadOption(f"bad --wscale {value!r}: expected 0-14 or 'off'")
    return int(value)


def engine_options(*, mss: int | None, wscale: str | None, no_sack: bool,
                   no_timestamps: bool, window: int | None, retries: int | None,
                   rto: float | None, user_timeout: float | None = None,
                   keepalive: float | None = None, nodelay: bool = False,
                   cc: str | None = None, ecn: str | None = None) -> dict[str, Any]:
    """Keyword options for tcpscapy.connect()/listen() from the shared CLI flags."""
    options: dict[str, Any] = {}
    scale = parse_wscale(wscale)
    if scale is not False:
        options["wscale"] = scale
    if no_sack:
        options["sack"] = False
    if no_timestamps:
        options["timestamps"] = False
    if nodelay:
        options["nodelay"] = True
    for name, value in (("mss", mss), ("window", window), ("retries", retries), ("rto", rto),
                        ("user_timeout", user_timeout), ("keepalive", keepalive),
                        ("cc", cc), ("ecn", ecn)):
        if value is not None:
            options[name] = value
    return options


def engine_option_flags(*, retries_help: str) -> Callable[[F], F]:
    """The engine flags both commands take."""
    flags = [
        click.option("--mss", type=click.IntRange(64, 65495), metavar="BYTES",
                     help="MSS to offer (default: fits the link MTU)."),
        click.option("--wscale", metavar="N|off",
                     help="Window scale shift to offer, 0-14, or 'off' (default 7)."),
        click.option("--no-sack", is_flag=True, help="Do not offer SACK."),
        click.option("--no-timestamps", is_flag=True, help="Do not offer timestamps."),
        click.option("--window", type=click.IntRange(1, 1 << 30), metavar="BYTES",
                     help="Receive buffer, which bounds the advertised window."),
        click.option("--retries", type=click.IntRange(0, 100), metavar="N", help=retries_help),
        click.option("--rto", type=click.FloatRange(0.001, 3600, min_open=False),
                     metavar="SECONDS", help="Initial retransmission timeout (default 1 s)."),
        click.option("--user-timeout", type=click.FloatRange(0.001, 86400), metavar="SECONDS",
                     help="Give up when the peer acknowledges nothing for this long "
                          "(RFC 5482; default: after the retransmissions run out)."),
        click.option("--keepalive", type=click.FloatRange(0.001, 86400), metavar="SECONDS",
                     help="Probe an idle peer after this long (default: off)."),
        click.option("--nodelay", is_flag=True,
                     help="Send small segments at once, without waiting for ACKs "
                          "(Nagle off, as TCP_NODELAY)."),
        click.option("--cc", type=click.Choice(CC_NAMES),
                     help="Congestion control (default cubic; bbr is BBR v1)."),
        click.option("--ecn", type=click.Choice(("off", "on", "passive")),
                     help="ECN: on = ask for it, passive = accept when asked (default), "
                          "off (as Linux's tcp_ecn 1, 2, 0)."),
    ]

    def apply(func: F) -> F:
        for flag in reversed(flags):
            func = flag(func)
        return func
    return apply


# -- privileges --------------------------------------------------------------------------


def require_net_admin() -> None:
    """Raise NeedsRoot unless this process holds CAP_NET_RAW and CAP_NET_ADMIN."""
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = ~0 if os.geteuid() == 0 else 0
    if not (caps >> CAP_NET_RAW & 1 and caps >> CAP_NET_ADMIN & 1):
        raise errors.NeedsRoot("needs root: raw sockets and the RST guard's iptables rule "
                               "need CAP_NET_RAW and CAP_NET_ADMIN")


# -- output ------------------------------------------------------------------------------


def stream_width(stream: TextIO) -> int:
    """The terminal's width if `stream` is one, else $COLUMNS, else DEFAULT_WIDTH."""
    try:
        if stream.isatty():
            return max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH)
    except (OSError, ValueError):
        pass
    columns = os.environ.get("COLUMNS", "")
    return max(int(columns), MIN_WIDTH) if columns.isdigit() else DEFAULT_WIDTH


def wants_color(stream: TextIO) -> bool:
    try:
        tty = stream.isatty()
    except ValueError:
        return False
    return tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


@dataclass
class Output:
    """Lines on stderr from many threads: ladder text, JSON objects, error messages.

    Writing never raises: if stderr is gone, output stops and the work goes on.
    """

    command: str
    style: Style = "ladder"
    relative: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    lock: threading.RLock = field(default_factory=threading.RLock)
    width: int = 0
    color: bool = False
    ascii_only: bool = False
    broken: bool = False

    def __post_init__(self) -> None:
        self.width = self.width or stream_width(self.stream)
        self.color = self.color or wants_color(self.stream)
        encoding = (getattr(self.stream, "encoding", None) or "").lower().replace("-", "")
        self.ascii_only = self.ascii_only or encoding != "utf8"

    def lines(self, lines: Iterable[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        if not text or self.broken:
            return
        with self.lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def line(self, text: str) -> None:
        self.lines([text])

    def json(self, **obj: Any) -> None:
        self.line(json.dumps(obj, separators=(",", ":")))

    def error(self, message: str, code: int) -> None:
        """The one-line message of a failure (a JSON object with --json)."""
        if self.style == "json":
            self.json(type="error", exit=code, message=message)
        else:
            self.line(f"tcpscapy {self.command}: {message}")

    def note(self, message: str, **fields: Any) -> None:
        """An informational line (not with -q); with --json an object of `fields`."""
        if self.style == "json":
            self.json(**fields)
        elif self.style == "ladder":
            self.line(message)

    def writer(self, *, state: State | None) -> LadderWriter:
        """A LadderWriter sized to this output."""
        prefix = TIME_WIDTH + 2 + (len("SYN-RECEIVED") + 2)
        return LadderWriter(arrow_width=max(self.width - prefix, 40), time_width=TIME_WIDTH,
                            relative=self.relative, state=state, cut=self.width,
                            color=self.color, ascii_only=self.ascii_only)


def entry_json(entry: TraceEntry, time_offset: float, **extra: Any) -> str:
    """One trace entry as trace.to_json_lines writes it, plus `extra` fields first."""
    line = next(to_json_lines(Trace([entry], time_offset=time_offset)))
    if not extra:
        return line
    return json.dumps({**extra, **json.loads(line)}, separators=(",", ":"))


class LivePrinter:
    """The `on_record` hook for a connection: draws each entry on stderr as it happens.

    Keeps the first entries (for the handshake RTT) and, with `keep_all`, every
    entry (for --pcap), whatever else the connection's own trace drops.
    """

    def __init__(self, out: Output, *, keep_all: bool, time_offset: float) -> None:
        self.out = out
        self.head: list[TraceEntry] = []
        self.all: Trace | None = Trace(time_offset=time_offset) if keep_all else None
        self.time_offset = time_offset
        self.finished = False
        self._writer = out.writer(state=State.CLOSED)
        self._pending: list[TraceEntry] = []  # state changes before the first segment
        self._lock = threading.Lock()

    def record(self, entry: TraceEntry) -> None:
        # Stamped on arrival here: the driver stamps a whole loop turn with one `now`, so
        # a SYN and a SYN-ACK handled in one turn would share a time (and the RTT be 0).
        # connect() replays the SYN right after sending it, which costs microseconds.
        entry = replace(entry, time=time.monotonic())
        with self._lock:
            if len(self.head) < HEAD_ENTRIES:
                self.head.append(entry)
            if self.all is not None:
                self.all.append(entry)
            if self.finished or self.out.style == "quiet":
                return
            if self.out.style == "json":
                self.out.line(entry_json(entry, self.time_offset))
                return
            if entry.segment is None and self._writer.t0 is None:
                self._pending.append(entry)  # wait for a segment: it names the endpoints
                return
            entries, self._pending = [*self._pending, entry], []
            lines: list[str] = []
            if self._writer.t0 is None and (seg := entry.segment) is not None:
                pair = (f"{seg.src}:{seg.sport}", f"{seg.dst}:{seg.dport}")
                lines += self._writer.header(*(pair if entry.direction == "out" else pair[::-1]))
            for item in entries:
                lines += self._writer.lines(item)
            self.out.lines(lines)

    def finish(self) -> float | None:
        """Stop drawing; print the footer (handshake RTT, ISNs); return the RTT."""
        with self._lock:
            self.finished = True
            if self.out.style == "ladder":
                for entry in self._pending:
                    self.out.lines(self._writer.lines(entry))
                self.out.lines(self._writer.footer(self.head))
            self._pending = []
        return handshake_rtt(self.head)


class Recorder:
    """An `on_record` hook that keeps a connection's entries (thread-safe).

    Entries replayed by accept() keep the driver's times; once `live` is set,
    each is stamped when recorded (the driver stamps a whole loop turn with
    one time, which flattens a burst of segments).
    """

    def __init__(self, *, maxlen: int | None) -> None:
        self.live = False
        self._trace = Trace(maxlen=maxlen, time_offset=time.time() - time.monotonic())
        self._lock = threading.Lock()

    def record(self, entry: TraceEntry) -> None:
        if self.live:
            entry = replace(entry, time=time.monotonic())
        with self._lock:
            self._trace.append(entry)

    def snapshot(self) -> Trace:
        with self._lock:
            return Trace(self._trace, time_offset=self._trace.time_offset)


def check_writable(path: str) -> None:
    """Create/truncate `path` now, so a bad --pcap fails before any traffic."""
    try:
        with open(path, "wb"):
            pass
    except OSError as exc:
        raise errors.UsageError(f"cannot write --pcap {path}: {exc.strerror}") from None


# -- signals -----------------------------------------------------------------------------


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread with SIGINT/SIGTERM blocked, as will be every thread it starts.

    The kernel then delivers those signals to the main thread, whose wait they
    interrupt at once (a signal landing on another thread would only be seen
    when the main thread next wakes up).
    """
    thread = threading.Thread(target=target, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        thread.start()  # a new thread inherits the signal mask of its creator
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread


STOP_POLL = 0.1  # seconds: how soon the main thread sees a caught stop signal


def catch_stop_signals() -> Callable[[threading.Event], int | None]:
    """From now on, SIGINT/SIGTERM are caught; returns `wait(done)` for the main thread.

    Call it before anything a signal should not cut short (announcing, starting the
    workers): the handlers only note the first signal, so a signal that lands while
    they are installed, or before the main thread reaches its wait, is never lost and
    never raises in the middle of other work. `wait(done)` returns that signal's
    number, or None once `done` is set; later signals are ignored while the caller
    stops.
    """
    caught: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not caught:
            caught.append(signum)

    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, handler)

    def wait(done: threading.Event) -> int | None:
        while not caught and not done.wait(STOP_POLL):
            pass
        return caught[0] if caught else None

    return wait


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
