"""One TCP connection: the transmission control block and its state machine.

Inputs are segments (`receive`), application calls (`connect`, `send`,
`shutdown`, `close`, `abort`, `data_consumed`) and time (`handle_timer`);
outputs are segments (`segments_to_send`), events (`next_event`) and the
earliest deadline (`get_timer`). `receive` follows RFC 9293 §3.10.7 step by
step; the step numbers in comments are the RFC's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from . import events as ev
from . import tfo
from .config import Config
from .errors import LocalProtocolError
from .family import default_mss
from .isn import initial_sequence_number, timestamp_offset
from .options import NO_OPTIONS, Options
from .path import PathMixin, PathState
from .rcvbuf import RecvBuffer
from .reassembly import Reassembly
from .rtt import RttEstimator
from .segment import ACK, CE, CWR, ECE, FIN, RST, SYN, URG, Segment
from .sendbuf import SendBuffer
from .sending import Recovery, SenderMixin
from .seq import MASK, between, in_window, seq_add, seq_diff, seq_ge, seq_gt, seq_le, seq_lt
from .state import State
from .urgent import UrgentPointer

if TYPE_CHECKING:
    from .stack import Listener

_UNPREDICTED = SYN | FIN | RST | URG | ACK  # of these, only ACK may be set on the fast path
_PREDICTABLE = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT})
DEFAULT_MSS = 536  # RFC 9293 MUST-15 (IPv4); family.default_mss chooses per peer
MAX_WSCALE = 14  # RFC 7323 §2.3
SYNCHRONIZED_SENDING = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)


P = ParamSpec("P")
R = TypeVar("R")


def _application_call(method: Callable[Concatenate[Connection, P], R]
                      ) -> Callable[Concatenate[Connection, P], R]:
    """Tell the owner (the stack) that the application changed something."""
    @functools.wraps(method)
    def call(self: Connection, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        finally:
            if self.on_activity is not None:
                self.on_activity(self)
    return call


class Connection(SenderMixin, PathMixin):
    """A TCP connection between `local` and `remote` (each (ip, port))."""

    # Slots: a connection costs about half the memory of one with a __dict__, which
    # matters with ten thousand of them; every attribute is set in __init__.
    __slots__ = ("_ack_due", "_ack_now", "_app_closed", "_challenge_count", "_challenge_window",
                 "_ece_echo", "_events", "_fin_queued", "_fin_rcvd_seq", "_fin_seq",
                 "_last_ack_sent", "_now", "_out", "_quickacks", "_rcvbuf", "_reassembly",
                 "_retries", "_rto_due", "_rtt_sent_at", "_rtt_seq", "_send_blocked", "_sendbuf",
                 "_state", "_time_wait_due", "_ts_offset", "_unacked_bytes", "_unread",
                 "close_cause", "close_reason", "config", "ecn_ok", "irs", "iss", "listener",
                 "local", "max_snd_wnd", "on_activity", "passive", "path", "rcv_adv", "rcv_nxt",
                 "rcv_wscale", "remote", "rtt", "sack_ok", "snd_mss", "snd_nxt", "snd_una",
                 "snd_wl1", "snd_wl2", "snd_wnd", "snd_wscale", "tfo", "timer_scheduled", "ts_ok",
                 "ts_recent", "urgent", "ws_ok")

    def __init__(self, local: tuple[str, int], remote: tuple[str, int],
                 config: Config | None = None) -> None:
        self.local = local
        self.remote = remote
        self.config = cfg = config or Config()
        self._state = State.CLOSED
        self._events: list[ev.Event] = []  # few at a time; a list is 14x smaller than a deque
        self._out: list[Segment] = []
        self.passive = False  # opened from LISTEN (matters for RST in SYN-RECEIVED)
        self.listener: Listener | None = None  # the listener that spawned us, until accepted
        # The stack's bookkeeping: told of application calls; the deadline it has queued.
        self.on_activity: Callable[[Connection], None] | None = None
        self.timer_scheduled: float | None = None
        self.close_reason = ""
        self.close_cause = ""  # one word, as in events.Closed
        # Send sequence space (RFC 9293 §3.3.1).
        self.iss = 0
        self.snd_una = self.snd_nxt = 0
        self.snd_wnd = self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_mss = default_mss(remote[0])
        self.snd_wscale = 0
        self._sendbuf = SendBuffer(0, cfg.send_buffer)
        self._fin_queued = False
        self._fin_seq: int | None = None  # set once the FIN's place is fixed
        self._send_blocked = False  # the app found the buffer full: tell it when there is room
        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0  # right edge of the window we last advertised
        self.rcv_wscale = 0
        self._unread = 0  # delivered to the app, not yet consumed: still occupies the window
        self._reassembly = Reassembly()
        self._fin_rcvd_seq: int | None = None  # a FIN seen ahead of a hole
        self._app_closed = False  # close(): data that still arrives is discarded
        # Negotiated options.
        self.ws_ok = False
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self._ts_offset = 0
        self._last_ack_sent = 0
        # Acknowledgement policy.
        self._ack_now = False
        self._ack_due: float | None = None
        self._unacked_bytes = 0
        # Retransmission and congestion control (RFC 6298, RFC 5681).
        self.rtt = RttEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self._rto_due: float | None = None
        self._retries = 0
        self._rtt_seq: int | None = None  # Karn: the segment being timed, if not retransmitted
        self._rtt_sent_at = 0.0
        self.ecn_ok = False  # RFC 3168, agreed in the handshake
        self._ece_echo = False  # a CE mark arrived: ECE on our ACKs until the peer's CWR
        self._quickacks = 0  # ACKs still to send at once (Linux's quickack mode)
        self._rcvbuf = RecvBuffer(cfg.recv_buffer, cfg.recv_buffer_max)
        self._init_sender()
        # TIME-WAIT and challenge-ACK throttling.
        self._time_wait_due: float | None = None
        self._challenge_window = -1
        self._challenge_count = 0
        self._now = 0.0  # the latest `now` handed in, for timestamps on segments we build
        self.tfo: tfo.FastOpen | None = None  # the Fast Open exchange, if one was tried
        self.urgent = UrgentPointer()  # SND.UP / RCV.UP (urgent.py)
        self.path: PathState | None = None  # ICMP and path MTU facts (path.py), once any

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, new: State) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        self._events.append(ev.StateChanged(old, new))
        if new is State.ESTABLISHED and old in (State.SYN_SENT, State.SYN_RECEIVED):
            self._events.append(ev.Connected())

    def _close(self, reason: str, cause: str = "closed") -> None:
        if self._state is State.CLOSED:
            return
        self._set_state(State.CLOSED)
        if cause == "timeout" and self.path is not None and self.path.last_icmp:
            reason += f" (last ICMP: {self.path.last_icmp})"
        self.close_reason = reason
        self.close_cause = cause
        self._rto_due = self._ack_due = self._time_wait_due = None
        self._persist_due = self._keepalive_due = self._stalled_since = None
        self._events.append(ev.Closed(reason, cause))

    def next_event(self) -> ev.Event | None:
        return self._events.pop(0) if self._events else None

    @property
    def tfo_pending(self) -> bool:
        """A Fast Open connection still in SYN-RECEIVED (counts against tfo_max_pending)."""
        return self.tfo is not None and self.tfo.accepted and self._state is State.SYN_RECEIVED

    @property
    def send_space(self) -> int:
        """Bytes the application may still queue with send()."""
        return self._sendbuf.space if self._state is not State.CLOSED else 0

    # ------------------------------------------------------- application calls

    def connect(self, now: float, *, data: bytes = b"", tfo_cookie: bytes | None = None,
                tfo_experimental: bool = False, tfo_mss: int | None = None) -> None:
        """Active open: send a SYN (RFC 9293 §3.10.1). `data` is queued for after it.

        Fast Open (RFC 7413): `tfo_cookie=b""` asks the server for a cookie; a cached
        cookie rides in the SYN with the first bytes of `data`, as many as
        tfo.syn_data_room allows for `tfo_mss` (the server's MSS, cached with the
        cookie; 536 when unknown). `tfo_experimental` uses option kind 254. The SYN-ACK
        brings TfoCookieReceived or TfoIgnored; unacknowledged SYN data is sent again
        after the handshake, and a retransmitted SYN carries neither data nor cookie.
        """
        if self._state is not State.CLOSED or self.close_reason:
            raise LocalProtocolError(f"connect() needs a fresh connection, not {self._state}")
        if tfo_cookie and not tfo.cookie_length_ok(len(tfo_cookie)):
            raise LocalProtocolError(f"a TFO cookie has an even length from {tfo.COOKIE_MIN} "
                                     f"to {tfo.COOKIE_MAX} bytes, not {len(tfo_cookie)}")
        self._now = now
        self._choose_isn(now)
        self.rcv_wscale = self._our_wscale()
        if data:
            self._sendbuf.append(data)
        if tfo_cookie is not None:
            server_mss = tfo_mss or default_mss(self.remote[0])
            room = tfo.syn_data_room(server_mss, self.config.mss) if tfo_cookie else 0
            self.tfo = tfo.FastOpen(tfo_experimental, cookie_sent=tfo_cookie,
                                    syn_data=min(len(self._sendbuf), room))
        self._set_state(State.SYN_SENT)
        self._send_syn(now)

    def accept_syn(self, syn: Segment, now: float, *, tfo_allowed: bool = True) -> None:
        """Passive open from LISTEN: take the peer's SYN and answer with SYN-ACK.

        With Config.tfo_server, a Fast Open SYN is answered as RFC 7413 says (see
        _tfo_accept_syn). The listener passes `tfo_allowed=False` when it has
        Config.tfo_max_pending Fast Open connections in SYN-RECEIVED: the SYN is
        then treated as if TFO were off, as Linux does.
        """
        if self._state is not State.CLOSED:
            raise LocalProtocolError("accept_syn() needs a fresh connection")
        self._now = now
        self.passive = True
        self._choose_isn(now)
        self.irs = syn.seq
        self.rcv_nxt = self.rcv_adv = seq_add(syn.seq, 1)  # data in a plain SYN: not accepted
        self._negotiate(syn.options)
        self.ecn_ok = self.config.ecn != "off" and syn.flags & (ECE | CWR) == ECE | CWR
        self._take_window(syn, scaled=False)
        self._set_state(State.SYN_RECEIVED)
        if tfo_allowed:
            self._tfo_accept_syn(syn)
        self._send_syn(now)

    def accept_cookie_ack(self, ack: Segment, now: float, *, iss: int, mss: int,
                          peer_wscale: int | None, sack: bool, ecn: bool = False) -> None:
        """Passive open rebuilt from a valid SYN cookie, as if our SYN-ACK had gone out.

        `iss` is the cookie; `mss`, `peer_wscale` and `sack` are what it encoded.
        The ACK itself (maybe with data) is then processed as in SYN-RECEIVED.
        """
        if self._state is not State.CLOSED:
            raise LocalProtocolError("accept_cookie_ack() needs a fresh connection")
        cfg = self.config
        self._now = now
        self.passive = True
        self.iss = self.snd_una = iss
        self.snd_nxt = seq_add(iss, 1)
        self._sendbuf.start = self.snd_nxt
        self._ts_offset = timestamp_offset(self.local, self.remote, cfg.secret)
        self.irs = seq_add(ack.seq, -1)
        self.rcv_nxt = ack.seq
        self.rcv_adv = seq_add(ack.seq, min(cfg.recv_buffer, 0xFFFF))  # the SYN-ACK's window
        self.snd_mss = max(min(mss, cfg.mss), 64)
        self.ws_ok = cfg.wscale is not None and peer_wscale is not None
        self.snd_wscale = min(peer_wscale or 0, MAX_WSCALE) if self.ws_ok else 0
        self.rcv_wscale = self._our_wscale() if self.ws_ok else 0
        self.sack_ok = cfg.sack and sack
        self.ecn_ok = cfg.ecn != "off" and ecn
        ts = ack.options.timestamps
        self.ts_ok = cfg.timestamps and ts is not None
        if ts is not None:
            self.ts_recent = ts[0]
        self._set_state(State.SYN_RECEIVED)
        self.receive(ack, now)

    @_application_call
    def send(self, data: bytes, *, urgent: bool = False) -> int:
        """Queue data; returns how many bytes fit in the send buffer (maybe 0).

        `urgent`: the bytes taken are urgent data (URG, MUST-30); the urgent pointer
        marks their end until the peer has acknowledged it.
        """
        if self._fin_queued or self._state in (State.CLOSED, State.LISTEN) or \
                not (self._state.can_send or self._state in (State.SYN_SENT, State.SYN_RECEIVED)):
            raise LocalProtocolError(f"cannot send in {self._state}"
                                     + (" after shutdown" if self._fin_queued else ""))
        taken = self._sendbuf.append(data)
        if taken < len(data):
            self._send_blocked = True
        if urgent and taken:
            self.urgent.mark(self._sendbuf.end)
        return taken

    @_application_call
    def shutdown(self) -> None:
        """Half-close: FIN after the queued data; we can still receive (RFC 9293 CLOSE)."""
        if self._state in (State.CLOSED, State.LISTEN):
            raise LocalProtocolError(f"cannot shut down a connection in {self._state}")
        if self._fin_queued:
            return
        self._fin_queued = True
        if self._state is State.ESTABLISHED:
            self._set_state(State.FIN_WAIT_1)
        elif self._state is State.CLOSE_WAIT:
            self._set_state(State.LAST_ACK)
        # SYN-SENT / SYN-RECEIVED: the FIN waits for ESTABLISHED (see _enter_established).

    @_application_call
    def close(self) -> None:
        """Full close: shutdown, and discard whatever data still arrives."""
        if self._state is State.SYN_SENT:  # RFC 9293 §3.10.4: delete the TCB
            self._close("closed by the application before the handshake completed", "aborted")
            return
        if self._state is State.CLOSED:
            return
        self._app_closed = True
        self.shutdown()

    @_application_call
    def abort(self) -> None:
        """Send RST if the peer knows us, and drop the connection (RFC 9293 ABORT)."""
        if self._state in (State.SYN_RECEIVED, *SYNCHRONIZED_SENDING, State.FIN_WAIT_2):
            self._out.append(self._make(RST, self.snd_nxt, ack=False))
        self._close("aborted by the application", "aborted")

    @_application_call
    def data_consumed(self, nbytes: int) -> None:
        """The application read `nbytes` of delivered data: reopen that much window."""
        before = self._window_to_advertise()
        self._unread = max(self._unread - nbytes, 0)
        self._rcvbuf.on_read(nbytes, self._now, self.rtt.srtt)
        # Tell the peer once the window grew enough to matter (MUST-39), or reopened.
        grown = self._window_to_advertise() - before
        worth_telling = min(self.config.recv_buffer // 2, self._rcv_mss())
        # After the peer's FIN it sends nothing more: a window update would only be a
        # stray ACK (one a closed kernel peer may even take for a valid SYN cookie).
        if grown > 0 and (before == 0 or grown >= worth_telling) and self._state.can_receive:
            self._ack_now = True

    # ---------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        if self._state is State.CLOSED:
            return None
        soonest = self._sender_deadline()
        for due in (self._ack_due, self._time_wait_due):
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return soonest

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._time_wait_due is not None and now >= self._time_wait_due:
            self._close("TIME-WAIT ended")
            return
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_now = True
            self._ack_due = None
        self._sender_timers(now)

    # ------------------------------------------------------------- receiving

    def receive(self, seg: Segment, now: float) -> None:
        """Process one inbound segment for this connection (RFC 9293 §3.10.7)."""
        self._now = now
        state = self._state
        if state is State.CLOSED:
            return  # the stack answers segments for no connection
        self._heard_from_peer(now)
        if self.ecn_ok and (seg.ecn == CE or seg.flags & CWR):
            self._ecn_mark(seg)
        if state is State.SYN_SENT:
            self._receive_in_syn_sent(seg, now)
            return
        if state in _PREDICTABLE and self._predicted(seg, now):
            return
        if state is State.SYN_RECEIVED and seg.flags & (SYN | ACK | RST) == SYN \
                and seg.seq == self.irs:
            self._send_syn(now, retransmission=True)  # the peer did not hear our SYN-ACK
            return
        self._receive_synchronized(seg, now)

    def _predicted(self, seg: Segment, now: float) -> bool:
        """Header prediction (Van Jacobson): the common in-order segment of a bulk transfer.

        A connection in the middle of a transfer mostly sees the next data segment
        or an ACK for new data, with nothing unusual about it. Those are handled here with the
        same effect as the full path below; anything else returns False and takes
        the full path: control flags, out-of-order or out-of-window data, SACK
        blocks, loss recovery, duplicate or old ACKs, PAWS, a pending hole.
        """
        if seg.flags & _UNPREDICTED != ACK or seg.seq != self.rcv_nxt or self._reassembly \
                or self.recovery is not Recovery.NONE or self._fin_rcvd_seq is not None:
            return False
        opts = seg.options
        if opts.sack_blocks:
            return False
        if self.ts_ok:
            ts = opts.timestamps
            if ts is None or ts[0] - self.ts_recent & MASK >= 1 << 31:  # PAWS: older
                return False
        ack, payload = seg.ack, seg.payload
        advance = (ack - self.snd_una) & MASK
        if advance > (self.snd_nxt - self.snd_una) & MASK:
            return False  # acks something we never sent
        if self._fin_seq is not None and seq_gt(ack, self._fin_seq):
            return False  # acks our FIN: a state change
        if payload:
            if len(payload) > (self.rcv_adv - self.rcv_nxt) & MASK or not self._state.can_receive:
                return False  # beyond the window we offered, or after the peer's FIN
        elif not advance:
            return False  # a duplicate ACK or a window update: the full path counts it
        if self.ts_ok and seq_le(seg.seq, self._last_ack_sent):
            self.ts_recent = opts.timestamps[0]  # type: ignore[index]  # RFC 7323 §4.3
        if advance:
            self._ack_advance(seg, now)
        if seq_lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq
                                              and seq_le(self.snd_wl2, ack)):
            self._take_window(seg, scaled=True)
        if payload:
            self.rcv_nxt = (self.rcv_nxt + len(payload)) & MASK
            self._deliver(payload)
            self._schedule_ack(len(payload), now)
        return True

    def _receive_in_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        # first: an ACK for something we never sent is answered <SEQ=SEG.ACK><CTL=RST>.
        if flags & ACK and (seq_le(seg.ack, self.iss) or seq_gt(seg.ack, self.snd_nxt)):
            if not flags & RST:
                self._out.append(self._make(RST, seg.ack, ack=False))
            return
        if flags & RST:  # second
            if flags & ACK:  # RFC 5961 §3.2: only an RST that acks our SYN counts
                self._events.append(ev.Reset(refused=True))
                self._close("connection refused: the peer answered the SYN with RST", "refused")
            return
        if not flags & SYN:  # fifth: neither SYN nor RST
            return
        # fourth: SYN (with or without an acceptable ACK).
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seq_add(seg.seq, 1)
        # The window our SYN offered holds from here: data right behind the SYN-ACK (a
        # Fast Open server's answer) arrives before our ACK re-advertises it.
        self.rcv_adv = seq_add(self.rcv_nxt, min(self._window_to_advertise(), 0xFFFF))
        self._negotiate(seg.options)
        if flags & ACK:
            self.ecn_ok = self.config.ecn == "on" and flags & (ECE | CWR) == ECE
            self._take_window(seg, scaled=False)
            self._tfo_on_synack(seg)
            self._ack_advance(seg, now)
            self._enter_established()
            self._ack_now = True
            if seg.payload or flags & FIN:  # continue at the sixth step
                self._process_text_and_fin(seg.replace(seq=self.rcv_nxt, flags=flags & ~SYN), now)
        else:  # simultaneous open (MUST-10): answer with SYN-ACK on our ISN
            self._take_window(seg, scaled=False)
            self.snd_nxt = seq_add(self.iss, 1)  # Fast Open data in our SYN goes later
            self._set_state(State.SYN_RECEIVED)
            self._retries = 0
            self._send_syn(now, retransmission=True)

    def _receive_synchronized(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        # Simultaneous open: the peer's SYN-ACK completes our SYN-RECEIVED (MUST-11).
        simultaneous_synack = (self._state is State.SYN_RECEIVED and not self.passive
                               and flags & (SYN | ACK | RST) == SYN | ACK
                               and seq_add(seg.seq, 1) == self.rcv_nxt and seg.ack == self.snd_nxt)
        if simultaneous_synack:
            seg = seg.replace(seq=self.rcv_nxt, flags=flags & ~SYN)
            flags = seg.flags
        # PAWS (RFC 7323 §5): an old timestamp marks an old duplicate.
        ts = seg.options.timestamps if self.ts_ok else None
        if ts is not None and not flags & RST and seq_lt(ts[0], self.ts_recent):
            self._send_ack_now()
            return
        # first: sequence acceptability, then trim to the window.
        original_seq = seg.seq
        seg = self._trim_to_window(seg)
        if seg is None:
            if not flags & RST:
                if self._state is State.TIME_WAIT and flags & FIN:
                    self._enter_time_wait(now)  # the peer's FIN again: restart 2 MSL
                self._send_ack_now()
            return
        # second: RST, RFC 5961 §3.2: only an exact match resets; in-window gets a challenge ACK.
        if flags & RST:
            if original_seq != self.rcv_nxt:  # the sequence number as sent, not as trimmed
                self._challenge_ack(now)
            elif self._state is State.SYN_RECEIVED and self.passive:
                self._close("reset by the peer during the handshake", "reset")  # back to LISTEN
            elif self._state is State.SYN_RECEIVED:
                self._events.append(ev.Reset(refused=True))
                self._close("connection refused: the peer reset the simultaneous open", "refused")
            else:
                self._on_reset()
            return
        # fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 §4).
        if flags & SYN:
            self._challenge_ack(now)
            return
        # fifth: the ACK field.
        if not flags & ACK:
            return
        if not self._process_ack(seg, now):
            return
        # RFC 7323 §4.3, only now that the ACK is acceptable (as Linux since 2013): a forged
        # in-window segment with a bad ACK must not move TS.Recent and poison PAWS.
        if ts is not None and seq_ge(ts[0], self.ts_recent) \
                and seq_le(original_seq, self._last_ack_sent):
            self.ts_recent = ts[0]
        if self._state is State.CLOSED:
            return
        # sixth: URG (MUST-31): tell the application where urgent data ends; seventh
        # and eighth: text, FIN.
        if flags & URG and self._state.can_receive:
            up = self.urgent.received(original_seq, seg.urgent)
            if up is not None:
                self._events.append(ev.UrgentData(seq_diff(up, seq_add(self.irs, 1)) & MASK))
        self._process_text_and_fin(seg, now)

    def _trim_to_window(self, seg: Segment) -> Segment | None:
        """RFC 9293's acceptability table; returns the part inside the window, or None."""
        wnd = max(seq_diff(self.rcv_adv, self.rcv_nxt), 0)
        seg_len = seg.seg_len
        seq = seg.seq
        if seg_len == 0:
            ok = seq == self.rcv_nxt if wnd == 0 else in_window(seq, self.rcv_nxt, wnd)
            return seg if ok else None
        last = seq_add(seq, seg_len - 1)
        if wnd == 0:
            if seq == self.rcv_nxt and not seg.payload and not seg.flags & SYN:
                return seg  # a bare FIN at RCV.NXT needs no room (Linux takes it too)
            # A zero window still takes ACKs and RSTs at RCV.NXT (§3.10.7.4, note on RCV.WND).
            if seq == self.rcv_nxt or (seq_lt(seq, self.rcv_nxt) and seq_ge(last, self.rcv_nxt)):
                self._ack_now = True
                return seg.replace(seq=self.rcv_nxt, payload=b"", flags=seg.flags & ~(SYN | FIN))
            return None
        if not (in_window(seq, self.rcv_nxt, wnd) or in_window(last, self.rcv_nxt, wnd)):
            return None
        flags, payload = seg.flags, seg.payload
        head = seq_diff(self.rcv_nxt, seq)
        if head > 0:  # drop what we already have
            if flags & SYN:
                flags &= ~SYN
                head -= 1
                seq = seq_add(seq, 1)
            payload = payload[head:]
            seq = seq_add(seq, head)
        room = seq_diff(seq_add(self.rcv_nxt, wnd), seq)
        if len(payload) + (1 if flags & FIN else 0) > room:  # beyond the right edge
            payload = payload[:room]
            flags &= ~FIN
            self._ack_now = True
        if seq == seg.seq and payload is seg.payload and flags == seg.flags:
            return seg
        return seg.replace(seq=seq, payload=payload, flags=flags)

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """Fifth step. Returns False when the segment must go no further."""
        ack = seg.ack
        if self._state is State.SYN_RECEIVED:
            if not (seq_lt(self.snd_una, ack) and seq_le(ack, self.snd_nxt)):
                self._out.append(self._make(RST, ack, ack=False))
                return False
            self._take_window(seg, scaled=True)
            self._enter_established()
        # RFC 5961 §5: ACKs far behind SND.UNA or beyond what we sent are dropped and
        # answered, within the challenge-ACK limit (§7, as Linux): a blind attacker must
        # not get one ACK out of us per forged segment.
        if seq_gt(ack, self.snd_nxt) or seq_lt(ack, seq_add(self.snd_una, -self.max_snd_wnd)):
            self._challenge_ack(now)
            return False
        self._on_ack(seg, now)
        if between(self.snd_una, ack, self.snd_nxt) and (
                seq_lt(self.snd_wl1, seg.seq)
                or (self.snd_wl1 == seg.seq and seq_le(self.snd_wl2, ack))):
            self._take_window(seg, scaled=True)
        fin_acked = self._fin_seq is not None and seq_gt(self.snd_una, self._fin_seq)
        state = self._state
        if fin_acked:
            if state is State.FIN_WAIT_1:
                self._set_state(State.FIN_WAIT_2)
            elif state is State.CLOSING:
                self._enter_time_wait(now)
                return False
            elif state is State.LAST_ACK:
                self._close("closed: our FIN was acknowledged")
                return False
        return True

    def _process_text_and_fin(self, seg: Segment, now: float) -> None:
        """Seventh and eighth steps: deliver data in order, then act on a FIN."""
        state = self._state
        if seg.payload and state.can_receive:
            if seg.seq == self.rcv_nxt:
                self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload))
                data = seg.payload
                if self._reassembly:
                    data += self._reassembly.pop_ready(self.rcv_nxt)
                    self.rcv_nxt = seq_add(seg.seq, len(data))
                    self._ack_now = True  # a hole was filled (RFC 5681 §4.2)
                self._deliver(data)
                self._schedule_ack(len(seg.payload), now)
            else:
                self._reassembly.add(self.rcv_nxt, seg.seq, seg.payload)
                self._quickacks = self.config.quickacks  # reordering: ACK at once for a while
                self._send_ack_now()  # out of order: one duplicate ACK each, at once (RFC 5681)
        if seg.flags & FIN and state.synchronized:
            fin_seq = seq_add(seg.seq, len(seg.payload))
            if fin_seq != self.rcv_nxt:
                self._fin_rcvd_seq = fin_seq  # wait for the hole before it to fill
                self._ack_now = True
                return
            self._on_fin(now)
        elif self._fin_rcvd_seq is not None and self._fin_rcvd_seq == self.rcv_nxt:
            self._on_fin(now)

    def _on_fin(self, now: float) -> None:
        self._fin_rcvd_seq = None
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._ack_now = True
        state = self._state
        if state in (State.SYN_RECEIVED, State.ESTABLISHED):
            self._set_state(State.CLOSE_WAIT)
        elif state is State.FIN_WAIT_1:
            self._set_state(State.CLOSING)  # our FIN is not acked yet (else we'd be in FW2)
        elif state is State.FIN_WAIT_2:
            self._enter_time_wait(now)
        elif state is State.TIME_WAIT:
            self._enter_time_wait(now)
            return
        else:
            return  # CLOSE-WAIT, CLOSING, LAST-ACK: a retransmitted FIN, already counted
        self._events.append(ev.PeerClosed())

    def _deliver(self, data: bytes) -> None:
        if self._app_closed:
            return  # the application has gone; the bytes are acknowledged and dropped
        self._unread += len(data)
        self._events.append(ev.DataReceived(data))

    def _on_reset(self) -> None:
        state = self._state
        if state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
            self._close("closed by RST from the peer", "reset")
        else:
            self._events.append(ev.Reset())
            self._close("connection reset by the peer", "reset")

    def _enter_established(self) -> None:
        self._retries = 0
        self._start_cc()
        self._quickacks = self.config.quickacks
        self._sendbuf.ack_to(self.snd_una)
        self._set_state(State.ESTABLISHED)
        self._heard_from_peer(self._now)  # arms keepalive
        if self._fin_queued:  # shutdown() was called during the handshake
            self._set_state(State.FIN_WAIT_1)

    def _enter_time_wait(self, now: float) -> None:
        self._set_state(State.TIME_WAIT)
        self._rto_due = self._persist_due = self._keepalive_due = self._stalled_since = None
        self._ack_due = None  # the FIN is acknowledged at once; no delayed ACK may follow
        self._time_wait_due = now + 2 * self.config.msl

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 §7: an ACK telling our RCV.NXT, at most `challenge_ack_limit` a second."""
        second = int(now)
        if second != self._challenge_window:
            self._challenge_window, self._challenge_count = second, 0
        if self._challenge_count < self.config.challenge_ack_limit:
            self._challenge_count += 1
            self._send_ack_now()

    # -------------------------------------------------------------- options

    def _our_wscale(self) -> int:
        ws = self.config.wscale
        return min(ws, MAX_WSCALE) if ws is not None else 0

    def _negotiate(self, opts: Options) -> None:
        """Settle the options from the peer's SYN: each holds only if both sides sent it."""
        cfg = self.config
        peer_mss = opts.mss if opts.mss is not None else default_mss(self.remote[0])
        self.snd_mss = max(min(peer_mss, cfg.mss), 64)
        self.ws_ok = cfg.wscale is not None and opts.wscale is not None
        self.snd_wscale = min(opts.wscale or 0, MAX_WSCALE) if self.ws_ok else 0
        self.rcv_wscale = self._our_wscale() if self.ws_ok else 0
        self.sack_ok = cfg.sack and opts.sack_permitted
        self.ts_ok = cfg.timestamps and opts.timestamps is not None
        if self.ts_ok and opts.timestamps is not None:
            self.ts_recent = opts.timestamps[0]
        self._path_clamp()

    def _syn_options(self) -> Options:
        """A SYN offers everything configured; a SYN-ACK only what the peer's SYN agreed."""
        cfg = self.config
        tsval = self._ts_clock(self._now)
        if self._state is State.SYN_SENT:
            return Options(mss=cfg.mss, wscale=cfg.wscale and self._our_wscale(),
                           sack_permitted=cfg.sack,
                           timestamps=(tsval, 0) if cfg.timestamps else None)
        return Options(mss=cfg.mss, wscale=self.rcv_wscale if self.ws_ok else None,
                       sack_permitted=self.sack_ok,
                       timestamps=(tsval, self.ts_recent) if self.ts_ok else None)

    # ------------------------------------------------------------ fast open

    def _tfo_accept_syn(self, syn: Segment) -> None:
        """Server: answer a Fast Open SYN (RFC 7413 §4.2.2), deciding as tfo.answer_syn.

        An accepted SYN's data goes to the application now, in SYN-RECEIVED, and the
        SYN-ACK acknowledges it; we may also send before the handshake completes.
        """
        fo = tfo.answer_syn(self.config, self.remote[0], self.local[0], syn.options,
                            bool(syn.payload))
        self.tfo = fo
        if fo is None or not fo.accepted:
            return
        data = syn.payload[: self.config.recv_buffer]
        fo.syn_data = len(data)
        self.rcv_nxt = seq_add(self.rcv_nxt, len(data))
        self._start_cc()
        if data:
            self._deliver(data)

    def _tfo_on_synack(self, seg: Segment) -> None:
        """Client: the SYN-ACK's answer to our Fast Open attempt, as events."""
        fo = self.tfo
        if fo is None:
            return  # an unsolicited cookie is ignored (Linux)
        self.snd_nxt = seg.ack  # SYN data it did not acknowledge is sent after the handshake
        mss = seg.options.mss if seg.options.mss is not None else default_mss(seg.src)
        self._events.extend(fo.on_synack(seg.options, seq_diff(seg.ack, seq_add(self.iss, 1)),
                                         mss, syn_retransmitted=self._retries > 0))

    # ------------------------------------------------------------- sending

    def _choose_isn(self, now: float) -> None:
        secret = self.config.secret
        self.iss = initial_sequence_number(now, self.local, self.remote, secret)
        self.snd_una = self.iss
        self.snd_nxt = seq_add(self.iss, 1)
        self._sendbuf.start = seq_add(self.iss, 1)
        self._ts_offset = timestamp_offset(self.local, self.remote, secret)

    def _ts_clock(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & MASK

    def _send_syn(self, now: float, *, retransmission: bool = False) -> None:
        """(Re)send our SYN or SYN-ACK.

        Fast Open: the client's first SYN carries the cookie (or a request) and data;
        its retransmissions carry neither, as Linux's do, but SND.NXT stays after that
        data so that a SYN-ACK acknowledging it is still acceptable. A SYN-ACK always
        carries the cookie the server chose to send, if any.
        """
        flags = SYN | ACK if self._state is State.SYN_RECEIVED else SYN
        if flags & ACK:
            flags |= ECE if self.ecn_ok else 0  # RFC 3168 §6.1.1: ECN-setup SYN-ACK
        elif self.config.ecn == "on":
            flags |= ECE | CWR  # ECN-setup SYN
        options, payload = self._syn_options(), b""
        fo = self.tfo
        if fo is not None and fo.cookie_sent is not None and (self.passive or not retransmission):
            options = options.with_(tfo_cookie=fo.cookie_sent, tfo_experimental=fo.experimental)
            if not self.passive:
                payload = self._sendbuf.get(seq_add(self.iss, 1), fo.syn_data)
        self._out.append(self._make(flags, self.iss, ack=bool(flags & ACK), options=options,
                                    payload=payload))
        if not retransmission:
            self.snd_nxt = seq_add(self.iss, 1 + len(payload))
            self._rtt_seq, self._rtt_sent_at = self.iss, now
        self._rto_due = now + self.rtt.rto

    def _window_to_advertise(self) -> int:
        """Free receive buffer, kept from moving the right edge left (RFC 9293 §3.8.6.2.2)."""
        buffer = self._rcvbuf.size
        free = buffer - self._unread
        promised = seq_diff(self.rcv_adv, self.rcv_nxt)
        if promised < 0:
            promised = 0
        # Receiver-side SWS avoidance (MUST-39): move the right edge only by a useful amount.
        if free - promised < min(buffer // 2, self._rcv_mss()):
            return promised
        return free if free > 0 else 0

    def _rcv_mss(self) -> int:
        return self.config.mss

    def _make(self, flags: int, seq: int, *, ack: bool = True, payload: bytes = b"",
              options: Options | None = None, ecn: int = 0) -> Segment:
        """Build an outgoing segment; every segment that carries ACK updates our ACK state."""
        if ack:
            flags |= ACK
        window = 0
        if not flags & RST:
            wnd = self._window_to_advertise()
            if flags & SYN:  # never scaled: the right edge is what the field can say
                window = wnd = min(wnd, 0xFFFF)
            else:
                window = min(-(-wnd >> self.rcv_wscale), 0xFFFF)  # round up: never shrink
                wnd = window << self.rcv_wscale
            if flags & ACK:
                self.rcv_adv = seq_add(self.rcv_nxt, wnd)
        if options is None:
            options = NO_OPTIONS
            if self.ts_ok and not flags & RST:
                options = Options(timestamps=(self._ts_clock(self._now), self.ts_recent))
            if self.sack_ok and self._reassembly and flags & ACK:
                limit = 3 if self.ts_ok else 4
                options = options.with_(sack_blocks=self._reassembly.sack_blocks(limit))
        if flags & ACK:
            if self._ece_echo and not flags & SYN:
                flags |= ECE
            self._last_ack_sent = self.rcv_nxt
            self._ack_now = False
            self._ack_due = None
            self._unacked_bytes = 0
        urgent = self.urgent
        pointer = None if urgent.snd_up is None or flags & (SYN | RST) else \
            urgent.pointer_for(seq, self.snd_una)  # only in urgent mode: a hot path
        if pointer is not None:
            return Segment(self.local[0], self.remote[0], self.local[1], self.remote[1],
                           seq & MASK, self.rcv_nxt if flags & ACK else 0, flags | URG, window,
                           options, payload, pointer, ecn)
        return Segment(self.local[0], self.remote[0], self.local[1], self.remote[1],
                       seq & MASK, self.rcv_nxt if flags & ACK else 0, flags, window,
                       options, payload, 0, ecn)

    def _send_ack_now(self) -> None:
        self._out.append(self._make(ACK, self.snd_nxt))

    def _schedule_ack(self, nbytes: int, now: float) -> None:
        """Delayed ACK: at least every second full segment, and within `delayed_ack` s."""
        self._unacked_bytes += nbytes
        if self.config.delayed_ack <= 0 or self._quickacks > 0:
            self._quickacks -= self._quickacks > 0
            self._ack_now = True
        elif self._unacked_bytes >= 2 * self._rcv_mss():
            self._send_ack_now()  # now, not at the next flush: MUST-58 counts segments
        elif self._ack_due is None:
            self._ack_due = now + self.config.delayed_ack

    def segments_to_send(self, now: float) -> list[Segment]:
        """Everything due now: answers, data the windows allow, FIN, a pending ACK."""
        self._now = now
        if self.path is not None:
            self._path_tick(now)
        if self._state in SYNCHRONIZED_SENDING or self.tfo_pending:
            self._send_data(now)
        if self._ack_now and self._state not in (State.CLOSED, State.SYN_SENT, State.LISTEN):
            self._send_ack_now()
        out, self._out = self._out, []
        return out

    def _ecn_mark(self, seg: Segment) -> None:
        """RFC 3168 §6.1.3: CWR ends our ECN-Echo; CE (on the same segment too) starts it."""
        if seg.flags & CWR:
            self._ece_echo = False
        if seg.ecn == CE:
            self._ece_echo = True
            self._ack_now = True

    def _take_window(self, seg: Segment, *, scaled: bool) -> None:
        self.snd_wnd = seg.window << self.snd_wscale if scaled else seg.window
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack

    def __repr__(self) -> str:
        return (f"<Connection {self.local[0]}:{self.local[1]} -> "
                f"{self.remote[0]}:{self.remote[1]} {self._state}>")
