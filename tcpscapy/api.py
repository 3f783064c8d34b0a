"""The blocking, socket-like API: tcpscapy.connect() and tcpscapy.listen().

    # in a lab's client host: `tcpscapy lab exec client -- python3 this.py`
    with tcpscapy.connect("10.77.0.2", 7, mss=1000, sack=False) as conn:
        conn.sendall(b"hello")
        print(conn.recv())
        print(conn.trace)            # the segment ladder

    with tcpscapy.listen(8080) as server:
        conn = server.accept()

Calls block the calling thread, which meanwhile runs the driver loop itself
(see tcpscapy.io.driver). Errors are tcpscapy.errors exceptions with one-line
messages; `conn.engine` is the core Connection for reading its fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any

from tcpscapy import errors, lab, netns
from tcpscapy.core.cc import NAMES as CC_NAMES
from tcpscapy.core.config import Config
from tcpscapy.core.connection import Connection as EngineConnection
from tcpscapy.core.errors import LocalProtocolError
from tcpscapy.core.family import default_mss
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.core.state import State
from tcpscapy.core.tfo import FastOpen
from tcpscapy.io.driver import (
    TRACE_LIMIT,
    Driver,
    DriverClosed,
    Endpoint,
    ListenerState,
    PortInUseError,
    default_driver,
)
from tcpscapy.io.tfo_cache import TfoCache
from tcpscapy.metrics import MetricsRecorder, Sample
from tcpscapy.trace import Direction, Side, Trace, TraceEntry

__all__ = ["Connection", "Listener", "OnRecord", "connect", "listen", "resolve"]

ANY = "0.0.0.0"
KEEPALIVE_DEFAULT = 7200.0  # keepalive=True: Linux's net.ipv4.tcp_keepalive_time
_DONE = (State.CLOSED, State.TIME_WAIT)  # nothing more to exchange

Address = tuple[str, int]
OnRecord = Callable[[TraceEntry], None]  # called with every new trace entry, as it happens

# ------------------------------------------------------------------------ options

Check = Callable[[str, Any], Any]


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise errors.BadOption(f"option {name} takes True or False, not {value!r}")
    return value


def _int_in(lo: int, hi: int) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise errors.BadOption(f"option {name} takes a whole number {lo}-{hi}, not {value!r}")
        return value
    return check


def _seconds(*, lo: float = 0.0, hi: float = 86400.0 * 365, none_ok: bool = False,
             zero_ok: bool = False) -> Check:
    def check(name: str, value: Any) -> float | None:
        if value is None and none_ok:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and (value > lo or (zero_ok and value == lo)) and value <= hi
        if not ok:
            low = f">= {lo:g}" if zero_ok else f"> {lo:g}"
            extra = " or None" if none_ok else ""
            raise errors.BadOption(f"option {name} takes seconds {low} and <= {hi:g}{extra}, "
                                   f"not {value!r}")
        return float(value)
    return check


def _wscale(name: str, value: Any) -> int | None:
    if value is None or value is False:
        return None
    return int(_int_in(0, 14)(name, value))


def _keepalive(name: str, value: Any) -> float | None:
    if value is True:
        return KEEPALIVE_DEFAULT
    if value is False:
        return None
    return _seconds(none_ok=True)(name, value)


def _one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise errors.BadOption(f"option {name} takes {', '.join(map(repr, choices))}, "
                                   f"not {value!r}")
        return str(value)
    return check


def _ecn(name: str, value: Any) -> str:
    """ECN as Config.ecn, or a bool: True = "on", False = "off"."""
    if value is True or value is False:
        return "on" if value else "off"
    return _one_of("off", "on", "passive")(name, value)


# option name -> (Config field, check); shared by connect() and listen()
_CONFIG_OPTIONS: dict[str, tuple[str, Check]] = {
    "mss": ("mss", _int_in(64, 65495)),
    "wscale": ("wscale", _wscale),
    "sack": ("sack", _flag),
    "timestamps": ("timestamps", _flag),
    "window": ("recv_buffer", _int_in(1, 1 << 30)),
    "send_buffer": ("send_buffer", _int_in(1, 1 << 30)),
    "nagle": ("nagle", _flag),
    "keepalive": ("keepalive", _keepalive),
    "keepalive_interval": ("keepalive_interval", _seconds()),
    "keepalive_probes": ("keepalive_probes", _int_in(1, 1000)),
    "user_timeout": ("user_timeout", _seconds(none_ok=True)),
    "msl": ("msl", _seconds(zero_ok=True)),
    "rto": ("rto_initial", _seconds(hi=3600.0)),
    "rto_min": ("rto_min", _seconds(hi=3600.0)),
    "rto_max": ("rto_max", _seconds(hi=86400.0)),
    "delayed_ack": ("delayed_ack", _seconds(hi=0.5, zero_ok=True)),
    "data_retries": ("retries", _int_in(0, 100)),
    "initial_window": ("initial_window_segments", _int_in(1, 1000)),
    "cc": ("cc", _one_of(*CC_NAMES)),
    "ecn": ("ecn", _ecn),
    "hystart": ("hystart", _flag),
}
def _syncookies(name: str, value: Any) -> str:
    if value not in ("never", "auto", "always"):
        raise errors.BadOption(f"option {name} takes 'never', 'auto' or 'always', not {value!r}")
    return str(value)


# Listener-only options -> (Config field, check).
_LISTEN_OPTIONS: dict[str, tuple[str, Check]] = {
    "syncookies": ("syncookies", _syncookies),
    "tfo": ("tfo_server", _flag),
    "tfo_no_cookie": ("tfo_no_cookie", _flag),
}
_CONNECT_ONLY = ("retries", "sport", "src", "iface", "trace_limit")
_LISTEN_ONLY = ("retries", "trace_limit", *_LISTEN_OPTIONS)


def _build_config(options: dict[str, Any], base: Config | None, default: Config, *,
                  listening: bool) -> Config:
    """A Config from keyword options (validated), on top of `base` or `default`."""
    if base is not None and not isinstance(base, Config):
        raise errors.BadOption(f"option config takes a tcpscapy Config, not {base!r}")
    if not options:
        return base or default
    changes: dict[str, Any] = {}
    for name, value in options.items():
        if name == "retries":
            field = "synack_retries" if listening else "syn_retries"
            changes[field] = _int_in(0, 100)(name, value)
        elif name == "nodelay":  # TCP_NODELAY's spelling of nagle=False
            if "nagle" in options and bool(options["nagle"]) == bool(value):
                raise errors.BadOption("options nagle and nodelay contradict each other")
            changes["nagle"] = not _flag(name, value)
        elif name in _CONFIG_OPTIONS or (listening and name in _LISTEN_OPTIONS):
            field, check = _CONFIG_OPTIONS.get(name) or _LISTEN_OPTIONS[name]
            changes[field] = check(name, value)
        else:
            extra = _LISTEN_ONLY if listening else _CONNECT_ONLY
            known = ", ".join(sorted([*_CONFIG_OPTIONS, *extra, "config", "nodelay"]))
            raise errors.BadOption(f"unknown option {name!r} (known: {known})")
    config = base or default
    # A low initial RTO is meant as given: lower the floor with it unless told otherwise.
    if "rto_initial" in changes and "rto_min" not in changes:
        changes["rto_min"] = min(config.rto_min, changes["rto_initial"])
    # A receive buffer given is meant as given (as SO_RCVBUF turns off Linux's tuning).
    if "recv_buffer" in changes:
        changes["recv_buffer_max"] = changes["recv_buffer"]
    config = config.with_(**changes)
    if config.rto_min > config.rto_max:
        raise errors.BadOption(f"rto_min ({config.rto_min:g} s) is above rto_max "
                               f"({config.rto_max:g} s)")
    return config


def _trace_limit(options: dict[str, Any]) -> int | None:
    """Pop `trace_limit`: entries each connection's trace keeps (None: every one)."""
    value = options.pop("trace_limit", TRACE_LIMIT)
    return None if value is None else int(_int_in(0, 1 << 40)("trace_limit", value))


