"""Everything tunable about a connection, and the secrets it is handed.

The core reads no clock and no RNG: the I/O layer fills `secret` from
os.urandom; tests pass a fixed one so every run replays bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .cc import CONTROLLERS

MSL_RFC = 120.0  # RFC 9293 §3.4.2: Maximum Segment Lifetime, two minutes


@dataclass(frozen=True, slots=True)
class Config:
    # What we offer in our SYN / SYN-ACK.
    mss: int = 1460
    wscale: int | None = 7  # None: do not offer window scaling
    sack: bool = True
    timestamps: bool = True
    recv_buffer: int = 1 << 18  # bytes we will buffer for the application (our window)
    send_buffer: int = 1 << 18  # bytes the application may queue ahead of the peer
    # Timers (seconds).
    msl: float = MSL_RFC  # TIME-WAIT lasts 2 * msl
    rto_initial: float = 1.0  # RFC 6298 (2.1)
    # 200 ms as Linux (TCP_RTO_MIN), not RFC 6298's 1 s SHOULD: with RACK-TLP an RTO is
    # the last resort, and a LAN path's RTT is far below it (README "Loss recovery").
    rto_min: float = 0.2
    rto_max: float = 120.0  # RFC 6298 (2.5): at least 60 s
    # 40 ms as Linux (TCP_ATO_MIN): well under the 200 ms RTO floor, so a lone segment's
    # delayed ACK never races the timer. 0 turns delayed ACKs off (MUST-40: under 0.5 s).
    delayed_ack: float = 0.04
    # Giving up. 7 SYN retransmissions with doubling RTO keep trying for 255 s,
    # past the three minutes of MUST-23; 15 for data is Linux's tcp_retries2.
    syn_retries: int = 7
    synack_retries: int = 5
    retries: int = 15
    user_timeout: float | None = None  # ends the connection if data stays unacked this long
    keepalive: float | None = None  # idle seconds before the first probe; None = off
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    # Behaviour.
    nagle: bool = True
    initial_window_segments: int = 10  # RFC 6928
    cc: str = "cubic"  # congestion control: "newreno", "cubic" (RFC 9438) or "bbr" (v1)
    # HyStart++ (RFC 9406) ends CUBIC's slow start when the RTT rises. Our RTT samples
    # include this process's own send-path and scheduling delay (milliseconds on a busy
    # machine), which it reads as a queue on a sub-millisecond LAN: README "Congestion".
    hystart: bool = True
    # ECN (RFC 3168), as Linux's net.ipv4.tcp_ecn: "off" (0), "on" (1: ask on active
    # opens, accept on passive ones) or "passive" (2, Linux's default: accept only).
    ecn: str = "passive"
    # Receive-buffer auto-tuning (Linux's DRS): the window grows from recv_buffer up to
    # this when the application reads at more than half a window per RTT; 0: fixed.
    recv_buffer_max: int = 6 << 20
    quickacks: int = 16  # ACK every segment for this many at the start and after reordering
    challenge_ack_limit: int = 1000  # per second, RFC 5961 §7
    rst_for_closed_port: bool = True  # answer segments for no connection with RST
    backlog: int = 128  # SYN-RECEIVED plus not-yet-accepted connections per listener
    # SYN cookies (RFC 4987, Linux layout): "never", "auto" (when the SYN queue is
    # full, as Linux tcp_syncookies=1) or "always" (as tcp_syncookies=2).
    syncookies: str = "auto"
    # TCP Fast Open (RFC 7413). Server: accept data in SYNs with a valid cookie;
    # `tfo_key` is the 16-byte cookie key (derived from `secret` when None),
    # `tfo_backup_key` the previous key still accepted after a rotation, and
    # `tfo_no_cookie` accepts data without a cookie (as Linux 0x200).
    tfo_server: bool = False
    tfo_key: bytes | None = field(default=None, repr=False)
    tfo_backup_key: bytes | None = field(default=None, repr=False)
    tfo_no_cookie: bool = False
    tfo_max_pending: int = 64  # TFO connections not yet fully established, per listener
    # Secrets, injected by the I/O layer (os.urandom) or fixed by tests.
    secret: bytes = field(default=bytes(16), repr=False)  # never printed

    def __post_init__(self) -> None:
        if self.cc not in CONTROLLERS:
            raise ValueError(f"unknown congestion control {self.cc!r} "
                             f"(choose from {', '.join(CONTROLLERS)})")
        if self.ecn not in ("off", "on", "passive"):
            raise ValueError(f"ecn must be 'off', 'on' or 'passive', not {self.ecn!r}")

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]
