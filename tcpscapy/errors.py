"""The exceptions of tcpscapy's blocking API, each with the exit code the CLI uses.

Every message is one line meant for a person. Where Python has a matching
built-in (ConnectionRefusedError, TimeoutError, ...), ours subclasses it too,
so code written for sockets keeps working.

    exit code  meaning               exceptions
    0          success               -
    1          any other error       TcpscapyError, ConnectionClosed
    2          usage: bad input      UsageError, BadAddress, BadOption, OutsideLab
    3          connection refused    ConnectionRefused
    4          needs root            NeedsRoot (and any tcpscapy.netns.NeedsRoot)
    5          timed out             TimedOut, ConnectTimeout
    6          connection reset      ConnectionReset
    7          unknown host          UnknownHost
    8          host unreachable      HostUnreachable (no route, no ARP answer)
    9          address in use        AddressInUse
    10         ICMP unreachable      DestinationUnreachable (port/protocol unreachable or
                                     administratively prohibited, in answer to our SYN)
"""

from __future__ import annotations

from tcpscapy import netns

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "AddressInUse",
    "BadAddress",
    "BadOption",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionReset",
    "DestinationUnreachable",
    "HostUnreachable",
    "NeedsRoot",
    "OutsideLab",
    "TcpscapyError",
    "TimedOut",
    "UnknownHost",
    "UsageError",
    "exit_code",
]

EXIT_OK = 0
EXIT_ERROR = 1


class TcpscapyError(Exception):
    """Base of every error the API raises on purpose."""

    exit_code = EXIT_ERROR


class UsageError(TcpscapyError, ValueError):
    """The caller passed something that cannot work (bad option, bad address)."""

    exit_code = 2


class BadAddress(UsageError):
    """Not a usable address or port (one line naming what is wrong)."""


class BadOption(UsageError):
    """An unknown connection option, or a value out of range."""


class OutsideLab(UsageError):
    """A lab address aimed at from outside the lab: it would go to the real network."""

    def __init__(self, message: str, ip: str = "", subnet: str = "") -> None:
        super().__init__(message)
        self.ip, self.subnet = ip, subnet


class ConnectionRefused(TcpscapyError, ConnectionRefusedError):
    """The peer answered our SYN with RST: nothing listens on that port."""

    exit_code = 3


class NeedsRoot(TcpscapyError, netns.NeedsRoot):
    """Raw sockets, the RST guard and namespaces need root."""

    exit_code = 4


class TimedOut(TcpscapyError, TimeoutError):
    """A blocking call's timeout expired, or the engine gave up on a silent peer."""

    exit_code = 5


class ConnectTimeout(TimedOut):
    """No answer to the SYN: retransmissions exhausted, or connect()'s timeout expired."""


class ConnectionReset(TcpscapyError, ConnectionResetError):
    """The peer reset an established connection."""

    exit_code = 6


class UnknownHost(TcpscapyError):
    """The host name does not resolve (to an address of the requested family)."""

    exit_code = 7


class HostUnreachable(TcpscapyError, OSError):
    """No route to the host, or no ARP answer from the next hop."""

    exit_code = 8


class AddressInUse(TcpscapyError, OSError):
    """The local port is taken (by a kernel socket, or by another of our connections)."""

    exit_code = 9


class DestinationUnreachable(TcpscapyError, ConnectionError):
    """A hard ICMP error answered our SYN: port or protocol unreachable, or
    administratively prohibited (a firewall's reject). Soft ones (host or net
    unreachable, time exceeded) never end a connection; they are named in the
    time-out message instead."""

    exit_code = 10


class ConnectionClosed(TcpscapyError, BrokenPipeError):
    """The operation needs a connection that is still open in that direction."""

    exit_code = EXIT_ERROR


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for any exception (ours, a NeedsRoot from elsewhere, or other)."""
    if isinstance(exc, TcpscapyError):
        return exc.exit_code
    if isinstance(exc, netns.NeedsRoot):
        return NeedsRoot.exit_code
    return EXIT_ERROR