# ---------------------------------------------------------------------- addresses


def resolve(host: str) -> str:
    """A dotted IPv4 address for `host` (a name or an address)."""
    if not isinstance(host, str) or not host.strip():
        raise errors.BadAddress(f"bad host {host!r}: expected a name or an IPv4 address")
    host = host.strip()
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET, host)  # strict dotted quad, and fast
        return host
    if ":" in host:
        raise errors.BadAddress(f"IPv6 is not supported: {host}")
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise errors.UnknownHost(f"cannot resolve {host!r}: {reason}") from None
    if not infos:
        raise errors.UnknownHost(f"cannot resolve {host!r}: no IPv4 address")
    return str(infos[0][4][0])


def check_lab_destination(ip: str) -> None:
    """Raise OutsideLab if `ip` is a lab address and this thread is not inside that lab."""
    subnet = lab.outside_lab(ip)
    if subnet is not None:
        raise errors.OutsideLab(
            f"{ip} is a tcpscapy lab address ({subnet}) and no interface here is on that "
            "subnet: run inside the lab (`tcpscapy lab exec client -- ...`, or the shell's "
            "lab_enter(\"client\")), or pass lab_check=False if these are your own "
            "namespaces", ip=ip, subnet=str(subnet))


def _port(port: Any, *, zero_ok: bool) -> int:
    lo = 0 if zero_ok else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lo <= port <= 0xFFFF:
        raise errors.BadAddress(f"bad port {port!r}: expected {lo}-65535")
    return port


