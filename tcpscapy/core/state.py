"""The eleven connection states of RFC 9293 §3.3.2."""

from enum import Enum


class State(Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    # Members are singletons compared by identity; Enum's own __hash__ hashes the name in
    # Python code, and states are looked up in sets on every segment.
    __hash__ = object.__hash__

    @property
    def synchronized(self) -> bool:
        """True once both ISNs are known (RFC 9293's 'synchronized states')."""
        return self not in _UNSYNCHRONIZED

    @property
    def can_send(self) -> bool:
        """Our side may still queue new data."""
        return self in (State.ESTABLISHED, State.CLOSE_WAIT)

    @property
    def can_receive(self) -> bool:
        """The peer may still send us new data (no FIN seen yet)."""
        return self in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2)


_UNSYNCHRONIZED = frozenset({State.CLOSED, State.LISTEN, State.SYN_SENT, State.SYN_RECEIVED})
