"""The driver: the one loop that joins the core engine to the wire.

A Driver owns a core `Stack`, the raw-socket links (opened once per interface
and next hop, reused for the life of the driver), one RST guard, the reserved
local ports, and a selector over the links, the guard's queue and a wakeup fd.
One turn of the loop: read every queued packet, decode it, hand the engine
only segments for a local (address, port) we own -- AF_PACKET also shows us the
kernel's own connections, which we must neither feed nor answer -- give the
guard its verdicts, fire due timers, then encode and send what the engine
wants sent. Every segment and state change goes into its connection's Trace.

Sends: on a link that offloads (rawsock, remote peers), consecutive data
segments of one connection that differ only in seq (codec.gso_runs) leave as
one packet the kernel cuts back into exactly those segments (GSO), and the
kernel fills in the TCP checksums; a bulk send makes one sendmsg per ~45
segments instead of one each (~35 -> ~95 MB/s in the lab). The trace still
holds each segment the engine produced.

Threading, leader/follower: whoever runs the loop is the *leader*, and only the
leader blocks in select(). A background thread leads while nobody else needs
to; an application thread that must wait (for the SYN-ACK, for data, for send
space) first reads the sockets itself, then takes over the leadership so the
packets it waits for are processed on its own thread, without a hand-off.
All engine access happens under one lock; blocked callers wait on a Condition.

Drivers are per network namespace: a driver's sockets, port reservations and
iptables rules live in the namespace it was created in, and it enters that
namespace for every kernel-facing call made from a thread that is elsewhere.
`default_driver()` keeps one per namespace.

Measured (2 vCPU VM, client and server namespaces on a veth bridge, median of
200 connect()+abort() after 20 warm-up rounds): tcpscapy.connect() to a kernel
listener takes ~170 us, the kernel's own connect() ~10 us in the same lab. Of
the 170: the engine ~65 (Stack.connect, receive, segments_to_send), the codec
~25, the two AF_PACKET sends ~40 (the kernel handles the peer's side inside
them), one recv ~10, driver and API bookkeeping ~30. An earlier design where the
background thread always led and app threads waited on a Condition measured
~300 us: the hand-off, and the two threads fighting over the GIL, cost more
than the handshake itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tcpscapy import netns
from tcpscapy.core import events as ev
from tcpscapy.core.config import Config
from tcpscapy.core.connection import Connection
from tcpscapy.core.errors import LocalProtocolError
from tcpscapy.core.segment import Segment
from tcpscapy.core.stack import ANY, Listener, Stack
from tcpscapy.core.state import State
from tcpscapy.io import codec, icmp_codec, plumbing
from tcpscapy.io.plumbing import (
    GuardFactory,
    GuardLike,
    LinkLike,
    LinkOpener,
    PortReserver,
    ReceiverOpener,
    ReservationLike,
    link_mtu,
    mute,
    one_line,
    setns,
)
from tcpscapy.io.rawsock import LinkError, OffloadRefused
from tcpscapy.trace import Trace

__all__ = [
    "Driver",
    "DriverClosed",
    "Endpoint",
    "ListenerState",
    "PortUse",
    "close_all",
    "default_driver",
]

Address = tuple[str, int]
FourTuple = tuple[str, int, str, int]

HANDOVER = 0.002  # the background thread leads after the app has been away this long
GUARD_EVERY = 0.001  # inline turns give the guard's queue its verdicts this often
RECV_BATCH = 64  # packets per recv_many call
RECV_MAX_PER_TURN = 1024  # bound one turn so timers and the app get their share
WARM_PORTS = 64  # idle client ports kept reserved (with their guard rule) for reuse
LINGER = 2.0  # seconds close() waits for our FINs to be acknowledged
ORPHAN_TRACE = 1000  # entries kept of segments that belong to no connection
TRACE_LIMIT = 20_000  # entries kept per connection: segments hold their payloads
NO_ROUTE_HOLD = 5.0  # seconds a failed link open (no ARP answer) is not retried
URGENT_KEPT = 64  # urgent-data marks kept per connection for Connection.urgent
NO_ROUTE_MAX = 1024  # failed opens remembered: a flood from random sources adds one each
_LINGERING = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})
_OPEN = frozenset({State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT})


class DriverClosed(RuntimeError):
    """The driver was closed (or its loop failed); it takes no more work."""


# -- bookkeeping ------------------------------------------------------------------------


@dataclass(eq=False)
class PortUse:
    """A local (ip, port) we hold: kernel reservation plus guard rule, shared by users.

    A listening port is used by the listener and by every connection it spawned;
    a client port by one connection at a time, then it goes back to the warm pool.
    """

    key: Address
    reservation: ReservationLike
    listening: bool
    refs: int = 0
    # The peer a warm client port last talked to, and whether that ended in a reset:
    # our RST may have been lost, so the peer may still hold that 4-tuple open.
    last_remote: Address | None = None
    last_reset: bool = False


class Endpoint:
    """What the driver knows about one engine connection, for the blocking API."""

    __slots__ = ("app_closed", "closed", "conn", "connected", "eof", "key", "last_state",
                 "listener", "port", "refused", "reset", "rx", "trace", "urgent")

    def __init__(self, conn: Connection, port: PortUse, trace: Trace,
                 listener: ListenerState | None = None) -> None:
        self.conn = conn
        self.key: FourTuple = (*conn.local, *conn.remote)
        self.port = port
        self.trace = trace
        self.listener = listener
        self.rx = bytearray()  # delivered by the engine, not yet read by the app
        self.connected = False
        self.eof = False  # the peer's FIN arrived
        self.reset = False
        self.refused = False
        self.closed = False  # the engine reached CLOSED
        self.app_closed = False  # close() or abort() was called
        self.last_state = State.CLOSED  # the state before CLOSED: tells why it closed
        # Where the peer's urgent data ended (ev.UrgentData), the newest URGENT_KEPT: a
        # peer moving its urgent pointer on every segment must not grow this.
        self.urgent: deque[int] = deque(maxlen=URGENT_KEPT)

    @property
    def timed_out(self) -> bool:
        """Closed because the peer went silent (retries, user timeout, keepalive)."""
        return self.closed and not self.reset and not self.app_closed and \
            self.last_state not in (State.LAST_ACK, State.CLOSING, State.TIME_WAIT)

    def __repr__(self) -> str:
        return f"<Endpoint {self.conn!r}>"


class ListenerState:
    __slots__ = ("closed", "listener", "port", "trace_limit")

    def __init__(self, listener: Listener, port: PortUse, trace_limit: int | None) -> None:
        self.listener = listener
        self.port = port
        self.trace_limit = trace_limit  # for the connections it spawns
        self.closed = False


@dataclass
class Stats:
    received: int = 0  # segments handed to the engine
    foreign: int = 0  # valid TCP for an address/port we do not own: ignored
    undecodable: int = 0  # not IPv4/TCP, bad checksum, truncated
    icmp_malformed: int = 0  # ICMP that is no usable error about a TCP segment
    sent: int = 0
    send_errors: int = 0


# -- the driver -------------------------------------------------------------------------

_WAKE = "wake"
_GUARD = "guard"


class Driver:
    """One event loop over raw sockets for a core Stack; see the module docstring."""

    def __init__(self, config: Config | None = None, *,
                 open_link: LinkOpener = plumbing.open_link,
                 open_receivers: ReceiverOpener = plumbing.open_receivers,
                 reserve_port: PortReserver = plumbing.reserve_port,
                 make_guard: GuardFactory | None = plumbing.make_guard,
                 warm_ports: int = WARM_PORTS,
                 background: bool = True) -> None:
        config = config or Config()
        if config.secret == bytes(len(config.secret)):
            config = config.with_(secret=os.urandom(16))
        self.config = config
        self.stack = Stack(config)
        self.stats = Stats()
        self.orphans = Trace(maxlen=ORPHAN_TRACE, time_offset=_wall_offset())
        self._open_link = open_link
        self._open_receivers = open_receivers
        self._reserve_port = reserve_port
        self._make_guard = make_guard
        self._warm_limit = warm_ports
        self._background = background
        self.guard: GuardLike | None = None
        # The namespace this driver lives in, held open so its id stays unique.
        self._ns_fd = os.open(plumbing.THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        self._ns_id = os.fstat(self._ns_fd).st_ino
        # Engine lock; `_changed` wakes app threads, `_bg_idle` the background thread.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._bg_idle = threading.Condition(self._lock)
        self._start_lock = threading.Lock()
        self._started = False
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._leader: int | None = None
        self._leader_wake_at = float("inf")
        self._want_lead = 0  # app threads inside wait()
        self._bg_parked = False  # the background thread sleeps until an app wait ends
        self._app_at = 0.0  # when an app thread last called in (monotonic)
        self._mtus: dict[int, int | None] = {}
        self._guard_at = 0.0
        self._no_route: dict[tuple[str, str], tuple[float, OSError]] = {}
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._woken = False
        self._selector.register(self._wake_fd, selectors.EVENT_READ, _WAKE)
        # Links: by route request, by (src, dst) for output, dedup by sender and reader.
        self._route_links: dict[tuple[str, str | None, str | None], LinkLike] = {}
        self._links: dict[tuple[str, str], LinkLike] = {}
        self._senders: dict[tuple[str, str, str | None], LinkLike] = {}
        self._readers: dict[tuple[str, str], LinkLike] = {}
        self._reader_list: list[LinkLike] = []
        self._repliers: list[tuple[str, Callable[[str, bytes], bool]]] = []  # Receiver.reply
        self._all_links: list[LinkLike] = []
        # Ports and connections.
        self._ports: dict[Address, PortUse] = {}
        self._warm: dict[str, deque[PortUse]] = {}
        self._eps: dict[FourTuple, Endpoint] = {}
        self._listeners: dict[Address, ListenerState] = {}
        self._finished: list[Endpoint] = []
        self._dirty = False  # something changed that waiters should look at
        _all_drivers.add(self)

    # ------------------------------------------------------------------ public

    @property
    def lock(self) -> threading.Lock:
        """Hold it around engine calls; `wait` must be called with it held."""
        return self._lock

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def owned(self) -> set[Address]:
        """Local (ip, port) pairs whose segments go to the engine (0.0.0.0 = any ip)."""
        return set(self._ports)

    def connections(self) -> list[Endpoint]:
        with self._lock:
            return list(self._eps.values())

    @property
    def icmp_counters(self) -> dict[str, int]:
        """What became of the ICMP errors that came in (the non-zero counters only)."""
        counters = {**self.stack.icmp_counters, "icmp_malformed": self.stats.icmp_malformed}
        return {name: n for name, n in counters.items() if n}

    def is_ours(self, seg: Segment) -> bool:
        """True if the segment is addressed to a local (ip, port) we hold."""
        ports = self._ports
        return (seg.dst, seg.dport) in ports or (ANY, seg.dport) in ports

    def open_connection(self, remote: Address, *, config: Config | None = None,
                        src: str | None = None, sport: int | None = None,
                        iface: str | None = None, mss_from_mtu: bool = True,
                        trace_limit: int | None = TRACE_LIMIT, data: bytes = b"",
                        tfo_cookie: bytes | None = None, tfo_experimental: bool = False,
                        tfo_mss: int | None = None) -> Endpoint:
        """Active open: send the SYN and return at once (wait for `ep.connected`).

        With `mss_from_mtu` the MSS we offer is lowered to fit the link's MTU.
        The trace keeps the newest `trace_limit` entries (None: all). `data` is
        queued behind the SYN; with a Fast Open cookie (b"" asks for one) part of
        it rides in the SYN (see core Connection.connect).
        """
        self.start()
        link = self._link_for(remote[0], src, iface)
        local_ip = src or link.src_ip
        config = self._config(config)
        if mss_from_mtu:
            config = self._fit_mss(config, [link])
        port = self._client_port(local_ip, sport, remote)
        with self._lock:
            try:
                self._check_open()
                conn = self.stack.connect((local_ip, port.key[1]), remote, time.monotonic(),
                                          config=config, data=data, tfo_cookie=tfo_cookie,
                                          tfo_experimental=tfo_experimental, tfo_mss=tfo_mss)
            except LocalProtocolError as exc:  # that 4-tuple is still in use (TIME-WAIT)
                self._unref(port)
                raise PortInUseError(str(exc)) from None
            except BaseException:
                self._unref(port)
                raise
            ep = Endpoint(conn, port, self._new_trace(trace_limit))
            self._eps[ep.key] = ep
            self.app_call(ep)
        return ep

    def listen(self, ip: str, port: int, *, backlog: int | None = None,
               config: Config | None = None, mss_from_mtu: bool = True,
               trace_limit: int | None = TRACE_LIMIT) -> ListenerState:
        """Passive open on (ip, port); ip 0.0.0.0 listens on every local address.

        With `mss_from_mtu` the MSS we offer fits the smallest MTU we listen on.
        """
        self.start()
        use = self._hold_port(ip, port, listening=True)
        try:
            with self._in_namespace():
                receivers = self._open_receivers(ip)
        except BaseException:
            with self._lock:
                self._unref(use)
            raise
        config = self._config(config)
        if mss_from_mtu:
            config = self._fit_mss(config, receivers)
        with self._lock:
            for link in receivers:
                self._adopt_reader(link)
            try:
                self._check_open()
                listener = self.stack.listen(ip, use.key[1], backlog=backlog, config=config)
            except BaseException:
                self._unref(use)
                raise
            state = ListenerState(listener, use, trace_limit)
            self._listeners[listener.local] = state
        return state

    def accept(self, ls: ListenerState) -> Endpoint | None:
        """The next established connection of `ls`, or None (lock held)."""
        while (conn := ls.listener.accept()) is not None:
            ep = self._eps.get((*conn.local, *conn.remote))
            if ep is not None and ep.conn is conn:
                return ep
        return None

    def close_listener(self, ls: ListenerState) -> None:
        """Stop listening; connections not yet accepted are reset (lock held)."""
        if ls.closed:
            return
        ls.closed = True
        ls.listener.close()
        self._listeners.pop(ls.listener.local, None)
        now = time.monotonic()
        for ep in list(self._eps.values()):
            if ep.listener is ls:
                self._dispatch(ep, now)
        self._flush(now)
        self._unref(ls.port)
        self._after_app_call()

    def inject(self, ep: Endpoint, packet: Segment | bytes, *, raw: bool = False) -> str:
        """Send a hand-made segment on `ep`'s link, past the engine (lock held).

        A Segment is encoded as usual; with `raw`, `packet` is a whole IPv4
        packet sent byte for byte, bad checksums and offsets included. The
        engine is not told: what the segment claims (data, a FIN) is news only
        to the peer. It goes into `ep.trace` noted "injected" (with why a raw
        packet would not decode, if it would not). Returns '' or why it was not
        sent; never raises for a send failure.
        """
        if raw:
            if not isinstance(packet, bytes | bytearray | memoryview):
                raise TypeError(f"raw injection takes the packet's bytes, not {type(packet)}")
            data = bytes(packet)
            seg, note = _describe_raw(data)
        else:
            if not isinstance(packet, Segment):
                raise TypeError(f"inject takes a Segment (or bytes with raw=True), "
                                f"not {type(packet)}")
            try:
                data = codec.encode(packet)
            except ValueError as exc:
                raise ValueError(f"cannot inject: {exc}") from None
            seg, note = packet, "injected"
        (local_ip, _), (remote_ip, _) = ep.conn.local, ep.conn.remote
        failure = self._send_packet(local_ip, remote_ip, data)
        ep.trace.record_segment(time.monotonic(), "out", seg,
                                f"{note}; {failure}" if failure else note)
        return failure

    def app_call(self, ep: Endpoint) -> None:
        """After the app called into `ep.conn` (lock held): events, then a turn of the loop.

        The turn reads the sockets too, so an app that never blocks still has its
        ACKs processed on its own thread.
        """
        self._app_active()
        self._dispatch(ep, time.monotonic())
        self._service(None, app=True)
        self._after_app_call()

    def wait(self, ready: Callable[[], bool], deadline: float | None = None) -> bool:
        """Block (lock held) until `ready()` or the monotonic `deadline`; False on timeout.

        The caller runs the loop itself whenever no one else is: first one look
        at the sockets, then as the leader, so what it waits for is handled on
        its own thread.
        """
        if ready():
            return True
        self._check_alive()
        self._want_lead += 1
        try:
            self._app_active()  # a background leader steps aside for us
            self._service(None)  # the answer may already be queued
            if self._dirty:
                self._notify()
                # What we just read may be what the leader, asleep in select(), waits for.
                leader = self._leader
                if leader is not None and leader != threading.get_ident():
                    self._wake()
            while not ready():
                self._check_alive()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if self._leader is None:
                    self._lead_once(deadline)
                else:
                    self._changed.wait(None if deadline is None else deadline - now)
            return True
        finally:
            self._want_lead -= 1
            self._app_at = time.monotonic()  # the background thread waits HANDOVER more
            if self._want_lead == 0 and self._bg_parked:
                self._bg_idle.notify()  # it saw us block and sleeps until told

    def close(self, linger: float = LINGER) -> None:
        """Close every connection (FIN; RST after `linger` s), stop the loop, free all."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._started and self._failure is None:
                self._close_everything(linger)
            self._closed = True
            self._wake()
            self._bg_idle.notify_all()
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        atexit.unregister(self._close_at_exit)
        with self._lock, self._in_namespace():
            self._release_everything()
        _all_drivers.discard(self)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:  # nothing left to raise to at exit
            print(f"tcpscapy: closing the driver failed: {one_line(exc)}", file=sys.stderr)

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._eps)} connections"
        return f"<Driver netns={self._ns_id} {state}>"

    # ---------------------------------------------------------------- the loop

    def _bg_ident(self) -> int | None:
        thread = self._thread
        return thread.ident if thread is not None else None

    def _lead_once(self, deadline: float | None) -> None:
        """Be the leader for one select() and one turn of the loop (lock held)."""
        self._leader = threading.get_ident()
        now = time.monotonic()
        due = self.stack.get_timer()
        if deadline is not None:
            due = deadline if due is None else min(due, deadline)
        timeout = None if due is None else max(due - now, 0.0)
        self._leader_wake_at = float("inf") if due is None else due
        self._lock.release()
        try:
            ready = self._selector.select(timeout)
        finally:
            self._lock.acquire()
            self._leader = None
        if self._closed:
            return  # close() may have freed the sockets meanwhile
        self._service(ready)
        self._notify()

    def _service(self, ready: list[tuple[selectors.SelectorKey, int]] | None, *,
                 app: bool = False) -> None:
        """One turn (lock held): input, guard verdicts, timers, output.

        After an app call (`app`) its segments go out first: on veth the answer
        is often queued by the time send() returns, and is read in the same turn.
        """
        now = time.monotonic()
        if app:
            self._flush(now)
        guard = self.guard
        if ready:
            for key, _ in ready:
                if key.data == _WAKE:
                    self._woken = False
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake_fd)
                elif key.data == _GUARD and guard is not None:
                    self._guard_at = now
                    guard.process_pending()
        elif guard is not None and now - self._guard_at >= GUARD_EVERY:
            self._guard_at = now  # an app thread that never selects still gives verdicts
            guard.process_pending()
        fed = self._receive()
        now = time.monotonic()  # after receiving: what we answer now is stamped after it
        due = self.stack.get_timer()
        if due is not None and due <= now:
            self._fire_timers(now)
        elif app and not fed:
            return  # nothing new since the flush above
        self._flush(now)

    def _receive(self) -> int:
        """Feed the engine every queued segment for us; return how many.

        Each batch is stamped when it is read, so a SYN-ACK read in the same turn
        as the SYN went out still shows the real round trip in the trace.
        """
        stack, eps, ports = self.stack, self._eps, self._ports
        stats, decode = self.stats, codec.decode
        fed = stats.received
        for link in self._reader_list:
            taken = 0
            while taken < RECV_MAX_PER_TURN:
                batch = link.recv_many(RECV_BATCH)
                now = time.monotonic()
                taken += len(batch)
                for packet, skip_csum in batch:
                    seg = decode(packet, verify_checksum=not skip_csum)
                    if seg is None:
                        if len(packet) > 9 and packet[9] == icmp_codec.IPPROTO_ICMP:
                            self._receive_icmp(packet, now)
                        else:
                            stats.undecodable += 1
                        continue
                    if (seg.dst, seg.dport) not in ports and (ANY, seg.dport) not in ports:
                        stats.foreign += 1  # e.g. the kernel's own connections
                        continue
                    stats.received += 1
                    stack.receive(seg, now)
                    key = (seg.dst, seg.dport, seg.src, seg.sport)
                    ep = eps.get(key)
                    conn = stack.connection((seg.dst, seg.dport), (seg.src, seg.sport))
                    if conn is not None and (ep is None or ep.conn is not conn):
                        ep = self._adopt_passive(conn, ep)
                    if ep is None:
                        self.orphans.record_segment(now, "in", seg)
                        continue
                    ep.trace.record_segment(now, "in", seg)
                    self._dispatch(ep, now)
                if len(batch) < RECV_BATCH:
                    break
        return stats.received - fed

    def _receive_icmp(self, packet: bytes, now: float) -> None:
        """An ICMP error: the engine decides (core/path.py); the trace shows it either way."""
        err = icmp_codec.decode_icmp(packet)
        if isinstance(err, str):
            self.stats.icmp_malformed += 1
            return
        ports = self._ports
        if err is None or ((err.src, err.sport) not in ports and (ANY, err.sport) not in ports):
            self.stats.foreign += 1  # no error, or about the kernel's own connections
            return
        why = self.stack.receive_icmp(err, now)
        ep = self._eps.get((err.src, err.sport, err.dst, err.dport))
        if ep is None:
            return
        if why and why != "icmp_mtu_ignored":  # (that one the engine explains in an event)
            ep.trace.record_segment(now, "in", None, f"{err}: dropped ({why})")
        self._dispatch(ep, now)

    def _adopt_passive(self, conn: Connection, stale: Endpoint | None) -> Endpoint | None:
        """A connection the engine made from a SYN (possibly replacing a TIME-WAIT one)."""
        if stale is not None:  # the engine dropped it without an event: a new SYN ended it
            stale.closed = True
            stale.last_state = State.TIME_WAIT
            self._finished.append(stale)
        owner = conn.listener
        ls = self._listeners.get(owner.local) if owner is not None else None
        if ls is None:
            return None
        ep = Endpoint(conn, ls.port, self._new_trace(ls.trace_limit), ls)
        ls.port.refs += 1
        self._eps[ep.key] = ep
        return ep

    def _fire_timers(self, now: float) -> None:
        for conn in self.stack.handle_timer(now):
            ep = self._eps.get((*conn.local, *conn.remote))
            if ep is not None and ep.conn is conn:
                self._dispatch(ep, now)

    def _dispatch(self, ep: Endpoint, now: float) -> None:
        """Turn the connection's events into Endpoint fields and trace entries."""
        conn = ep.conn
        while (event := conn.next_event()) is not None:
            self._dirty = True
            kind = type(event)
            if kind is ev.DataReceived:
                ep.rx += event.data  # type: ignore[attr-defined]
            elif kind is ev.StateChanged:
                old, new = event.old, event.new  # type: ignore[attr-defined]
                ep.trace.record_state(now, old, new)
                if new is State.CLOSED:
                    ep.last_state = old
            elif kind is ev.Connected:
                ep.connected = True
            elif kind is ev.PeerClosed:
                ep.eof = True
            elif kind is ev.UrgentData:
                ep.urgent.append(event.end)  # type: ignore[attr-defined]
            elif kind is ev.Reset:
                ep.reset = True
                ep.refused = event.refused  # type: ignore[attr-defined]
            elif kind is ev.IcmpReceived:
                ep.trace.record_segment(now, "in", None, event.text)  # type: ignore[attr-defined]
            elif kind is ev.PathMtuChanged:
                state = conn.state
                ep.trace.record_state(now, state, state, note=_mss_note(event))  # type: ignore[arg-type]
            elif kind is ev.Closed and not ep.closed:
                ep.closed = True
                self._finished.append(ep)

    def _flush(self, now: float) -> None:
        """Send what the engine wants sent; trace every segment it produced."""
        segments = self.stack.segments_to_send(now)
        if segments:
            eps, orphans = self._eps, self.orphans
            runs = codec.gso_runs(segments) if len(segments) > 1 else [segments]
            for run in runs:
                note = self._send_run(run)
                for seg in run:
                    seg_note = self._transmit(seg) if note is None else note
                    ep = eps.get((seg.src, seg.sport, seg.dst, seg.dport))
                    (ep.trace if ep is not None else orphans).record_segment(
                        now, "out", seg, seg_note)
        if self._finished:
            self._reap()

    def _send_run(self, run: list[Segment]) -> str | None:
        """Send a run (codec.gso_runs) as one packet the kernel segments and checksums.

        Returns '' or why it was not sent, or None where the link cannot offload
        (loopback, a Receiver, a kernel that refused): then each segment is sent
        on its own. A single segment goes this way too, to leave its checksum
        to the kernel.
        """
        first = run[0]
        link = self._links.get((first.src, first.dst))
        if link is None or not getattr(link, "offload", False):
            return None
        try:
            packet = codec.encode_run(run)
        except ValueError:
            return None  # each segment then says why it cannot be encoded
        try:
            link.send_offload(packet, len(first.payload) if len(run) > 1 else 0)
        except OffloadRefused:
            return None
        except (LinkError, OSError) as exc:
            self.stats.send_errors += len(run)
            return f"not sent: {one_line(exc)}"
        self.stats.sent += len(run)
        return ""

    def _transmit(self, seg: Segment) -> str:
        """Send one segment; '' or why it was not sent (never raises).

        A peer we have no link to is first answered the way its frames came in
        (Receiver.reply): opening a link costs an ARP exchange under the lock,
        two seconds when nobody answers, as for a SYN flood's spoofed sources.
        """
        try:
            packet = codec.encode(seg)
        except ValueError as exc:
            self.stats.send_errors += 1
            return f"not sent: {one_line(exc)}"
        return self._send_packet(seg.src, seg.dst, packet)

    def _send_packet(self, src: str, dst: str, packet: bytes) -> str:
        """Send an IPv4 packet on the link from `src` to `dst`; '' or why not (never raises)."""
        try:
            link = self._links.get((src, dst))
            if link is None and not self._reply(src, dst, packet):
                link = self._open_out_link(src, dst)
            if link is not None:
                link.send(packet)
        except (LinkError, OSError, ValueError) as exc:
            self.stats.send_errors += 1
            return f"not sent: {one_line(exc)}"
        self.stats.sent += 1
        return ""

    def _reply(self, src: str, dst: str, packet: bytes) -> bool:
        """Send through a reader of `src` that has heard from `dst`; False if none has."""
        return any(ip == src and reply(dst, packet) for ip, reply in self._repliers)

    def _open_out_link(self, src: str, dst: str) -> LinkLike:
        """A link to a peer we only know from its segments (lock held; slow the first time).

        A failure is remembered for NO_ROUTE_HOLD s, so a peer that does not
        answer ARP costs the loop one wait, not one per segment.
        """
        no_route = self._no_route
        failed = no_route.pop((src, dst), None)
        now = time.monotonic()
        if failed is not None and now < failed[0]:
            no_route[(src, dst)] = failed
            raise failed[1]
        try:
            with self._in_namespace():
                return self._adopt_link((dst, src, None), self._open_link(dst, src, None))
        except OSError as exc:
            # Oldest first (each key is re-inserted): drop the expired, then the oldest,
            # so spoofed sources cannot grow it; keep no traceback (it holds frames).
            while no_route and (len(no_route) >= NO_ROUTE_MAX
                                or next(iter(no_route.values()))[0] <= now):
                del no_route[next(iter(no_route))]
            no_route[(src, dst)] = (now + NO_ROUTE_HOLD, exc.with_traceback(None))
            raise

    def _reap(self) -> None:
        """Forget connections the engine closed; give back their ports."""
        finished, self._finished = self._finished, []
        for ep in finished:
            if self._eps.get(ep.key) is ep and self.stack.connection(
                    ep.conn.local, ep.conn.remote) is not ep.conn:
                del self._eps[ep.key]
            elif self._eps.get(ep.key) is ep:
                self._finished.append(ep)  # still in the engine until its next flush
                continue
            ep.port.last_remote = ep.conn.remote
            ep.port.last_reset = ep.conn.close_cause in ("aborted", "reset", "refused")
            self._unref(ep.port)

    def _notify(self) -> None:
        self._dirty = False
        self._changed.notify_all()

    def _wake(self) -> None:
        if not self._woken and not self._closed_fds():
            self._woken = True
            os.eventfd_write(self._wake_fd, 1)

    def _closed_fds(self) -> bool:
        return self._wake_fd < 0

    def _app_active(self) -> None:
        """An app thread is here: keep the background thread out of its way (lock held)."""
        self._app_at = time.monotonic()
        leader = self._leader
        if leader is not None and leader == self._bg_ident():
            self._wake()

    def _after_app_call(self) -> None:
        """Tell waiters what changed, and wake a leader blocked in select on another
        thread: it may be waiting for exactly this (an abort, a close), or for a timer
        that just moved up."""
        changed = self._dirty
        if changed:
            self._notify()
        leader = self._leader
        if leader is not None and leader != threading.get_ident():
            due = self.stack.get_timer()
            if changed or (due is not None and due < self._leader_wake_at):
                self._wake()

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise DriverClosed(f"the driver loop failed: {one_line(self._failure)}")
        if self._closed:
            raise DriverClosed("the driver is closed")

    def _check_open(self) -> None:
        self._check_alive()
        if self._closing:
            raise DriverClosed("the driver is closing")

    def _run(self) -> None:
        """The background thread: lead once no application thread has called for HANDOVER.

        While an app thread is blocked in wait() it sleeps until that wait ends.
        Otherwise it is not woken when an app thread leaves -- that would make it
        fight the app thread for the GIL on every call -- but looks again after
        HANDOVER.
        """
        try:
            if netns.current_id() != self._ns_id:
                setns(self._ns_fd)  # this thread lives in the driver's namespace
            with self._lock:
                while not self._closed:
                    away = time.monotonic() - self._app_at
                    if self._want_lead:
                        self._bg_parked = True
                        try:
                            self._bg_idle.wait()
                        finally:
                            self._bg_parked = False
                    elif self._leader is None and away >= HANDOVER:
                        self._lead_once(None)
                    else:
                        self._bg_idle.wait(HANDOVER - away if away < HANDOVER else HANDOVER)
        except BaseException as exc:  # a bug in the loop must not leave callers hanging
            with self._lock:
                self._failure = exc
                self._changed.notify_all()

    # -------------------------------------------------------------- setting up

    def start(self) -> None:
        """Start the RST guard and the background thread, once (the first open does it).

        Call it early to have `guard` for tcpscapy.io.guard.stop_on_signals().
        """
        if self._started:
            self._check_open()
            return
        with self._start_lock:
            self._check_open()
            if self._started:
                return
            if self._make_guard is not None:
                with self._in_namespace():
                    guard = self._make_guard()
                    guard.start()
                with self._lock:
                    self.guard = guard
                    self._selector.register(guard.fileno(), selectors.EVENT_READ, _GUARD)
            # After the guard's own atexit hook, so ours runs first (LIFO): connections
            # close while the guard still drops the kernel's RSTs.
            atexit.register(self._close_at_exit)
            if self._background:
                self._thread = threading.Thread(target=self._run, name="tcpscapy-driver",
                                                daemon=True)
                self._thread.start()
            self._started = True

    def _fit_mss(self, config: Config, links: list[LinkLike]) -> Config:
        """Lower the MSS we offer so a full segment fits every link's MTU (IP + TCP: 40)."""
        mtus = []
        for link in links:
            if id(link) not in self._mtus:
                self._mtus[id(link)] = link_mtu(link)  # links live as long as the driver
            if (mtu := self._mtus[id(link)]) is not None:
                mtus.append(mtu)
        if mtus and min(mtus) - 40 < config.mss:
            return config.with_(mss=max(min(mtus) - 40, 64))
        return config

    @staticmethod
    def _new_trace(limit: int | None) -> Trace:
        return Trace(maxlen=limit, time_offset=_wall_offset())

    def _config(self, config: Config | None) -> Config:
        if config is None:
            return self.config
        if config.secret == bytes(len(config.secret)):
            config = config.with_(secret=self.config.secret)
        return config

    def _link_for(self, dst: str, src: str | None, iface: str | None) -> LinkLike:
        """The link towards `dst`, opened on first use (slow: route, ARP) outside the lock."""
        key = (dst, src, iface)
        with self._lock:
            link = self._route_links.get(key)
        if link is not None:
            return link
        with self._in_namespace():
            new = self._open_link(dst, src, iface)
        with self._lock:
            return self._adopt_link(key, new)

    def _adopt_link(self, key: tuple[str, str | None, str | None], new: LinkLike) -> LinkLike:
        """Keep one link per route and per sender; one reader per (iface, address)."""
        link = self._route_links.get(key) or self._senders.get(
            (new.iface, new.src_ip, new.dst_mac))
        if link is not None:
            new.close()
        else:
            link = new
            self._senders[(link.iface, link.src_ip, link.dst_mac)] = link
            if not self._adopt_reader(link, keep=True):
                mute(link)  # the reader already sees this traffic; no second copy
        self._route_links[key] = link
        self._links[(link.src_ip, key[0])] = link
        return link

    def _adopt_reader(self, link: LinkLike, *, keep: bool = False) -> bool:
        """Read from `link` unless (iface, address) has a reader; else close it unless `keep`."""
        reader = (link.iface, link.src_ip)
        if reader in self._readers:
            if keep:
                self._all_links.append(link)
            else:
                link.close()
            return False
        self._all_links.append(link)
        self._readers[reader] = link
        self._reader_list.append(link)
        if isinstance(link, plumbing.Receiver):
            self._repliers.append((link.src_ip, link.reply))
        self._selector.register(link.fileno(), selectors.EVENT_READ, link)
        return True

    def _client_port(self, ip: str, sport: int | None, remote: Address) -> PortUse:
        """A local port for an active open: a warm one, the one asked for, or a new one.

        A warm port whose last connection to this same peer ended in a reset is
        passed over while the pool can still grow: if our RST was lost, the peer
        still has that 4-tuple open and would answer a new SYN on it with a
        challenge ACK (Linux picks another port too). A full pool of such ports is
        reused oldest first, so a connect+abort loop stays on warm ports.
        """
        with self._lock:
            if sport:
                use = self._ports.get((ip, sport))
                if use is not None:
                    if use.listening or use.refs:
                        raise PortInUseError(f"local port {ip}:{sport} is in use")
                    self._warm[ip].remove(use)
                    use.refs = 1
                    return use
            else:
                pool = self._warm.get(ip)
                if pool:
                    use = next((u for u in pool
                                if not (u.last_reset and u.last_remote == remote)), None)
                    if use is None and len(pool) >= self._warm_limit:
                        use = pool[0]  # all reset by this peer: the least recently used
                    if use is not None:
                        pool.remove(use)
                        use.refs = 1
                        return use
        use = self._hold_port(ip, sport or 0, listening=False)
        return use

    def _hold_port(self, ip: str, port: int, *, listening: bool) -> PortUse:
        """Reserve (ip, port) in the kernel and install its guard rule (slow, no lock)."""
        with self._lock:
            if port and ((ip, port) in self._ports or (ANY, port) in self._ports
                         or (ip == ANY and any(p == port for _, p in self._ports))):
                raise PortInUseError(f"local port {ip}:{port} is in use")
        with self._in_namespace():
            reservation = self._reserve_port(ip, port)
            try:
                if self.guard is not None:
                    self.guard.own_port(ip, reservation.port)
            except BaseException:
                reservation.close()
                raise
        use = PortUse((ip, reservation.port), reservation, listening, refs=1)
        with self._lock:
            self._ports[use.key] = use
        return use

    def _unref(self, use: PortUse) -> None:
        """One user fewer (lock held): warm a client port, release a listening one."""
        use.refs -= 1
        if use.refs > 0:
            return
        pool = self._warm.setdefault(use.key[0], deque())
        if not use.listening and not self._closing and len(pool) < self._warm_limit:
            pool.append(use)
            return
        self._release_port(use)

    def _release_port(self, use: PortUse) -> None:
        if self._ports.pop(use.key, None) is None:
            return
        try:
            if self.guard is not None:
                with self._in_namespace():
                    self.guard.disown_port(*use.key)
        finally:
            use.reservation.close()

    # -------------------------------------------------------------- tearing down

    def _close_everything(self, linger: float) -> None:
        """FIN every open connection, wait up to `linger` s for the ACKs, RST the rest."""
        now = time.monotonic()
        for ls in list(self._listeners.values()):
            ls.closed = True
            ls.listener.close()
        self._listeners.clear()
        for ep in list(self._eps.values()):
            if ep.conn.state in _OPEN or ep.conn.state is State.SYN_SENT:
                ep.app_closed = True
                ep.conn.close()
            self._dispatch(ep, now)
        self._flush(now)
        if linger > 0:
            with contextlib.suppress(DriverClosed):
                self.wait(lambda: not any(ep.conn.state in _LINGERING
                                          for ep in self._eps.values()),
                          time.monotonic() + linger)
        now = time.monotonic()
        for ep in list(self._eps.values()):
            if ep.conn.state not in (State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2):
                ep.conn.abort()
            self._dispatch(ep, now)
        self._flush(now)

    def _release_everything(self) -> None:
        """Free every kernel resource (lock held, in our namespace); best effort, all of it."""
        errors: list[BaseException] = []
        for use in self._ports.values():
            use.reservation.close()  # guard.stop() below removes every rule at once
        self._ports.clear()
        self._warm.clear()
        self._eps.clear()
        if self.guard is not None:
            try:
                self.guard.stop()
            except Exception as exc:
                errors.append(exc)
            self.guard = None
        for link in self._all_links:
            with contextlib.suppress(OSError):
                link.close()
        self._all_links.clear()
        self._reader_list.clear()
        self._repliers.clear()
        self._selector.close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1
        if errors:
            raise errors[0]

    def _in_namespace(self) -> contextlib.AbstractContextManager[None]:
        """Kernel-facing calls run in the driver's namespace, whatever thread makes them."""
        return plumbing.in_namespace(self._ns_fd, self._ns_id)


