"""tcpscapy at Scapy's prompt: open a connection, look at it, inject segments into it.

`tcpscapy shell` starts Scapy's interactive prompt with all of this loaded. In an
ordinary Scapy session (`scapy`, as root), the same is one import away:

    >>> from tcpscapy.shell import *

(in plain Python, `from scapy.all import *` as well, for IP, TCP and wrpcap).

A session in a lab (namespaces client 10.77.0.1, server .2, attacker .3):

    >>> lab_up()                          # build the lab (prefix "tcpscapy")
    >>> echo_server(7)                    # a kernel echo server on the server host
    >>> lab_enter("client")               # this prompt now lives on the client host
    >>> c = connect("10.77.0.2:7")
    >>> c.send("hello"); c.recv()
    b'hello'
    >>> c.inject(TCP(flags="PA")/"hi")    # addresses, ports, seq, ack, window filled in
    >>> p = c.fill(TCP(flags="PA")/"x"); p[TCP].chksum = 0xdead
    >>> c.inject(p, raw=True)             # byte for byte: the kernel drops it
    >>> c.ladder()                        # text ladder; c.ladder_svg("c.svg") for a handout
    >>> c.trace.summary()                 # a Scapy PacketList: show(), wrpcap("c.pcap", c.trace)
    >>> c.close(); lab_down()

Injected segments bypass tcpscapy's engine: the peer sees them, the engine does
not know it sent them. Injected data therefore moves the peer's RCV.NXT past
ours, and the peer's ACKs then acknowledge bytes the engine never sent (which
it answers with an ACK and otherwise ignores) -- the desynchronisation a real
injection attack causes. Pure ACKs, window updates, RSTs and SYNs are the
gentle experiments.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tcpscapy import api, errors
from tcpscapy import lab as labmod
from tcpscapy.core.segment import ACK, RST, SYN
from tcpscapy.core.state import State
from tcpscapy.io import codec
from tcpscapy.io.driver import Endpoint, close_all
from tcpscapy.svg import MAX_ROWS, write_ladder_svg
from tcpscapy.trace import Trace, ladder, to_scapy_list

if TYPE_CHECKING:
    from scapy.packet import Packet
    from scapy.plist import PacketList

__all__ = [
    "ShellConnection",
    "ShellListener",
    "State",
    "connect",
    "current_lab",
    "echo_server",
    "lab_down",
    "lab_enter",
    "lab_leave",
    "lab_run",
    "lab_up",
    "listen",
]

CONNECT_TIMEOUT = 10.0  # a SYN to nowhere must not hold the prompt for minutes
RECV_TIMEOUT = 2.0
DEFAULT_LAB = "tcpscapy"  # the prefix `tcpscapy lab up` uses, so both see the same lab
ECHO_READY_TIMEOUT = 5.0

# Fields our codec sets itself; a packet that sets any of them goes out as Scapy builds it.
_IP_KEPT = frozenset({"src", "dst"})
_TCP_BUILT = frozenset({"chksum", "dataofs", "reserved"})
_MASK32 = 0xFFFFFFFF


class Filler(NamedTuple):
    """What a connection puts in the fields a hand-made segment leaves unset."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int  # SND.NXT
    ack: int  # RCV.NXT
    window: int  # the window field as last advertised (already scaled down)
    timestamps: tuple[int, int] | None  # (TSval, TSecr) when timestamps are in use


def complete(pkt: Packet | bytes | str, filler: Filler) -> Packet:
    """A copy of `pkt` as IP/TCP with every field the user did not set filled in.

    Filled: IP src/dst, TCP sport/dport, seq (SND.NXT), ack (RCV.NXT, when the
    A flag is set), window, flags ("PA" with a payload, else "A") and, on a
    connection using timestamps, a timestamp option (not on SYN or RST). Bytes
    or a str become the payload of TCP(flags="PA"). Explicit fields are kept.
    """
    from scapy.layers.inet import IP, TCP

    if isinstance(pkt, str):
        pkt = pkt.encode()
    if isinstance(pkt, bytes | bytearray):
        pkt = TCP(flags="PA") / bytes(pkt)
    if not hasattr(pkt, "haslayer") or TCP not in pkt:
        raise errors.UsageError(f"inject needs a TCP segment such as TCP(flags='PA')/'hi', "
                                f"not {_describe(pkt)}")
    pkt = pkt[IP].copy() if IP in pkt else IP() / pkt[TCP].copy()
    ip, tcp = pkt[IP], pkt[TCP]
    _default(ip, "src", filler.src)
    _default(ip, "dst", filler.dst)
    _default(tcp, "sport", filler.sport)
    _default(tcp, "dport", filler.dport)
    _default(tcp, "seq", filler.seq)
    _default(tcp, "flags", "PA" if len(tcp.payload) else "A")
    if int(tcp.flags) & ACK:
        _default(tcp, "ack", filler.ack)
    _default(tcp, "window", filler.window)
    if filler.timestamps is not None and not int(tcp.flags) & (SYN | RST):
        _default(tcp, "options", [("NOP", None), ("NOP", None), ("Timestamp", filler.timestamps)])
    return pkt


