"""Path MTU: what a "fragmentation needed" may teach us, and a per-destination cache.

RFC 1191 for IPv4. The effective send MSS is the path MTU less 40 bytes (IP and
TCP headers without options; options come off each segment's payload, RFC 6691).

Floor: a path MTU below MIN_PATH_MTU (552, Linux's ip_rt_min_pmtu) is raised to
it. Segments of 512 bytes still pass every real IPv4 path (RFC 791 guarantees
576-byte datagrams), and a lower floor is what a forged ICMP would use to make
us send tiny segments at a high per-packet cost (RFC 5927 §7; the 2019 Linux
"SACK panic" fixes added tcp_min_snd_mss for the same reason). Reported MTUs
below RFC 791's 68 or above 65535 are nonsense and ignored; a report that does
not lower the current estimate is ignored (RFC 1191 §6.3, RFC 5927 §7.2).
A router that reports 0 (pre-RFC 1191) gets the plateau table of RFC 1191 §7:
the largest plateau below the quoted packet's length.

The cache keeps what ICMP taught per destination address, shared by every
connection to it, for CACHE_LIFETIME seconds (the kernel's route cache keeps a
learnt PMTU for 10 minutes, ip_rt_mtu_expires); after that a new connection
tries the full size again, and ICMP corrects it if the path is still small.
"""

from __future__ import annotations

MIN_PATH_MTU = 552  # floor (Linux ip_rt_min_pmtu): MSS 512
MIN_IPV4_MTU = 68  # RFC 791: anything lower is no MTU
MAX_IPV4_MTU = 0xFFFF
HEADERS = 40  # IPv4 + TCP without options
MIN_MSS = MIN_PATH_MTU - HEADERS
CACHE_LIFETIME = 600.0  # seconds, as Linux's ip_rt_mtu_expires
CACHE_SIZE = 4096  # destinations remembered (oldest forgotten first)
# RFC 1191 §7, table 7-1.
PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)


def plateau_below(size: int) -> int:
    """The largest RFC 1191 plateau strictly below `size` (68 at the least)."""
    for plateau in PLATEAUS:
        if plateau < size:
            return plateau
    return PLATEAUS[-1]


def next_mtu(reported: int, quoted_len: int, current: int) -> tuple[int | None, str]:
    """The new path MTU a "fragmentation needed" teaches, or None and why it is ignored.

    `current` is our present estimate (the MSS in use plus 40).
    """
    if reported == 0:  # RFC 1191 §5: guess from the packet that did not fit
        mtu = plateau_below(quoted_len if HEADERS < quoted_len <= current else current)
    elif reported < MIN_IPV4_MTU or reported > MAX_IPV4_MTU:
        return None, f"impossible MTU {reported}"
    else:
        mtu = reported
    mtu = max(mtu, MIN_PATH_MTU)
    if mtu >= current:
        return None, f"not below the path MTU {current}"
    return mtu, ""


class PathMtuCache:
    """Path MTUs learnt from ICMP, by destination address, each for CACHE_LIFETIME s."""

    def __init__(self, lifetime: float = CACHE_LIFETIME, size: int = CACHE_SIZE) -> None:
        self.lifetime = lifetime
        self.size = size
        self._entries: dict[str, tuple[int, float]] = {}  # dst -> (mtu, expires at)

    def lookup(self, dst: str, now: float) -> int | None:
        found = self._entries.get(dst)
        if found is None:
            return None
        if now >= found[1]:
            del self._entries[dst]
            return None
        return found[0]

    def learn(self, dst: str, mtu: int, now: float) -> None:
        entries = self._entries
        entries.pop(dst, None)
        entries[dst] = (mtu, now + self.lifetime)
        if len(entries) > self.size:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)
