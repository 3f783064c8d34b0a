"""What a connection tells its application, as frozen values (h11 style)."""

from __future__ import annotations

from dataclasses import dataclass

from .state import State


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class StateChanged(Event):
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The handshake completed: the connection is ESTABLISHED (or later)."""


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed(Event):
    """The peer's FIN arrived: no more data will come (it may still read ours)."""


@dataclass(frozen=True, slots=True)
class SendSpace(Event):
    """Room appeared in the send buffer after it was full."""


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The connection was reset by the peer (or refused, when still in SYN-SENT)."""

    refused: bool = False


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The connection reached CLOSED; `reason` says why in words, `cause` in one word.

    Causes: "closed" (both FINs done, or TIME-WAIT over), "reset" (RST from the
    peer), "refused" (RST to our SYN), "timeout" (retransmissions exhausted),
    "user-timeout", "keepalive" (probes unanswered), "aborted" (our abort(), or
    close() before the handshake completed), "unreachable" (a hard ICMP error
    answered our SYN: port or protocol unreachable, administratively prohibited).
    """

    reason: str
    cause: str = "closed"


@dataclass(frozen=True, slots=True)
class TfoCookieReceived(Event):
    """Client: the SYN-ACK carried a Fast Open cookie (RFC 7413).

    Cache it per server address with the server's MSS (536 if it announced
    none) and the option format, and pass them to the next connect().
    """

    cookie: bytes
    mss: int
    experimental: bool = False


@dataclass(frozen=True, slots=True)
class TfoIgnored(Event):
    """Client: the server took no part in Fast Open this time (no cookie for our
    request, or our SYN's data unacknowledged without a new cookie); a cookie
    cache may stop trying it for a while (negative caching). The data still
    goes, after the handshake."""

    reason: str


@dataclass(frozen=True, slots=True)
class UrgentData(Event):
    """The peer sent urgent data (URG, RFC 9293 MUST-31/32): it ends before stream
    byte `end` (bytes from the start of the stream, modulo 2**32). The bytes
    themselves arrive in order with the rest (DataReceived), as with SO_OOBINLINE."""

    end: int


@dataclass(frozen=True, slots=True)
class IcmpReceived(Event):
    """An ICMP error about this connection passed the RFC 5927 checks.

    `text` says what and from whom ("ICMP host unreachable from 10.0.0.1");
    `kind` is "soft", "hard" or "pmtu" (see core/icmp.py). A soft error never
    ends the connection; a hard one ends it only in SYN-SENT (then Closed
    follows, cause "unreachable").
    """

    text: str
    kind: str


@dataclass(frozen=True, slots=True)
class PathMtuChanged(Event):
    """The send MSS changed for the path: ICMP "fragmentation needed", a black
    hole suspected after repeated timeouts, or a later try of the full size."""

    old_mss: int
    new_mss: int
    reason: str
