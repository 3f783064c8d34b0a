"""A host's TCP: connections by 4-tuple, listeners, TIME-WAIT, and segments for no one."""

from __future__ import annotations

import heapq
from collections import deque

from .config import Config
from .connection import Connection
from .errors import LocalProtocolError
from .icmp import IcmpError
from .pmtu import PathMtuCache
from .segment import ACK, RST, SYN, Segment
from .seq import seq_add, seq_gt
from .state import State
from .syncookies import LIFETIME, SynCookies

Address = tuple[str, int]
FourTuple = tuple[str, int, str, int]  # local ip, local port, remote ip, remote port
ANY = "0.0.0.0"
SYNCOOKIE_MODES = ("never", "auto", "always")
ICMP_COUNTERS = ("icmp_received", "icmp_accepted", "icmp_no_connection", "icmp_out_of_window",
                 "icmp_ignored", "icmp_mtu_ignored")


def reset_for(seg: Segment) -> Segment | None:
    """RFC 9293 §3.10.7.1: the RST that answers `seg` when no connection owns it."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dst, seg.src, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    return Segment(seg.dst, seg.src, seg.dport, seg.sport, 0, seq_add(seg.seq, seg.seg_len),
                   RST | ACK, 0)


class Listener:
    """A passive open on (ip, port): SYN-RECEIVED connections and an accept queue.

    `backlog` bounds both: a SYN finds the SYN queue full when handshaking plus
    not-yet-accepted connections reach it, and the accept queue never holds more.
    With a full SYN queue, `config.syncookies` decides: "never" drops the SYN (the
    client retries), "auto" answers with a cookie SYN-ACK, and "always" answers
    every SYN with one and keeps no per-SYN state at all. An ACK for no connection
    is checked as a cookie while cookies are in play ("always", or "auto" within
    a cookie's lifetime of the last one sent, much as Linux checks only after a
    recent overflow); otherwise, or if the cookie is bad, it is answered with RST.
    """

    def __init__(self, stack: Stack, local: Address, config: Config, backlog: int) -> None:
        if config.syncookies not in SYNCOOKIE_MODES:
            raise LocalProtocolError(f"syncookies must be one of {', '.join(SYNCOOKIE_MODES)}, "
                                     f"not {config.syncookies!r}")
        self.stack = stack
        self.local = local
        self.config = config
        self.backlog = backlog
        self._handshaking: set[Connection] = set()
        self._ready: deque[Connection] = deque()
        self._cookies = SynCookies(config)
        self._last_cookie_at: float | None = None
        self.syns_received = 0
        self.syns_dropped = 0  # a full queue and no cookies, or a full accept queue
        self.cookies_sent = 0
        self.cookies_validated = 0
        self.cookies_rejected = 0  # bad or expired cookie ACKs, answered with RST
        self.listen_overflows = 0  # handshake-completing ACKs dropped: accept queue full
        # TCP Fast Open, in Linux's counter names (TCPFastOpenPassive, ...).
        self.tfo_passive = 0  # SYN data accepted
        self.tfo_cookie_requests = 0
        self.tfo_passive_fail = 0  # a cookie came but the data was not accepted
        self.tfo_overflows = 0  # too many Fast Open connections pending: plain handshake
        self.closed = False

    def __repr__(self) -> str:
        return f"<Listener {self.local[0]}:{self.local[1]} LISTEN>"

    @property
    def queued(self) -> int:
        return len(self._handshaking) + len(self._ready)

    @property
    def ready(self) -> int:
        """Established connections waiting for accept()."""
        return len(self._ready)

    @property
    def counters(self) -> dict[str, int]:
        """The listener's counters by name, for summaries and JSON."""
        return {name: getattr(self, name) for name in (
            "syns_received", "syns_dropped", "cookies_sent", "cookies_validated",
            "cookies_rejected", "listen_overflows", "tfo_passive", "tfo_cookie_requests",
            "tfo_passive_fail", "tfo_overflows")}

    def accept(self) -> Connection | None:
        """The oldest established connection not yet handed out, or None."""
        return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        self.closed = True
        self.stack._listeners.pop(self.local, None)
        for conn in [*self._handshaking, *self._ready]:
            conn.abort()
        self._handshaking.clear()
        self._ready.clear()

    def receive(self, seg: Segment, now: float) -> None:
        """A segment for no connection, on our port: RFC 9293 §3.10.7.2 (LISTEN)."""
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            if flags & SYN or not self._cookie_ack(seg, now):
                self.stack._reply_reset(seg)
            return
        if flags & SYN:
            self._syn(seg, now)

    def _syn(self, seg: Segment, now: float) -> None:
        self.syns_received += 1
        if len(self._ready) >= self.backlog:
            self.syns_dropped += 1  # accept queue full: Linux drops even with cookies
            return
        mode = self.config.syncookies
        full = self.queued >= self.backlog
        if mode == "always" or (full and mode == "auto"):
            self.cookies_sent += 1
            self._last_cookie_at = now
            self.stack._out.append(self._cookies.synack(seg, now))
            return
        if full:
            self.syns_dropped += 1  # as Linux: drop, the client's SYN retransmission retries
            return
        conn = Connection((seg.dst, seg.dport), (seg.src, seg.sport), self.config)
        conn.listener = self
        pending = sum(c.tfo_pending for c in (*self._handshaking, *self._ready))
        tfo_allowed = pending < self.config.tfo_max_pending
        conn.accept_syn(seg, now, tfo_allowed=tfo_allowed)
        conn.use_path_mtu(self.stack.pmtu.lookup(conn.remote[0], now))
        self._count_fast_open(conn, seg, tfo_allowed)
        if conn.tfo_pending:
            self._ready.append(conn)  # as Linux: accept() it at once and read the SYN's data
        else:
            self._handshaking.add(conn)
        self.stack._add(conn)

    def _count_fast_open(self, conn: Connection, syn: Segment, allowed: bool) -> None:
        if not self.config.tfo_server:
            return
        if not allowed and (syn.options.tfo_cookie is not None or syn.payload):
            self.tfo_overflows += 1
            return
        if conn.tfo is None:
            return
        cookie = conn.tfo.cookie_received
        if conn.tfo.accepted:
            self.tfo_passive += 1
        elif cookie == b"":
            self.tfo_cookie_requests += 1
        elif cookie:
            self.tfo_passive_fail += 1

    def _cookies_in_play(self, now: float) -> bool:
        mode = self.config.syncookies
        if mode == "auto":
            return self._last_cookie_at is not None and now - self._last_cookie_at < LIFETIME
        return mode == "always"

    def _cookie_ack(self, seg: Segment, now: float) -> bool:
        """Rebuild a connection from a cookie ACK; False if it is no valid cookie of ours."""
        if not self._cookies_in_play(now):
            return False
        found = self._cookies.check(seg, now)
        if found is None:
            self.cookies_rejected += 1
            return False
        self.cookies_validated += 1
        if len(self._ready) >= self.backlog:
            self.listen_overflows += 1  # as Linux: drop; the client's next segment retries
            return True
        conn = Connection((seg.dst, seg.dport), (seg.src, seg.sport), self.config)
        conn.listener = self
        conn.accept_cookie_ack(seg, now, iss=seq_add(seg.ack, -1), mss=found.mss,
                               peer_wscale=found.wscale, sack=found.sack, ecn=found.ecn)
        conn.use_path_mtu(self.stack.pmtu.lookup(conn.remote[0], now))
        self.stack._add(conn)  # even if already closed: its answer still goes out
        self._handshaking.add(conn)
        self._progress(conn)
        return True

    def _holds_back(self, conn: Connection, seg: Segment) -> bool:
        """Drop the ACK that would complete `conn` while the accept queue is full (Linux).

        Only cookies can fill the accept queue while SYN-RECEIVED connections wait;
        the connection stays in SYN-RECEIVED and its SYN-ACK retransmission retries.
        """
        if conn not in self._handshaking or len(self._ready) < self.backlog:
            return False
        if conn.state is not State.SYN_RECEIVED or seg.flags & (SYN | ACK | RST) != ACK:
            return False
        self.listen_overflows += 1
        return True

    def _progress(self, conn: Connection) -> None:
        """Called by the stack after `conn` (one of ours) handled input."""
        if conn not in self._handshaking:
            return
        if conn.state is State.CLOSED:
            self._handshaking.discard(conn)
        elif conn.state is not State.SYN_RECEIVED:
            self._handshaking.discard(conn)
            self._ready.append(conn)


