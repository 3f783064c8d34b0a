"""HOST:PORT for both families, and names resolved the way getaddrinfo orders them.

Accepted (RFC 3986 §3.2.2 brackets, RFC 6874 zones):

    10.0.0.2:80   [2001:db8::2]:80   [fe80::1%eth0]:80   example.org:http   8080 (listen)

Refused with one line each (`errors.BadAddress`, exit code 2):

- a bare IPv6 address with a port (`::1:80`): the last group may be a port or
  part of the address; the message suggests `[::1]:80`;
- `[::1` (no closing bracket), `[::1]` or `[::1]x` (no `:PORT`), `::1:80:` and
  other text that is neither an address nor a name;
- a zone on anything but a link-local address (fe80::/10), and a link-local
  address without one (the kernel cannot tell which link it is on);
- an IPv4-mapped address (`::ffff:10.0.0.1`): it names an IPv4 peer that only
  dual-stack sockets reach through IPv6 (RFC 4291 §2.5.5.2); on the wire it
  would be IPv4, so we ask for the IPv4 form instead of guessing;
- a literal of the other family than `-4`/`-6` asked for.

A name that resolves to no address (of the requested family) is
`errors.UnknownHost`, exit code 7. Addresses come back in the text the codecs
write (inet_ntop's: lower case, compressed), so the engine's 4-tuples match
the segments decoded off the wire.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from tcpscapy import errors

__all__ = ["Family", "HostPort", "Resolved", "parse_host_port", "resolve"]

Family = int | None  # 4, 6, or None: either
_ZONE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")  # an interface name (IFNAMSIZ - 1) or an index
_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")  # a host name, loosely
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")

Resolver = Callable[..., list[tuple[Any, ...]]]  # socket.getaddrinfo's signature


@dataclass(frozen=True, slots=True)
class HostPort:
    """A parsed HOST:PORT. `host` is None when only a port was given (listen);
    an address literal is in canonical text, with `family` 4 or 6 (None: a name)."""

    host: str | None
    port: int
    family: Family = None
    zone: str | None = None  # a link-local address's interface, as written

    def __str__(self) -> str:
        if self.host is None:
            return str(self.port)
        host = self.host + (f"%{self.zone}" if self.zone else "")
        return f"[{host}]:{self.port}" if self.family == 6 else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Resolved:
    """One address to try: its family, canonical text, port and IPv6 scope (0: none)."""

    family: int
    ip: str
    port: int
    scope_id: int = 0


def _bad(text: str, why: str) -> errors.BadAddress:
    return errors.BadAddress(f"bad address {text!r}: {why}")


def _port(text: str, port_text: str, lo: int) -> int:
    """A port number, or a service name looked up for TCP (/etc/services)."""
    if port_text.isdigit():
        if lo <= int(port_text) <= 0xFFFF:
            return int(port_text)
    elif _SERVICE.fullmatch(port_text):
        try:
            return socket.getservbyname(port_text, "tcp")
        except OSError:
            raise _bad(text, f"unknown service {port_text!r}") from None
    raise _bad(text, f"bad port {port_text!r}: expected {lo}-65535 or a service name")


def _literal6(text: str, inner: str) -> tuple[str, str | None]:
    """(canonical IPv6 address, zone or None) of `inner`, the text inside the brackets."""
    address, pct, zone = inner.partition("%")
    try:
        ip = IPv6Address(address)
    except ValueError:
        if _is_ipv4(address):
            raise _bad(text, "brackets are for IPv6 addresses; write "
                             "IPv4 as ADDRESS:PORT") from None
        raise _bad(text, f"{address!r} is not an IPv6 address") from None
    if ip.ipv4_mapped is not None:
        raise _bad(text, f"{address} is an IPv4-mapped address; use the IPv4 address "
                         f"{ip.ipv4_mapped} instead")
    if pct and not _ZONE.fullmatch(zone):
        raise _bad(text, f"bad zone {zone!r}: expected an interface name or index")
    if pct and not ip.is_link_local:
        raise _bad(text, f"a zone (%{zone}) goes only with a link-local address (fe80::/10)")
    if ip.is_link_local and not pct:
        raise _bad(text, f"link-local {address} needs a zone naming the link, "
                         f"like [{address}%eth0]")
    if ip.is_multicast:
        raise _bad(text, f"{address} is a multicast address; TCP needs a unicast one")
    return socket.inet_ntop(socket.AF_INET6, ip.packed), (zone if pct else None)


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)  # strict dotted quad
    except OSError:
        return False
    return True


def _check_family(text: str, found: int, wanted: Family) -> None:
    if wanted is not None and found != wanted:
        raise errors.UsageError(f"bad address {text!r}: an IPv{found} address, "
                                f"but -{wanted} asks for IPv{wanted}")


def parse_host_port(text: str, *, host_optional: bool = False,
                    family: Family = None) -> HostPort:
    """Parse HOST:PORT, [IPV6]:PORT or (with `host_optional`, for listen) PORT alone.

    Port 0 is accepted only with `host_optional` (listen: pick a free port).
    `family` (4, 6 or None) is checked against an address literal; a name is
    checked when it resolves.
    """
    if family not in (4, 6, None):
        raise ValueError(f"family is 4, 6 or None, not {family!r}")
    text = text.strip()
    lo = 0 if host_optional else 1
    if text.startswith("["):
        inner, close, rest = text[1:].partition("]")
        if not close:
            raise _bad(text, "missing ']' after the IPv6 address; write [ADDRESS]:PORT")
        if not rest.startswith(":") or rest == ":":
            raise _bad(text, "expected [ADDRESS]:PORT, a port after ']:'")
        ip, zone = _literal6(text, inner)
        _check_family(text, 6, family)
        return HostPort(ip, _port(text, rest[1:], lo), 6, zone)
    if text.count(":") > 1:
        raise _bad(text, _bare_ipv6_hint(text))
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if host_optional:
            return HostPort(None, _port(text, port_text, lo))
        raise _bad(text, "expected HOST:PORT")
    if not host:
        raise _bad(text, "the host is empty")
    port = _port(text, port_text, lo)
    if _is_ipv4(host):
        _check_family(text, 4, family)
        return HostPort(host, port, 4)
    if (not _NAME.fullmatch(host) or len(host) > 253
            or host.rstrip(".").rpartition(".")[2].isdigit()):  # RFC 1123 §2.1: 1.2.3, 10.0.0.256
        raise _bad(text, f"{host!r} is neither an IPv4 address nor a host name")
    return HostPort(host, port)


def _bare_ipv6_hint(text: str) -> str:
    """Why a bare IPv6 address with a port is refused, with the bracketed spelling."""
    host, _, last = text.rpartition(":")
    address = host.partition("%")[0]
    if last.isdigit() and address:
        try:
            IPv6Address(address)
        except ValueError:
            pass
        else:
            return (f"an IPv6 address with a port needs brackets: [{host}]:{last} "
                    f"(or [{text}]:PORT if {last} is part of the address)")
    try:
        IPv6Address(text.partition("%")[0])
    except ValueError:
        return "not HOST:PORT, and not an IPv6 address either; write [ADDRESS]:PORT"
    return f"an IPv6 address needs brackets and a port: [{text}]:PORT"


def resolve(target: HostPort, *, family: Family = None, resolver: Resolver | None = None,
            index_of: Callable[[str], int] | None = None) -> list[Resolved]:
    """The addresses to try for `target`, best first; never empty.

    An address literal is itself (its zone turned into a scope id). A name is
    looked up for both families unless `family` says one, and the answers are
    kept in getaddrinfo's order (RFC 6724: IPv6 first where the host has IPv6),
    duplicates removed: a connect tries them in turn, falling back to the next
    (IPv4 after IPv6) when one fails. `resolver` and `index_of` default to
    socket.getaddrinfo and socket.if_nametoindex (tests pass fakes).
    """
    if target.host is None:
        raise errors.UsageError("no host to resolve: the address is a port alone")
    if target.family is not None:
        _check_family(str(target), target.family, family)
        scope = _scope_id(target, index_of or socket.if_nametoindex) if target.zone else 0
        return [Resolved(target.family, target.host, target.port, scope)]
    wanted = {4: socket.AF_INET, 6: socket.AF_INET6, None: socket.AF_UNSPEC}[family]
    try:
        infos = (resolver or socket.getaddrinfo)(target.host, None, wanted, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise errors.UnknownHost(f"cannot resolve {target.host!r}: {reason}") from None
    out: list[Resolved] = []
    for fam, *_, sockaddr in infos:
        found = _usable(fam, sockaddr, family)
        if found is not None and all(r.ip != found[1] for r in out):
            out.append(Resolved(found[0], found[1], target.port, found[2]))
    if not out:
        which = f"IPv{family} address" if family else "IPv4 or IPv6 address"
        raise errors.UnknownHost(f"cannot resolve {target.host!r}: no {which}")
    return out


def _usable(fam: int, sockaddr: tuple[Any, ...], family: Family) -> tuple[int, str, int] | None:
    """(family, canonical address, scope id) of one getaddrinfo answer, if we can use it."""
    if fam == socket.AF_INET and family in (4, None):
        return 4, str(IPv4Address(sockaddr[0])), 0
    if fam == socket.AF_INET6 and family in (6, None):
        ip = ip_address(str(sockaddr[0]).partition("%")[0])
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is None and not ip.is_multicast:
            scope = int(sockaddr[3]) if len(sockaddr) > 3 else 0
            if ip.is_link_local and not scope:
                return None  # no way to tell the link
            return 6, socket.inet_ntop(socket.AF_INET6, ip.packed), scope
    return None


def _scope_id(target: HostPort, index_of: Callable[[str], int]) -> int:
    zone = target.zone or ""
    if zone.isdigit():
        return int(zone)
    try:
        return index_of(zone)
    except OSError:
        raise errors.BadAddress(f"bad address {str(target)!r}: no interface {zone!r} "
                                "for the zone") from None