class PortInUseError(OSError):
    """A local port is already used by this driver."""


def _wall_offset() -> float:
    return time.time() - time.monotonic()


def _mss_note(event: ev.PathMtuChanged) -> str:
    return f"MSS {event.old_mss} -> {event.new_mss}: {event.reason}"


def _describe_raw(packet: bytes) -> tuple[Segment | None, str]:
    """What an injected raw packet carries, for the trace: the segment even when a
    checksum is wrong (the note says so), None when it does not parse at all."""
    found = codec.decode_ex(packet)
    if found.segment is not None:
        return found.segment, "injected raw"
    seg = codec.decode(packet, verify_checksum=False)
    return seg, f"injected raw, {found.reason}"


# -- one driver per namespace -----------------------------------------------------------

_all_drivers: set[Driver] = set()
_defaults: dict[str, Driver] = {}  # by namespace, 'net:[inode]'
_defaults_lock = threading.Lock()


def default_driver() -> Driver:
    """The shared driver of the calling thread's network namespace, made on first use.

    A live driver holds its namespace open, so the inode in the key cannot be
    reused by another namespace while the driver is in the table.
    """
    key = plumbing.thread_netns_key()
    driver = _defaults.get(key)  # a dict read is atomic: no lock on the hot path
    if driver is not None and not driver.closed:
        return driver
    with _defaults_lock:
        driver = _defaults.get(key)
        if driver is None or driver.closed:
            driver = _defaults[key] = Driver()
        return driver


def close_all(linger: float = LINGER) -> None:
    """Close every driver of this process (tests call it; so does interpreter exit)."""
    with _defaults_lock:
        _defaults.clear()
    errors = []
    for driver in list(_all_drivers):
        try:
            driver.close(linger)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]