def needs_scapy_build(pkt: Packet) -> bool:
    """True if `pkt` sets a field our codec would overwrite (IP header fields other
    than the addresses, the TCP checksum, data offset or reserved bits, the NS/AE
    flag): then it is sent as Scapy builds it, so the user's value survives."""
    from scapy.layers.inet import IP, TCP

    ip_set = {name for name, value in pkt[IP].fields.items()
              if not (name == "options" and not value)}
    tcp = pkt[TCP]
    return bool(ip_set - _IP_KEPT) or bool(_TCP_BUILT & set(tcp.fields)) or int(tcp.flags) > 0xFF


def _default(layer: Packet, name: str, value: Any) -> None:
    if name not in layer.fields:
        setattr(layer, name, value)


def _describe(obj: object) -> str:
    summary = getattr(obj, "summary", None)
    return summary() if callable(summary) else repr(obj)


def parse_target(target: str, port: int | None = None) -> tuple[str, int]:
    """("host", port) from "host:port", or from "host" and `port`."""
    if not isinstance(target, str) or not target.strip():
        raise errors.BadAddress(f"bad address {target!r}: expected 'HOST:PORT'")
    host, sep, port_text = target.strip().rpartition(":")
    if not sep:
        host, port_text = target.strip(), ""
    if port_text:
        if port is not None:
            raise errors.BadAddress(f"{target!r} already names a port: drop port={port}")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 0xFFFF:
            raise errors.BadAddress(f"bad port {port_text!r} in {target!r}: expected 1-65535")
        return host, int(port_text)
    if port is None:
        raise errors.BadAddress(f"no port in {target!r}: use 'HOST:PORT'")
    return host, port


# ---------------------------------------------------------------------- connections


