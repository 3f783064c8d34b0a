"""SYN cookies in the Linux layout (net/ipv4/syncookies.c), for a stateless listener.

The cookie is our ISN; it encodes everything needed to rebuild the connection
when the client's ACK comes back, so a SYN costs no memory:

    ISN = H0(4-tuple, 0) + client_ISN + (count << 24) + ((H1(4-tuple, count) + mss_index) mod 2**24)

H0 and H1 are SipHash-2-4 under two 128-bit keys, truncated to 32 bits, of
saddr ‖ daddr ‖ sport ‖ dport ‖ count (4 + 4 + 2 + 2 + 4 bytes, network byte
order; the 4-tuple is the client's SYN's: saddr/sport is the client). Over
IPv6 (net/ipv6/syncookies.c) the hashed bytes are saddr ‖ daddr ‖ count ‖
sport ‖ dport (16 + 16 + 4 + 2 + 2; count in the host's order, which is
little-endian on the x86 and arm64 machines Linux runs on). `count`
is minutes of `now`; a cookie is accepted while the current count is at most
MAX_AGE - 1 past the one it was made with. mss_index points into the MSS
table of the family: IPv4's, or IPv6's of link MTUs less 60. With
timestamps, the low 6 bits of the SYN-ACK's TSval (taken before
the per-connection offset is added, as Linux does) carry the client's window
scale (4 bits, 0xF = none), SACK (bit 4) and ECN (bit 5); the ACK echoes them
in TSecr. Without timestamps a cookie connection has no window scaling and no
SACK, as on Linux.

Validation is Linux's arithmetic: strip H0 and the client ISN, read the count
from the top 8 bits, strip H1 of that count and require a table index. The
only branches on secret-derived values are on that age and index, which an
attacker learns anyway from whether a connection results; Python ints offer
no constant-time arithmetic, and there is no byte string to compare (where one
is, use hmac.compare_digest). The option bits in TSecr are not authenticated
(neither are they on Linux): a client can only choose its own options.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass
from functools import lru_cache

from siphashc import siphash

from .config import Config
from .connection import MAX_WSCALE
from .family import default_mss
from .isn import timestamp_offset
from .options import Options
from .segment import ACK, CWR, ECE, SYN, Segment
from .seq import MASK, seq_add

MSS_TABLE = (536, 1300, 1440, 1460)  # Linux msstab for IPv4 (1440: PPPoE)
MSS_TABLE6 = (1280 - 60, 1480 - 60, 1500 - 60, 9000 - 60)  # Linux msstab for IPv6
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
PERIOD = 60.0  # seconds per count (Linux: one minute)
MAX_AGE = 2  # counts a cookie stays valid (Linux MAX_SYNCOOKIE_AGE)
LIFETIME = MAX_AGE * PERIOD  # at most this long after it was sent can a cookie come back
ROTATION = 3600.0  # the hash keys change every hour; the previous hour's still validate

TS_BITS = 6
TS_MASK = (1 << TS_BITS) - 1
TS_WSCALE_NONE = 0xF  # the client sent no window scale option
TS_SACK = 1 << 4
TS_ECN = 1 << 5

_TUPLE = struct.Struct("!4s4sHH")
_COUNT = struct.Struct("!I")
_COUNT6 = struct.Struct("<I")  # Linux's IPv6 hash takes the count as a host-order u32
_V6_TUPLE_LEN = 36


# ------------------------------------------------------------------ the hash

@lru_cache(maxsize=16)
def derive_keys(secret: bytes) -> tuple[bytes, bytes]:
    """The two 16-byte SipHash keys, from the config secret.

    BLAKE2s keyed with the secret, personalised apart from the ISN and timestamp
    derivations in isn.py, so knowing one derived value tells nothing of another.
    """
    def key(person: bytes) -> bytes:
        return hashlib.blake2s(key=secret[:32], digest_size=16, person=person).digest()

    return key(b"syncook0"), key(b"syncook1")


@lru_cache(maxsize=4096)  # a flood comes from a few addresses; parsing costs ~0.7 µs each
def _addr(ip: str) -> bytes:
    try:
        return bytes(map(int, ip.split(".")))  # the common case, fast
    except ValueError:
        return ipaddress.ip_address(ip).packed  # an IPv6 address: 16 bytes


def tuple_bytes(saddr: str, daddr: str, sport: int, dport: int) -> bytes:
    """The hashed 4-tuple, network byte order: saddr ‖ daddr ‖ sport ‖ dport."""
    src, dst = _addr(saddr), _addr(daddr)
    if len(src) == len(dst) == 4:
        return _TUPLE.pack(src, dst, sport, dport)
    return src + dst + struct.pack("!HH", sport, dport)


def cookie_hash(key: bytes, four_tuple: bytes, count: int) -> int:
    """H(4-tuple, count): SipHash-2-4, the low 32 bits, in each family's layout."""
    if len(four_tuple) == _V6_TUPLE_LEN:
        return siphash(key, four_tuple[:32] + _COUNT6.pack(count & MASK) + four_tuple[32:]) & MASK
    return siphash(key, four_tuple + _COUNT.pack(count & MASK)) & MASK