def _translate(exc: Exception, what: str) -> Exception:
    """The tcpscapy.errors exception for an I/O-layer one (one line); others unchanged."""
    from tcpscapy.io.guard import GuardError
    from tcpscapy.io.ports import PortError, PortInUse
    from tcpscapy.io.rawsock import LinkError, NoRoute

    message = f"{what}: {exc}"
    if isinstance(exc, errors.TcpscapyError):
        return exc
    if isinstance(exc, netns.NeedsRoot):
        return errors.NeedsRoot(message)
    if isinstance(exc, NoRoute):
        return errors.HostUnreachable(message)
    if isinstance(exc, PortInUse | PortInUseError):
        return errors.AddressInUse(message)
    if isinstance(exc, PortError | ValueError):
        return errors.BadAddress(message)
    if isinstance(exc, DriverClosed):
        return errors.ConnectionClosed(message)
    if isinstance(exc, GuardError | LinkError):
        return errors.TcpscapyError(message)
    return exc


def _deadline(timeout: float | None, what: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0 \
            or not math.isfinite(timeout):
        raise errors.UsageError(f"{what}: timeout must be seconds >= 0 or None, not {timeout!r}")
    return time.monotonic() + timeout


# ------------------------------------------------------------------ live traces


class _HookedTrace(Trace):
    """A Trace that also hands every new entry to a callback, for live output.

    The driver records under its lock, on whichever thread runs the loop, so the
    callback must be quick. If it raises, it is dropped (kept in `hook_error`):
    an output problem must not stop the loop.
    """

    __slots__ = ("_hook", "hook_error")

    def __init__(self, old: Trace, hook: OnRecord, maxlen: int | None) -> None:
        super().__init__(old, maxlen=maxlen, time_offset=old.time_offset)
        self._hook: OnRecord | None = hook
        self.hook_error: BaseException | None = None
        for entry in old:  # what happened before the swap, in order
            self._call(entry)

    def _call(self, entry: TraceEntry) -> None:
        hook = self._hook
        if hook is None:
            return
        try:
            hook(entry)
        except Exception as exc:
            self._hook, self.hook_error = None, exc

    def record_segment(self, now: float, direction: Direction, seg: Segment | None,
                       note: str = "") -> None:
        super().record_segment(now, direction, seg, note)
        if self._hook is not None:
            self._call(TraceEntry(now, direction, seg, None, note))

    def record_state(self, now: float, old: State, new: State, side: Side = "local",
                     note: str = "") -> None:
        super().record_state(now, old, new, side, note)  # (raises for a bad side)
        if self._hook is not None:  # the entry itself: with maxlen=0 the trace keeps none
            self._call(TraceEntry(now, "out" if side == "local" else "in", None, (old, new),
                                  note))


def _hook_trace(ep: Endpoint, hook: OnRecord | None, maxlen: int | None) -> None:
    """Route the endpoint's trace through `hook` from now on (driver lock held).

    Entries already recorded (the SYN, say) are replayed first, so the hook
    sees the connection from its first segment.
    """
    if hook is not None:
        ep.trace = _HookedTrace(ep.trace, hook, maxlen)


def _record_metrics(ep: Endpoint) -> None:
    """Sample the connection's cwnd, RTT, … as its trace records segments, for plot()."""
    ep.trace.sampler = MetricsRecorder(ep.conn)


def _with_trace(exc: errors.TcpscapyError, ep: Endpoint) -> errors.TcpscapyError:
    """Let a failed connect's exception carry the connection's trace (`exc.trace`)."""
    exc.trace = ep.trace  # type: ignore[attr-defined]
    return exc


# ------------------------------------------------------------------ connections


class Connection:
    """One TCP connection on tcpscapy's engine, used like a blocking socket."""

    __slots__ = ("_driver", "_ep", "tfo_note")  # one per connection: idle ones add up

    def __init__(self, driver: Driver, endpoint: Endpoint) -> None:
        self._driver = driver
        self._ep = endpoint
        self.tfo_note = ""  # connect(tfo=True): what the cookie cache did, in one line

    @property
    def state(self) -> State:
        return self._ep.conn.state

    @property
    def trace(self) -> Trace:
        return self._ep.trace

    @property
    def local(self) -> Address:
        return self._ep.conn.local

    @property
    def remote(self) -> Address:
        return self._ep.conn.remote

    @property
    def engine(self) -> EngineConnection:
        """The core connection (negotiated options, sequence variables); read, don't call."""
        return self._ep.conn

    @property
    def fast_open(self) -> FastOpen | None:
        """The Fast Open exchange (cookie sent and received, bytes in the SYN and
        acknowledged; on a server, whether the SYN's data was accepted); None
        when Fast Open played no part."""
        return self._ep.conn.tfo

    @property
    def close_reason(self) -> str:
        return self._ep.conn.close_reason

    # The sender's congestion state (bytes, seconds), as the plots read it.
    @property
    def cwnd(self) -> int:
        return self._ep.conn.cwnd

    @property
    def ssthresh(self) -> int:
        return self._ep.conn.ssthresh

    @property
    def bytes_in_flight(self) -> int:
        return self._ep.conn.bytes_in_flight

    @property
    def srtt(self) -> float | None:
        return self._ep.conn.srtt

    @property
    def rto(self) -> float:
        return self._ep.conn.rto

    @property
    def cc_phase(self) -> str:
        """"slow-start", "congestion-avoidance", "recovery"; BBR: "startup", "drain",
        "probe-bw", "probe-rtt"."""
        return self._ep.conn.cc_phase

    @property
    def metrics(self) -> list[Sample]:
        """Samples of the sender's state (cwnd, ssthresh, bytes in flight, RTT, RTO, CC
        phase) taken as segments went by, thinned to a bounded number; see plot()."""
        sampler = self._ep.trace.sampler
        with self._driver.lock:
            return list(sampler.samples) if isinstance(sampler, MetricsRecorder) else []

    def plot(self, path: str | PathLike[str], *, trace: Iterable[TraceEntry] | None = None,
             direction: Direction | None = None, title: str | None = None) -> Path:
        """Write an SVG picture of the transfer so far (time-sequence graph, cwnd,
        ssthresh, bytes in flight, RTT and RTO; see tcpscapy.plot); returns the path.
        `trace` replaces the connection's own (which keeps the newest trace_limit
        entries), e.g. a complete record kept by an on_record hook."""
        from tcpscapy.plot import write_plot_svg

        if trace is None:
            with self._driver.lock:
                trace = list(self._ep.trace)
        out = Path(path)
        write_plot_svg(trace, out, self.metrics, direction=direction,
                       title=title or f"tcpscapy {self._name()}")
        return out

    @property
    def driver(self) -> Driver:
        return self._driver

    # Readiness, for an event loop that waits in driver.wait() (driver lock held) and
    # calls recv()/send() only when they would not block.

    @property
    def readable(self) -> bool:
        """recv() would not block: bytes are waiting, or the peer closed, or we are done."""
        ep = self._ep
        return bool(ep.rx) or ep.eof or ep.closed or ep.app_closed

    @property
    def send_space(self) -> int:
        """Bytes send() would queue without blocking; -1 once sending can only fail."""
        ep = self._ep
        if ep.closed or ep.app_closed:
            return -1
        return ep.conn.send_space

    @property
    def finished(self) -> bool:
        """The engine is done with it (CLOSED or TIME-WAIT): what wait_closed() waits for."""
        ep = self._ep
        return ep.closed or ep.conn.state in _DONE

    def _name(self) -> str:
        (lip, lport), (rip, rport) = self.local, self.remote
        return f"{lip}:{lport} -> {rip}:{rport}"

    def _failure(self, *, connecting: bool = False) -> errors.TcpscapyError:
        """The exception that says why the connection is gone."""
        ep = self._ep
        rip, rport = self.remote
        reason = ep.conn.close_reason or "closed"
        if ep.refused:
            return errors.ConnectionRefused(f"connection to {rip}:{rport} refused")
        if ep.conn.close_cause == "unreachable":
            return errors.DestinationUnreachable(f"connect to {rip}:{rport}: {reason}")
        if ep.reset:
            return errors.ConnectionReset(f"{self._name()}: connection reset by the peer")
        if ep.timed_out:
            cls = errors.ConnectTimeout if connecting else errors.TimedOut
            return cls(f"{rip}:{rport}: {reason}")
        if ep.app_closed:
            return errors.ConnectionClosed(f"{self._name()}: the connection is closed")
        return errors.ConnectionClosed(f"{self._name()}: {reason}")

    def _check_send(self) -> None:
        ep = self._ep
        if ep.closed or ep.app_closed:
            raise self._failure()

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None, *,
             urgent: bool = False) -> int:
        """Queue all of `data`, blocking while the send buffer is full; returns len(data).

        `urgent`: `data` is urgent data (TCP's URG and urgent pointer, MSG_OOB in the
        socket API: a Linux peer's recv(MSG_OOB) then returns its last byte).
        """
        view = memoryview(data).cast("B")
        total, sent = len(view), 0
        deadline = _deadline(timeout, "send")
        drv, ep = self._driver, self._ep
        conn = ep.conn
        with drv.lock:
            while True:
                self._check_send()
                space = conn.send_space
                if sent < total and space:
                    try:
                        sent += conn.send(bytes(view[sent : sent + space]),
                                          urgent=urgent and sent + space >= total)
                    except LocalProtocolError:
                        raise errors.ConnectionClosed(
                            f"{self._name()}: cannot send in {conn.state} after shutdown()"
                        ) from None
                    drv.app_call(ep)
                if sent >= total:
                    return sent
                try:
                    room = drv.wait(lambda: conn.send_space > 0 or ep.closed or ep.app_closed,
                                    deadline)
                except DriverClosed as exc:
                    raise _translate(exc, "send") from None
                if not room:
                    raise errors.TimedOut(f"send timed out after {timeout:g} s with "
                                          f"{total - sent} of {total} bytes not queued")

    def sendall(self, data: bytes | bytearray | memoryview, timeout: float | None = None, *,
                urgent: bool = False) -> None:
        """As send(): every byte is queued when it returns."""
        self.send(data, timeout, urgent=urgent)

    @property
    def urgent(self) -> list[int]:
        """Where the peer's urgent data ended, each time it sent some (URG): stream
        offsets (bytes from the start, modulo 2**32), oldest first. The urgent bytes
        themselves come through recv() in order, as with SO_OOBINLINE."""
        with self._driver.lock:
            return list(self._ep.urgent)

    def recv(self, max: int = 65536, timeout: float | None = None) -> bytes:
        """Up to `max` received bytes, blocking until there are some; b'' once the peer closed."""
        if isinstance(max, bool) or not isinstance(max, int) or max <= 0:
            raise errors.UsageError(f"recv: max must be a positive number of bytes, not {max!r}")
        deadline = _deadline(timeout, "recv")
        drv, ep = self._driver, self._ep
        with drv.lock:
            try:
                ready = drv.wait(lambda: bool(ep.rx) or ep.eof or ep.closed or ep.app_closed,
                                 deadline)
            except DriverClosed as exc:
                raise _translate(exc, "recv") from None
            if ep.rx and not ep.app_closed:
                data = bytes(ep.rx[:max])
                del ep.rx[:max]
                if not ep.closed:
                    ep.conn.data_consumed(len(data))  # reopen the window
                    drv.app_call(ep)
                return data
            if not ready:
                raise errors.TimedOut(f"recv timed out after {timeout:g} s")
            if ep.app_closed or ep.reset or (ep.closed and ep.timed_out):
                raise self._failure()
            return b""

    def shutdown(self) -> None:
        """Half-close: send FIN after the queued data; recv() keeps working."""
        drv, ep = self._driver, self._ep
        with drv.lock:
            self._check_send()
            try:
                ep.conn.shutdown()
            except LocalProtocolError:
                raise errors.ConnectionClosed(
                    f"{self._name()}: cannot shut down in {ep.conn.state}") from None
            drv.app_call(ep)

    def close(self) -> None:
        """Close: FIN after the queued data (the exchange finishes in the background)."""
        drv, ep = self._driver, self._ep
        with drv.lock:
            if ep.app_closed:
                return
            ep.app_closed = True
            ep.rx.clear()
            if not ep.closed and not drv.closed:
                ep.conn.close()
                drv.app_call(ep)

    def abort(self) -> None:
        """Reset the connection (RST) and forget it at once."""
        drv, ep = self._driver, self._ep
        with drv.lock:
            ep.app_closed = True
            ep.rx.clear()
            if not ep.closed and not drv.closed:
                ep.conn.abort()
                drv.app_call(ep)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the engine is done with the connection (CLOSED or TIME-WAIT).

        Call it after close() to see the FIN exchange finish; False on timeout.
        """
        deadline = _deadline(timeout, "wait_closed")
        drv = self._driver
        with drv.lock:
            try:
                return drv.wait(lambda: self.finished, deadline)
            except DriverClosed:
                return True  # the driver closed every connection on its way out

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tcpscapy.Connection {self._name()} {self.state}>"


def connect(host: str, port: int, *, timeout: float | None = None,
            driver: Driver | None = None, on_record: OnRecord | None = None,
            data: bytes | bytearray | memoryview = b"", tfo: bool = False,
            tfo_cache: TfoCache | str | os.PathLike[str] | None = None,
            lab_check: bool = True, **options: Any) -> Connection:
    """Open a TCP connection to host:port on tcpscapy's engine; blocks until ESTABLISHED.

    Options: mss, wscale (None: off), sack, timestamps, window (receive buffer),
    send_buffer, retries (SYN retransmissions), data_retries, rto, rto_min, rto_max,
    nagle, nodelay (= not nagle, as TCP_NODELAY), delayed_ack, keepalive (seconds or
    True), keepalive_interval, keepalive_probes, user_timeout, msl, initial_window,
    cc ("newreno", "cubic" the default, "bbr"), hystart, ecn ("off", "on" = ask,
    "passive" the default = accept only),
    sport, src, iface, config,
    trace_limit (trace entries kept, newest; None keeps all; default 20000).

    `data` is queued at once, behind the SYN. With `tfo=True` (TCP Fast Open,
    RFC 7413) the SYN asks for a cookie when none is cached for the server's
    address, and carries the cookie and the first bytes of `data` when one is;
    the SYN-ACK's answer updates the cache (`tfo_cache`: a TfoCache, a file
    path, or None for ~/.cache/tcpscapy/tfo.json; see tcpscapy.io.tfo_cache).
    Data the SYN-ACK does not acknowledge is sent after the handshake.
    `conn.fast_open` then tells what happened, `conn.tfo_note` what the cache did.

    `on_record(entry)` is called with every trace entry as it is recorded, from
    the first SYN on, on the thread running the driver loop (keep it quick).
    If the connect fails after the SYN went out, the exception carries the
    connection's trace as `exc.trace` (the SYN and the RST, say).

    An address of a tcpscapy lab subnet (tcpscapy.lab.LAB_SUBNETS) is refused
    (errors.OutsideLab) unless an interface of the calling thread's namespace is
    on that subnet: from outside the lab it would go to the real network.
    `lab_check=False` allows it, for your own namespaces on those addresses.
    """
    ip = resolve(host)
    port = _port(port, zero_ok=False)
    _deadline(timeout, "connect")  # a bad timeout fails before anything is sent
    payload = _data(data)
    cache = _tfo_cache(_flag("tfo", tfo), tfo_cache)
    sport = options.pop("sport", None)
    if sport is not None:
        sport = _port(sport, zero_ok=False)
    src = options.pop("src", None)
    if src is not None:
        src = resolve(src)
    iface = options.pop("iface", None)
    if iface is not None and (not isinstance(iface, str) or not iface):
        raise errors.BadOption(f"option iface takes an interface name, not {iface!r}")
    trace_limit = _trace_limit(options)
    base = options.pop("config", None)
    mss_auto = base is None and "mss" not in options  # else the caller chose the MSS
    if _flag("lab_check", lab_check):  # after the argument checks, before anything is sent
        # From where the packets would leave: the driver's namespace (the default driver's
        # is the calling thread's; a driver made in a lab host may be called from outside).
        with driver._in_namespace() if driver is not None else contextlib.nullcontext():
            check_lab_destination(ip)
    drv = driver or default_driver()
    config = _build_config(options, base, drv.config, listening=False)
    attempt = cache.attempt(ip) if cache is not None else None
    fast_open = attempt.connect_args() if attempt is not None else {}
    try:
        ep = drv.open_connection((ip, port), config=config, src=src, sport=sport, iface=iface,
                                 mss_from_mtu=mss_auto, trace_limit=trace_limit, data=payload,
                                 **fast_open)
    except Exception as exc:
        raise _translate(exc, f"connect to {ip}:{port}") from None
    conn = Connection(drv, ep)
    with drv.lock:
        _hook_trace(ep, on_record, trace_limit)
        # Counted from the SYN, as the trace shows it: the driver's and the guard's start-up
        # before it must not eat into `timeout` (the ladder would end before it).
        deadline = _deadline(timeout, "connect")
        _record_metrics(ep)
        try:
            done = drv.wait(lambda: ep.connected or ep.closed, deadline)
        except DriverClosed as exc:
            raise _translate(exc, f"connect to {ip}:{port}") from None
        except BaseException:  # e.g. KeyboardInterrupt: nobody will own this connection
            _give_up(drv, ep)
            raise
        if not ep.connected and not done:
            _give_up(drv, ep)
            path = ep.conn.path
            icmp = f" (last ICMP: {path.last_icmp})" if path is not None and path.last_icmp else ""
            raise _with_trace(errors.ConnectTimeout(
                f"connect to {ip}:{port} timed out after {timeout:g} s{icmp}"), ep)
        if not ep.connected:
            raise _with_trace(conn._failure(connecting=True), ep)
        # Copied under the lock; the cache file is written after it is released.
        record = dataclasses.replace(ep.conn.tfo) if ep.conn.tfo is not None else None
        server_mss = _server_mss(ep)
    if cache is not None and attempt is not None:
        conn.tfo_note = cache.learn(ip, record, server_mss) or attempt.note
    return conn


def _data(data: Any) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise errors.BadOption(f"option data takes bytes, not {type(data).__name__}")
    return bytes(data)


def _tfo_cache(tfo: bool, cache: Any) -> TfoCache | None:
    """The Fast Open cookie cache for connect(tfo=..., tfo_cache=...), or None."""
    if not tfo:
        if cache is not None:
            raise errors.BadOption("option tfo_cache needs tfo=True")
        return None
    if cache is None:
        return TfoCache()
    if isinstance(cache, TfoCache):
        return cache  # (an empty one is falsy: no `or` here)
    if isinstance(cache, str | os.PathLike) and str(cache):
        return TfoCache(cache)
    raise errors.BadOption(f"option tfo_cache takes a TfoCache or a file path, not {cache!r}")


def _server_mss(ep: Endpoint) -> int:
    """The MSS the server's SYN-ACK announced (the family's default if none), for the
    cookie cache."""
    for seg in ep.trace.segments("in"):
        if seg.flags & (SYN | ACK) == SYN | ACK:
            return seg.options.mss if seg.options.mss is not None else default_mss(seg.src)
    return ep.conn.snd_mss  # the trace kept nothing: the MSS we use is bounded by it


def _give_up(drv: Driver, ep: Endpoint) -> None:
    """Drop a connection still opening (lock held): in SYN-SENT nothing is sent."""
    ep.app_closed = True
    if not ep.closed and not drv.closed:
        ep.conn.abort()
        drv.app_call(ep)


# ---------------------------------------------------------------------- listeners


class Listener:
    """A listening port on tcpscapy's engine; accept() returns Connections."""

    def __init__(self, driver: Driver, state: ListenerState) -> None:
        self._driver = driver
        self._ls = state

    @property
    def local(self) -> Address:
        return self._ls.listener.local

    @property
    def port(self) -> int:
        return self._ls.listener.local[1]

    @property
    def closed(self) -> bool:
        return self._ls.closed

    @property
    def engine(self) -> Any:
        """The core Listener (counters such as syns_received)."""
        return self._ls.listener

    @property
    def driver(self) -> Driver:
        return self._driver

    @property
    def acceptable(self) -> bool:
        """accept() would not block: a connection is ready, or the listener is closed."""
        return self._ls.closed or self._ls.listener.ready > 0

    def accept(self, timeout: float | None = None, *,
               on_record: OnRecord | None = None) -> Connection:
        """The next established connection, blocking until one arrives.

        `on_record(entry)` gets the connection's trace entries so far (from its
        SYN), then every new one as it is recorded; see connect().
        """
        deadline = _deadline(timeout, "accept")
        drv, ls = self._driver, self._ls
        with drv.lock:
            while True:
                ep = drv.accept(ls)
                if ep is not None:
                    _hook_trace(ep, on_record, ls.trace_limit)
                    _record_metrics(ep)
                    return Connection(drv, ep)
                if ls.closed:
                    raise errors.ConnectionClosed(f"accept on {self._name()}: listener is closed")
                try:
                    ready = drv.wait(lambda: ls.closed or ls.listener.ready > 0, deadline)
                except DriverClosed as exc:
                    raise _translate(exc, "accept") from None
                if not ready:
                    raise errors.TimedOut(f"accept timed out after {timeout:g} s")

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset, accepted ones live on."""
        with self._driver.lock:
            if not self._driver.closed:
                self._driver.close_listener(self._ls)
            self._ls.closed = True

    def _name(self) -> str:
        ip, port = self.local
        return f"{ip}:{port}"

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tcpscapy.Listener {self._name()} {'closed' if self.closed else 'LISTEN'}>"


def listen(port: int, host: str | None = None, *, backlog: int = 128,
           driver: Driver | None = None, **options: Any) -> Listener:
    """Listen on [host:]port (all local addresses when host is None; port 0 picks one).

    Options as for connect(), except that retries counts SYN-ACK retransmissions
    and sport/src/iface do not apply; also syncookies ("never", "auto", "always"),
    tfo (accept data in SYNs with a valid Fast Open cookie) and tfo_no_cookie.
    """
    port = _port(port, zero_ok=True)
    ip = ANY if host is None else resolve(host)
    backlog = _int_in(1, 65535)("backlog", backlog)
    trace_limit = _trace_limit(options)
    base = options.pop("config", None)
    mss_auto = base is None and "mss" not in options
    drv = driver or default_driver()
    config = _build_config(options, base, drv.config, listening=True)
    try:
        state = drv.listen(ip, port, backlog=backlog, config=config, mss_from_mtu=mss_auto,
                           trace_limit=trace_limit)
    except Exception as exc:
        raise _translate(exc, f"listen on {ip}:{port}") from None
    return Listener(drv, state)