class ShellConnection:
    """A live tcpscapy connection, shaped for typing at a prompt.

    `send` takes str or bytes, `recv` gives up after RECV_TIMEOUT seconds, `trace`
    is a Scapy PacketList, `ladder()` prints, `inject()` sends hand-made
    segments. `conn` is the tcpscapy.Connection underneath, `engine` the core
    connection (SND.NXT is `c.engine.snd_nxt`).
    """

    def __init__(self, conn: api.Connection) -> None:
        self.conn = conn

    # -- the socket-like part ---------------------------------------------------------

    @property
    def state(self) -> State:
        return self.conn.state

    @property
    def engine(self) -> Any:
        return self.conn.engine

    @property
    def local(self) -> tuple[str, int]:
        return self.conn.local

    @property
    def remote(self) -> tuple[str, int]:
        return self.conn.remote

    @property
    def snd_nxt(self) -> int:
        return int(self.conn.engine.snd_nxt)

    @property
    def rcv_nxt(self) -> int:
        return int(self.conn.engine.rcv_nxt)

    def send(self, data: bytes | str) -> None:
        """Send all of `data` (a str as UTF-8), waiting while the send buffer is full.

        Returns nothing, so `c.send("hi"); c.recv()` at the prompt shows only
        what came back (len(data) is what was sent)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self.conn.sendall(payload)

    def recv(self, max: int = 65536, timeout: float | None = RECV_TIMEOUT) -> bytes:
        """What arrived, up to `max` bytes; b"" if nothing came within `timeout` s or the
        peer closed (see `state`)."""
        try:
            return self.conn.recv(max, timeout)
        except errors.TimedOut:
            return b""

    def shutdown(self) -> None:
        """Half-close: our FIN goes out, recv() keeps working."""
        self.conn.shutdown()

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        self.conn.abort()

    def wait_closed(self, timeout: float | None = 5.0) -> bool:
        return self.conn.wait_closed(timeout)

    # -- looking at it ----------------------------------------------------------------

    @property
    def records(self) -> Trace:
        """A copy of the connection's tcpscapy Trace (segments and state changes)."""
        trace = self.conn.trace
        with self.conn.driver.lock:  # the driver appends from its own thread
            return Trace(list(trace), time_offset=trace.time_offset)

    @property
    def trace(self) -> PacketList:
        """The segments so far as Scapy IP/TCP packets with wall-clock `.time`;
        its summary() starts each line with the time since the first segment."""
        return _timed_packets()(to_scapy_list(self.records), name="tcpscapy trace")

    def ladder(self, *, absolute: bool = False, width: int | None = None) -> None:
        """Print the ladder: local side left, peer right, seq/ack relative to the ISNs."""
        out = sys.stdout
        if width is None and out.isatty():
            width = shutil.get_terminal_size().columns
        print(ladder(self.records, relative=not absolute, width=width,
                     color=out.isatty()))

    def ladder_svg(self, path: str | Path, *, title: str | None = None,
                   absolute: bool = False, full: bool = False) -> Path:
        """Write the ladder as an SVG picture (for a handout); returns the path.

        A long one keeps its first and last rows with a marker between them;
        `full=True` draws every row."""
        path = Path(path)
        if title is None:
            (lip, lport), (rip, rport) = self.local, self.remote
            title = f"{lip}:{lport} \N{LEFT RIGHT ARROW} {rip}:{rport}"
        write_ladder_svg(self.records, path, relative=not absolute, title=title,
                         max_rows=None if full else MAX_ROWS)
        return path

    def plot(self, path: str | Path = "plot.svg", *, title: str | None = None) -> Path:
        """Write the transfer as an SVG picture: time-sequence graph (data, ACK line,
        window, SACK, retransmissions), cwnd/ssthresh/bytes in flight with the CC's
        phases, RTT and RTO. Open it in a browser; returns the path."""
        if title is None:
            (lip, lport), (rip, rport) = self.local, self.remote
            title = f"{lip}:{lport} \N{LEFT RIGHT ARROW} {rip}:{rport}"
        return self.conn.plot(path, trace=self.records, title=title)

    def wrpcap(self, path: str | Path) -> Path:
        """Write the segments to a pcap file (same as wrpcap(path, c.trace))."""
        from scapy.utils import wrpcap

        wrpcap(str(path), self.trace)
        return Path(path)

    # -- steering it ------------------------------------------------------------------

    def filler(self) -> Filler:
        """The values `fill` and `inject` use, read from the engine now."""
        with self.conn.driver.lock:
            return self._filler()

    def _filler(self) -> Filler:
        eng = self.conn.engine
        (lip, lport), (rip, rport) = eng.local, eng.remote
        # The window we last advertised, rounded up as the engine does (never shrink it).
        window = min(-(-((eng.rcv_adv - eng.rcv_nxt) & _MASK32) >> eng.rcv_wscale), 0xFFFF)
        stamps = None
        if eng.ts_ok:
            stamps = (self._last_tsval(), int(eng.ts_recent))
        return Filler(lip, rip, lport, rport, int(eng.snd_nxt), int(eng.rcv_nxt), window, stamps)

    def _last_tsval(self) -> int:
        """The TSval of our newest segment: the peer's PAWS check accepts it again."""
        for seg in reversed(self.conn.trace.segments("out")):
            if seg.options.timestamps is not None:
                return int(seg.options.timestamps[0])
        return 0

    def fill(self, pkt: Packet | bytes | str) -> Packet:
        """`pkt` with this connection's addresses, ports, seq, ack and window filled in
        (fields you set are kept); nothing is sent. See `complete`."""
        return complete(pkt, self.filler())

    def inject(self, pkt: Packet | bytes | str, *, raw: bool = False) -> Packet:
        """Send a hand-made segment on this connection's link; returns it as sent.

        Without `raw`, unset fields are filled in (see `fill`) and the segment
        goes through tcpscapy's codec (correct checksums and lengths) unless you
        set a field the codec computes, such as the checksum: then it goes as
        Scapy builds it. With `raw`, `pkt` (IP/TCP, or bytes) is sent exactly as
        crafted -- a bad checksum stays bad. The trace records it as injected;
        the engine does not know about it.
        """
        from scapy.layers.inet import IP

        drv, ep = self.conn.driver, self._endpoint()
        if raw:
            data = _raw_bytes(pkt)
            with drv.lock:
                failure = drv.inject(ep, data, raw=True)
            sent: Packet = IP(data)
        else:
            with drv.lock:
                filled = complete(pkt, self._filler())
                if needs_scapy_build(filled):
                    data = bytes(filled)
                    failure = drv.inject(ep, data, raw=True)
                    sent = IP(data)
                else:
                    seg = codec.from_scapy(filled)
                    failure = drv.inject(ep, seg)
                    sent = codec.to_scapy(seg)
        if failure:
            raise errors.TcpscapyError(f"inject: {failure}")
        return sent

    def _endpoint(self) -> Endpoint:
        engine = self.conn.engine
        for ep in self.conn.driver.connections():
            if ep.conn is engine:
                return ep
        raise errors.ConnectionClosed(f"{self!r} is gone (closed and forgotten): "
                                      "nothing to inject into")

    def __repr__(self) -> str:
        (lip, lport), (rip, rport) = self.local, self.remote
        return f"<connection {lip}:{lport} -> {rip}:{rport} {self.state}>"