class Stack:
    """Demultiplexes segments to connections and listeners; answers the rest.

    Work is proportional to activity, not to the number of connections: only
    connections touched since the last flush (by a segment, a timer or an
    application call) are asked for segments, and timers sit in a heap whose
    stale entries are dropped as they surface.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._conns: dict[FourTuple, Connection] = {}
        self._listeners: dict[Address, Listener] = {}
        self._out: list[Segment] = []
        self._dirty: dict[Connection, None] = {}  # insertion-ordered: runs replay exactly
        self._timers: list[tuple[float, int, Connection]] = []
        self._timer_seq = 0
        self.resets_sent = 0
        self.pmtu = PathMtuCache()  # path MTUs learnt from ICMP, shared by connections
        self.icmp_counters = dict.fromkeys(ICMP_COUNTERS, 0)

    # ------------------------------------------------------------ app side

    def listen(self, ip: str, port: int, *, backlog: int | None = None,
               config: Config | None = None) -> Listener:
        if (ip, port) in self._listeners:
            raise LocalProtocolError(f"already listening on {ip}:{port}")
        listener = Listener(self, (ip, port), config or self.config,
                            backlog if backlog is not None else self.config.backlog)
        self._listeners[(ip, port)] = listener
        return listener

    def connect(self, local: Address, remote: Address, now: float, *,
                config: Config | None = None, data: bytes = b"",
                tfo_cookie: bytes | None = None, tfo_experimental: bool = False,
                tfo_mss: int | None = None) -> Connection:
        key = (*local, *remote)
        if key in self._conns:
            raise LocalProtocolError(
                f"{local[0]}:{local[1]} -> {remote[0]}:{remote[1]} is in use "
                f"({self._conns[key].state})")
        conn = Connection(local, remote, config or self.config)
        self._add(conn)
        conn.use_path_mtu(self.pmtu.lookup(remote[0], now))
        conn.connect(now, data=data, tfo_cookie=tfo_cookie, tfo_experimental=tfo_experimental,
                     tfo_mss=tfo_mss)
        return conn

    @property
    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def connection(self, local: Address, remote: Address) -> Connection | None:
        return self._conns.get((*local, *remote))

    # ------------------------------------------------------------- network

    def receive(self, seg: Segment, now: float) -> None:
        key = (seg.dst, seg.dport, seg.src, seg.sport)
        conn = self._conns.get(key)
        listener = self._listeners.get((seg.dst, seg.dport)) or self._listeners.get(
            (ANY, seg.dport))
        if conn is not None and conn.state is State.TIME_WAIT and listener is not None \
                and self._may_reuse_time_wait(conn, seg):
            del self._conns[key]
            conn = None
        if conn is not None:
            owner = conn.listener
            if owner is not None and owner._holds_back(conn, seg):
                return
            conn.receive(seg, now)
            self._dirty[conn] = None
            if owner is not None:
                owner._progress(conn)
            return
        if listener is not None:
            listener.receive(seg, now)
        else:
            self._reply_reset(seg)

    def receive_icmp(self, err: IcmpError, now: float) -> str:
        """An ICMP error quoting a segment (see core/icmp.py, core/path.py).

        Returns "" if it counted for the connection with the quoted 4-tuple,
        else why it was dropped, which is also the name of the counter in
        `icmp_counters` it went to: no such connection, a sequence number
        outside SND.UNA..SND.NXT (RFC 5927), nothing to act on.
        """
        counters = self.icmp_counters
        counters["icmp_received"] += 1
        conn = self._conns.get((err.src, err.sport, err.dst, err.dport))
        if conn is None:
            why = "icmp_no_connection"
        else:
            self._dirty[conn] = None  # it may have events, a close or segments to resend
            why = conn.receive_icmp(err, now, self.pmtu)
        counters[why or "icmp_accepted"] += 1
        return why

    @staticmethod
    def _may_reuse_time_wait(conn: Connection, seg: Segment) -> bool:
        """RFC 9293 §3.6.1 / RFC 6191: a new SYN may end TIME-WAIT if it is newer."""
        if seg.flags & (SYN | ACK | RST) != SYN:
            return False
        ts = seg.options.timestamps
        if conn.ts_ok and ts is not None:
            return seq_gt(ts[0], conn.ts_recent)
        return seq_gt(seg.seq, conn.rcv_nxt)

    def _reply_reset(self, seg: Segment) -> None:
        if not self.config.rst_for_closed_port:
            return
        rst = reset_for(seg)
        if rst is not None:
            self.resets_sent += 1
            self._out.append(rst)

    def segments_to_send(self, now: float) -> list[Segment]:
        """Everything due from the connections touched since the last call."""
        out, self._out = self._out, []
        dirty, self._dirty = self._dirty, {}
        for conn in dirty:
            out += conn.segments_to_send(now)
            self._schedule(conn)
            if conn.state is State.CLOSED:
                key = (*conn.local, *conn.remote)
                if self._conns.get(key) is conn:
                    del self._conns[key]
                if conn.listener is not None:
                    conn.listener._progress(conn)
        return out

    # -------------------------------------------------------------- timers

    def _schedule(self, conn: Connection) -> None:
        due = conn.get_timer()
        if due is not None and due != conn.timer_scheduled:
            self._timer_seq += 1
            heapq.heappush(self._timers, (due, self._timer_seq, conn))
        conn.timer_scheduled = due

    def _live(self, due: float, conn: Connection) -> bool:
        return conn.timer_scheduled == due and \
            self._conns.get((*conn.local, *conn.remote)) is conn

    def get_timer(self) -> float | None:
        for conn in self._dirty:
            self._schedule(conn)
        timers = self._timers
        while timers and not self._live(timers[0][0], timers[0][2]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> list[Connection]:
        """Fire every deadline that has come; returns the connections whose timers ran."""
        fired: list[Connection] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, conn = heapq.heappop(timers)
            if not self._live(due, conn):
                continue
            conn.timer_scheduled = None
            conn.handle_timer(now)
            self._dirty[conn] = None
            fired.append(conn)
            if conn.listener is not None:
                conn.listener._progress(conn)
        return fired

    def _add(self, conn: Connection) -> None:
        self._conns[(*conn.local, *conn.remote)] = conn
        conn.on_activity = self._touched
        self._dirty[conn] = None

    def _touched(self, conn: Connection) -> None:
        self._dirty[conn] = None