def cookie_count(now: float) -> int:
    """The minute counter the cookie carries in its top 8 bits."""
    return int(now // PERIOD)


def mss_table(client: str) -> tuple[int, ...]:
    """The MSS table of `client`'s address family."""
    return MSS_TABLE6 if ":" in client else MSS_TABLE


def mss_index(mss: int, table: tuple[int, ...] = MSS_TABLE) -> int:
    """The largest table entry not above `mss` (the smallest if none is)."""
    for index in range(len(table) - 1, 0, -1):
        if mss >= table[index]:
            return index
    return 0


def make_cookie(keys: tuple[bytes, bytes], four_tuple: bytes, client_isn: int, count: int,
                index: int) -> int:
    """The cookie ISN for a SYN with `client_isn`, made at `count`, carrying `index`."""
    h0, h1 = keys
    return (cookie_hash(h0, four_tuple, 0) + client_isn + (count << COOKIE_BITS)
            + ((cookie_hash(h1, four_tuple, count) + index) & COOKIE_MASK)) & MASK


def check_cookie(keys: tuple[bytes, bytes], four_tuple: bytes, cookie: int, client_isn: int,
                 count: int) -> int | None:
    """The MSS index `cookie` carries if it is ours and at most MAX_AGE - 1 counts old."""
    h0, h1 = keys
    rest = (cookie - cookie_hash(h0, four_tuple, 0) - client_isn) & MASK
    age = (count - (rest >> COOKIE_BITS)) & (MASK >> COOKIE_BITS)  # a future count wraps: old
    if age >= MAX_AGE:
        return None
    index = (rest - cookie_hash(h1, four_tuple, count - age)) & COOKIE_MASK
    return index if index < len(MSS_TABLE) else None  # both tables have 4 entries


# ------------------------------------------------------------- the timestamp

def encode_ts(clock: int, wscale: int | None, sack: bool, ecn: bool = False) -> int:
    """A TSval not above `clock` (mod 2**32, less than 64 behind) carrying the option bits.

    `clock` is the timestamp clock before any per-connection offset; later
    segments use the clock itself, so TSvals never go backwards.
    """
    if wscale is not None and not 0 <= wscale <= MAX_WSCALE:
        raise ValueError(f"window scale {wscale} is outside 0..{MAX_WSCALE}")
    bits = TS_WSCALE_NONE if wscale is None else wscale
    bits |= (TS_SACK if sack else 0) | (TS_ECN if ecn else 0)
    clock &= MASK
    ts = (clock & ~TS_MASK) | bits
    if ts > clock:
        ts -= 1 << TS_BITS  # the previous 64-tick slot: never ahead of the clock
    return ts & MASK


def decode_ts(tsecr: int) -> tuple[int | None, bool, bool]:
    """(wscale or None, SACK, ECN) from an echoed TSval (offset already removed)."""
    ws = tsecr & TS_WSCALE_NONE
    return (None if ws == TS_WSCALE_NONE else ws), bool(tsecr & TS_SACK), bool(tsecr & TS_ECN)


# --------------------------------------------------------- SYN-ACK and ACK

@dataclass(frozen=True, slots=True)
class CookieOptions:
    """What a valid cookie ACK gives back to rebuild the connection."""

    mss: int  # the client's MSS, rounded down to the table
    wscale: int | None  # the client's window scale, None: no scaling
    sack: bool
    ecn: bool  # ECN was agreed in the SYN-ACK (the client asked and we accept)


@lru_cache(maxsize=16)
def epoch_keys(secret: bytes, epoch: int) -> tuple[bytes, bytes]:
    """The hash keys of one rotation period, derived from the process secret.

    Rotation is stateless: keys are a function of (secret, epoch), so a cookie
    made just before a change still validates just after it.
    """
    return derive_keys(hashlib.blake2s(epoch.to_bytes(8, "big", signed=True), key=secret[:32],
                                       person=b"cookepoc").digest())


class SynCookies:
    """Cookie SYN-ACKs and their validation for one listener's config."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def keys(self, now: float) -> tuple[bytes, bytes]:
        return epoch_keys(self.config.secret, int(now // ROTATION))

    def _candidate_keys(self, now: float) -> list[tuple[bytes, bytes]]:
        """This period's keys, and the previous period's while its cookies can live."""
        epoch = int(now // ROTATION)
        epochs = [epoch] if int((now - LIFETIME) // ROTATION) == epoch else [epoch, epoch - 1]
        return [epoch_keys(self.config.secret, e) for e in epochs]

    def synack(self, syn: Segment, now: float) -> Segment:
        """The SYN-ACK a Connection would send for `syn`, with a cookie as its ISN."""
        cfg = self.config
        src, dst, sport, dport, seq, _, _, _, opts = syn[:9]
        four_tuple = tuple_bytes(src, dst, sport, dport)
        index = mss_index(opts.mss if opts.mss is not None else default_mss(src),
                          mss_table(src))
        iss = make_cookie(self.keys(now), four_tuple, seq, cookie_count(now), index)
        stamps = opts.timestamps
        # ECN as Connection.accept_syn agrees it; without timestamps there is nowhere to
        # keep it, so the SYN-ACK then declines (no ECE), as Linux's cookies do.
        ecn = cfg.ecn != "off" and syn.flags & (ECE | CWR) == ECE | CWR
        if cfg.timestamps and stamps is not None:
            # Window scaling holds only if both sides offer it, as in Connection._negotiate.
            peer_ws = ours = None
            if cfg.wscale is not None and opts.wscale is not None:
                peer_ws, ours = min(opts.wscale, MAX_WSCALE), min(cfg.wscale, MAX_WSCALE)
            sack_ok = cfg.sack and opts.sack_permitted
            offset = timestamp_offset((dst, dport), (src, sport), cfg.secret)
            tsval = (encode_ts(int(now * 1000), peer_ws, sack_ok, ecn) + offset) & MASK  # _ts_clock
            options = Options(cfg.mss, ours, sack_ok, (tsval, stamps[0]))
        else:
            options = Options(cfg.mss)  # no timestamps: nowhere to keep wscale and SACK
            ecn = False
        flags = SYN | ACK | (ECE if ecn else 0)
        return Segment(dst, src, dport, sport, iss, (seq + 1) & MASK, flags,
                       min(cfg.recv_buffer, 0xFFFF), options)

    def check(self, ack: Segment, now: float) -> CookieOptions | None:
        """The options a cookie ACK (acking our cookie SYN-ACK) carries, or None if invalid."""
        cfg = self.config
        four_tuple = tuple_bytes(ack.src, ack.dst, ack.sport, ack.dport)
        index = None
        for keys in self._candidate_keys(now):
            index = check_cookie(keys, four_tuple, seq_add(ack.ack, -1), seq_add(ack.seq, -1),
                                 cookie_count(now))
            if index is not None:
                break
        if index is None:
            return None
        mss = mss_table(ack.src)[index]
        ts = ack.options.timestamps
        if ts is None:
            return CookieOptions(mss, None, False, False)
        if not cfg.timestamps:
            return None  # we sent no TSval, so TSecr carries nothing of ours (Linux: reject)
        offset = timestamp_offset((ack.dst, ack.dport), (ack.src, ack.sport), cfg.secret)
        wscale, sack, ecn = decode_ts((ts[1] - offset) & MASK)
        if (sack and not cfg.sack) or (ecn and cfg.ecn == "off") \
                or (wscale is not None and cfg.wscale is None):
            return None  # options we would not have agreed to (Linux: reject)
        return CookieOptions(mss, wscale, sack, ecn)