@functools.cache
def _timed_packets() -> type[PacketList]:
    """A PacketList whose summary() shows each packet's time (Scapy is imported late)."""
    from scapy.plist import PacketList

    class TracePackets(PacketList):
        def summary(self, prn: Any = None, lfilter: Any = None) -> None:
            if prn is None and len(self):
                t0 = float(self[0].time)

                def prn(pkt: Packet) -> str:
                    return f"{(float(pkt.time) - t0) * 1000:10.3f} ms  {pkt.summary()}"
            super().summary(prn, lfilter)

    return TracePackets


def _raw_bytes(pkt: Packet | bytes) -> bytes:
    from scapy.layers.inet import IP

    if isinstance(pkt, bytes | bytearray):
        return bytes(pkt)
    if not hasattr(pkt, "haslayer") or IP not in pkt:
        raise errors.UsageError("raw=True sends a whole packet: build IP(...)/TCP(...), "
                                f"not {_describe(pkt)}")
    return bytes(pkt[IP])


class ShellListener:
    """A tcpscapy listener whose accept() gives ShellConnections."""

    def __init__(self, listener: api.Listener) -> None:
        self.listener = listener

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.listener.engine.counters)

    def accept(self, timeout: float | None = None) -> ShellConnection:
        return ShellConnection(self.listener.accept(timeout))

    def close(self) -> None:
        self.listener.close()

    def __repr__(self) -> str:
        ip, port = self.listener.local
        return f"<listener {ip}:{port} {'closed' if self.listener.closed else 'LISTEN'}>"


def connect(target: str, port: int | None = None, *, timeout: float | None = CONNECT_TIMEOUT,
            **options: Any) -> ShellConnection:
    """Open a connection on tcpscapy's engine: connect("10.77.0.2:80").

    Options as for tcpscapy.connect (mss, wscale, sack, timestamps, window,
    rto, sport, ...). Blocks until ESTABLISHED or `timeout` seconds.
    """
    host, port = parse_target(target, port)
    return ShellConnection(api.connect(host, port, timeout=timeout, **options))


def listen(port: int, host: str | None = None, **options: Any) -> ShellListener:
    """Listen on tcpscapy's engine: srv = listen(8080); c = srv.accept()."""
    return ShellListener(api.listen(port, host, **options))


# ------------------------------------------------------------------------------ the lab


class _Session:
    """The lab this session built and the host the prompt's thread is in."""

    lab: labmod.Lab | None = None
    host: str | None = None
    inside: contextlib.AbstractContextManager[None] | None = None


_session = _Session()


def lab_up(prefix: str = DEFAULT_LAB, *, sysctls: Sequence[tuple[str, str, str]] = ()
           ) -> labmod.Lab:
    """Build the lab (or reuse it): client 10.77.0.1, server .2, attacker .3.

    `sysctls` are (host, key, value), e.g. ("server", "net.ipv4.tcp_syncookies", "2").
    """
    if _session.lab is not None and _session.lab.prefix != prefix:
        raise labmod.LabUsageError(f"lab {_session.lab.prefix!r} is in use: lab_down() first")
    the_lab = _session.lab or labmod.Lab(prefix)
    the_lab.up(sysctls)
    _session.lab = the_lab
    return the_lab


