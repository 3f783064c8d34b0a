"""Source-port reservation: hold a kernel TCP socket bound to (ip, port).

A bound socket that neither listens nor connects keeps the kernel from handing the port to
anyone else (no other bind, no ephemeral pick by connect()) and accepts no connections.
Without SO_REUSEADDR the bind also fails while a kernel TIME-WAIT socket holds the port,
which is exactly a port we must not use. The kernel still answers segments for the port
with RST; the RST guard (tcpscapy.io.guard) drops those.
"""

from __future__ import annotations

import errno
import socket
from types import TracebackType


class PortError(OSError):
    """A port could not be reserved; the message is one line."""


class PortInUse(PortError):
    """The port is already bound by some socket (possibly one in TIME-WAIT)."""


class PortReservation:
    """A bound, idle kernel TCP socket; `port` is the reserved port."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.ip, self.port = sock.getsockname()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Release the port (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "released" if self.closed else "held"
        return f"<PortReservation {self.ip}:{self.port} {state}>"


def reserve_port(ip: str, port: int = 0) -> PortReservation:
    """Reserve TCP `port` on local address `ip`; port 0 picks a free ephemeral port."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}: expected 0-65535")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((ip, port))
    except (socket.gaierror, TypeError, OverflowError):
        sock.close()
        raise ValueError(f"bad address {ip!r}: expected dotted IPv4") from None
    except OSError as e:
        sock.close()
        raise _port_error(e, ip, port) from None
    return PortReservation(sock)


def _port_error(e: OSError, ip: str, port: int) -> PortError:
    if e.errno == errno.EADDRINUSE:
        err: PortError = PortInUse(f"TCP port {ip}:{port} is already in use")
    elif e.errno == errno.EADDRNOTAVAIL:
        err = PortError(f"{ip} is not an address of this host")
    elif e.errno == errno.EACCES:
        err = PortError(f"binding TCP port {port} needs root")
    else:
        err = PortError(f"cannot reserve TCP {ip}:{port}: {e.strerror}")
    err.errno = e.errno
    return err
