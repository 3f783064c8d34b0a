"""IPv6 routes, source addresses and next-hop MACs, as the kernel of this namespace has them.

`route6` asks the kernel (`ip -6 route get`, run from the calling thread, so in
its namespace) which interface, source address (RFC 6724 selection, done by the
kernel) and next hop reach a destination; a link-local destination needs its
scope (interface index). `neighbour_mac` finds the next hop's MAC with a
neighbour solicitation of our own (nd.py) on a packet socket, bounded in tries
and time. Both are connect-time costs (~3 ms and one round trip), never
per-segment ones.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from ipaddress import IPv6Address
from typing import NamedTuple

from tcpscapy.io.nd import Advert, parse_nd, solicit
from tcpscapy.io.rawsock import NoRoute

__all__ = ["Route6", "neighbour_mac", "route6"]

ETH_P_IPV6 = 0x86DD


class Route6(NamedTuple):
    iface: str
    src: str  # the source address the kernel would pick
    next_hop: str  # the gateway, or the destination itself when on-link
    local: bool  # the destination is one of this namespace's addresses (use loopback)


def route6(dst: str, *, scope_id: int = 0, iface: str | None = None) -> Route6:
    """The kernel's route to `dst`. Raises NoRoute (one line) when there is none."""
    ip = IPv6Address(dst)  # ValueError for a bad address: the caller's mistake
    canonical = socket.inet_ntop(socket.AF_INET6, ip.packed)  # as codec6 writes addresses
    argv = ["ip", "-6", "-j", "route", "get", canonical]
    if scope_id and iface is None:
        try:
            iface = socket.if_indextoname(scope_id)
        except OSError:
            raise NoRoute(f"no interface with index {scope_id} for {dst}") from None
    if ip.is_link_local and iface is None:
        raise NoRoute(f"link-local {dst} needs an interface (a zone like %eth0)")
    if iface is not None:
        argv += ["oif", iface]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        reason = (res.stderr.strip().splitlines() or ["no route"])[-1]
        raise NoRoute(f"no route to {dst}: {reason.removeprefix('RTNETLINK answers: ')}")
    try:
        (entry,) = json.loads(res.stdout)
        return Route6(str(entry["dev"]), str(entry.get("prefsrc") or entry.get("src") or "::"),
                      str(entry.get("gateway") or canonical), entry.get("type") == "local")
    except (ValueError, KeyError, TypeError):
        raise NoRoute(f"no route to {dst}: unexpected answer {res.stdout.strip()!r}") from None


def neighbour_mac(sock: socket.socket, src: str, src_mac: str, next_hop: str, *,
                  tries: int = 3, wait: float = 1.0) -> str:
    """The MAC of `next_hop`, asked with up to `tries` solicitations `wait` seconds apart.

    `sock` is an AF_PACKET socket bound to the interface (ETH_P_IPV6 or ETH_P_ALL);
    other packets it receives meanwhile are dropped. Raises NoRoute when no
    advertisement comes.
    """
    next_hop = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, next_hop))
    dst_mac, packet = solicit(src, src_mac, next_hop)
    frame = dst_mac + bytes.fromhex(src_mac.replace(":", "")) + ETH_P_IPV6.to_bytes(2, "big")
    for _ in range(tries):
        sock.send(frame + packet)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data = sock.recv(2048)
            if data[12:14] != ETH_P_IPV6.to_bytes(2, "big"):
                continue
            found = parse_nd(data[14:])
            if isinstance(found, Advert) and found.target == next_hop and found.mac:
                return found.mac
    raise NoRoute(f"no neighbour advertisement from {next_hop}")