def current_lab() -> labmod.Lab:
    """The lab of this session (lab_up() makes it)."""
    if _session.lab is None:
        raise labmod.LabUsageError("no lab yet: call lab_up() first")
    return _session.lab


def lab_enter(host: str) -> str:
    """Move this prompt into a lab host ("client", "server", "attacker"): connect(),
    listen() and Scapy's own send/sr functions then work from there."""
    the_lab = current_lab()
    the_lab.ns(host)  # a clear error for an unknown host, before leaving the current one
    lab_leave()
    inside = the_lab.enter(host)
    inside.__enter__()
    _session.inside, _session.host = inside, host
    _scapy_follow_namespace(labmod.HOST_IFACE)
    return f"now on {host} ({the_lab.addr(host)})"


def lab_leave() -> None:
    """Back to the namespace the session started in."""
    inside, _session.inside, _session.host = _session.inside, None, None
    if inside is not None:
        inside.__exit__(None, None, None)
        _scapy_follow_namespace(None)


def lab_down() -> None:
    """Close this session's connections and remove the lab (and its echo servers)."""
    lab_leave()
    close_all(linger=1.0)
    the_lab, _session.lab = _session.lab, None
    (the_lab or labmod.Lab(DEFAULT_LAB)).down()


def lab_run(host: str, command: str | Sequence[str]) -> int:
    """Run a command in a lab host, output to this terminal: lab_run("server", "ss -tan")."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return current_lab().run(host, argv, check=False).returncode


ECHO_SERVER = r"""
import contextlib, socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("ready", flush=True)
def serve(c):
    with c, contextlib.suppress(OSError):  # injected segments may well reset it
        while data := c.recv(65536):
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def echo_server(port: int = 7, host: str = "server") -> str:
    """Start a kernel (Linux TCP) echo server in a lab host; lab_down() stops it."""
    the_lab = current_lab()
    addr = the_lab.addr(host)
    proc = the_lab.popen(host, [sys.executable, "-c", ECHO_SERVER, addr, str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    with proc.stdout:  # it says "ready", or why it could not start, then nothing more
        first = proc.stdout.readline().strip()
        if first != "ready":
            lines = [first, *proc.stdout.read().strip().splitlines()]
            proc.wait(ECHO_READY_TIMEOUT)
            raise labmod.LabError(f"echo server on {host}:{port} did not start: {lines[-1]}")
    return f"kernel echo server on {addr}:{port}"


def _scapy_follow_namespace(iface: str | None) -> None:
    """Re-read Scapy's interfaces and routes in the thread's namespace (best effort),
    so sr1()/send() typed at the prompt go out where connect() does."""
    try:
        from scapy.config import conf

        with _quiet_scapy():
            conf.ifaces.reload()
            conf.route.resync()
            conf.iface = iface or conf.route.route("0.0.0.0")[0]
    except Exception as exc:  # Scapy's view is a convenience; tcpscapy does not need it
        print(f"note: Scapy's interface list was not refreshed: {exc}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_scapy() -> Iterator[None]:
    import logging

    log = logging.getLogger("scapy")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """One line for tcpscapy's and the lab's errors at the prompt; tracebacks for bugs."""
    from tcpscapy.netns import NeedsRoot

    if isinstance(exc, errors.TcpscapyError | labmod.LabError | NeedsRoot):
        print(f"error: {exc}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, exc, tb)


BANNER = """\
tcpscapy {version}: Scapy with a user-space TCP you can steer (connections need root)
  lab_up(); echo_server(7); lab_enter("client")   a lab: client 10.77.0.1, server .2, attacker .3
  c = connect("10.77.0.2:7")                     c.send("hi"); c.recv(), c.close(), c.state
  c.inject(TCP(flags="PA")/"x")                  seq, ack, ports filled in; raw=True: as crafted
  c.ladder(), c.ladder_svg("c.svg")              the ladder as text, as an SVG picture
  c.plot("c.svg")                                time-sequence graph, cwnd, RTT as SVG
  c.trace.summary(), wrpcap("c.pcap", c.trace)   the segments as a Scapy PacketList, timed
  lab_down() when done; help(connect), help(ShellConnection) for more"""
