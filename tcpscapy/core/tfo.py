"""TCP Fast Open (RFC 7413): cookies as Linux makes them, and the decisions around them.

The cookie (net/ipv4/tcp_fastopen.c) is SipHash-2-4, under a 128-bit key, of
the client address followed by the server address (4 + 4 bytes for IPv4,
16 + 16 for IPv6), written as 8 bytes little-endian. Keys are written in sysctl
notation, four 32-bit words in hex, each word little-endian in the key:
`a0bf63f7-ed803d81-cd641d30-cebc4a90` (net.ipv4.tcp_fastopen_key).

The server answers each SYN as Linux's tcp_try_fastopen does (`answer_syn`); the
client reads the SYN-ACK's answer to its attempt (`FastOpen.on_synack`). Both
record what happened in a `FastOpen` value kept on the connection.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import struct
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from siphashc import siphash

from . import events as ev
from .config import Config
from .options import MAX_OPTIONS_LEN, Options

KEY_LEN = 16
COOKIE_LEN = 8  # what we make; a client may be handed any valid length
COOKIE_MIN, COOKIE_MAX = 4, 16  # RFC 7413 §4.1.1

_KEY_WORDS = struct.Struct("<4I")
_HEX_WORD = re.compile(r"[0-9a-fA-F]{1,8}")


# ------------------------------------------------------------------ cookies

def make_cookie(key: bytes, client: str, server: str) -> bytes:
    """The cookie for `client` talking to `server` (IP addresses as text) under `key`."""
    data = ipaddress.ip_address(client).packed + ipaddress.ip_address(server).packed
    return siphash(key, data).to_bytes(COOKIE_LEN, "little")


def cookie_length_ok(length: int) -> bool:
    """A cookie (not a request) has an even length from 4 to 16 bytes, as Linux checks."""
    return COOKIE_MIN <= length <= COOKIE_MAX and length % 2 == 0


@lru_cache(maxsize=16)
def derive_key(secret: bytes) -> bytes:
    """The cookie key when none is configured: BLAKE2s keyed with the config secret,
    personalised apart from the ISN and SYN-cookie derivations."""
    return hashlib.blake2s(key=secret[:32], digest_size=KEY_LEN, person=b"tfo-key").digest()


class KeyMatch(Enum):
    NONE = "none"
    PRIMARY = "primary"
    BACKUP = "backup"  # valid under the previous key: still accepted, answered with a fresh one


@dataclass(frozen=True, slots=True)
class CookieKeys:
    """The server's current key and, after a rotation, the previous one."""

    primary: bytes
    backup: bytes | None = None

    def __post_init__(self) -> None:
        for key in (self.primary, self.backup):
            if key is not None and len(key) != KEY_LEN:
                raise ValueError(f"a TFO key is {KEY_LEN} bytes, not {len(key)}")

    @classmethod
    def from_config(cls, cfg: Config) -> CookieKeys:
        primary = cfg.tfo_key if cfg.tfo_key is not None else derive_key(cfg.secret)
        return cls(primary, cfg.tfo_backup_key)

    def cookie(self, client: str, server: str) -> bytes:
        return make_cookie(self.primary, client, server)

    def check(self, cookie: bytes, client: str, server: str) -> KeyMatch:
        """Which key made `cookie`; compared in constant time, both keys always tried."""
        primary = hmac.compare_digest(cookie, self.cookie(client, server))
        backup = self.backup is not None and hmac.compare_digest(
            cookie, make_cookie(self.backup, client, server))
        if primary:
            return KeyMatch.PRIMARY
        return KeyMatch.BACKUP if backup else KeyMatch.NONE


def rotate_key(cfg: Config, new_key: bytes) -> Config:
    """`cfg` with `new_key` as the primary key and the current one kept as the backup."""
    return cfg.with_(tfo_key=new_key, tfo_backup_key=CookieKeys.from_config(cfg).primary)


# ---------------------------------------------------------------- key text

def parse_key(text: str) -> bytes:
    """A key from sysctl notation: four hex words, `a0bf63f7-ed803d81-cd641d30-cebc4a90`."""
    words = text.strip().split("-")
    if len(words) != 4 or not all(_HEX_WORD.fullmatch(word) for word in words):
        raise ValueError(f"not a TFO key (expected four hex words like "
                         f"a0bf63f7-ed803d81-cd641d30-cebc4a90): {text!r}")
    return _KEY_WORDS.pack(*(int(word, 16) for word in words))


def parse_keys(text: str) -> tuple[bytes, bytes | None]:
    """Primary and optional backup key, as Linux writes them: `primary[,backup]`."""
    primary, _, backup = text.partition(",")
    return parse_key(primary), parse_key(backup) if backup else None


def format_key(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise ValueError(f"a TFO key is {KEY_LEN} bytes, not {len(key)}")
    return "-".join(f"{word:08x}" for word in _KEY_WORDS.unpack(key))


# ------------------------------------------------------------ the exchange

@dataclass(slots=True)
class FastOpen:
    """One connection's Fast Open exchange, as far as it went.

    Client: `cookie_sent` is b"" for a cookie request or the cached cookie;
    `syn_data` counts the bytes that rode in the first SYN. When the SYN-ACK is
    in, `data_acked` says how many of them it acknowledged and
    `cookie_received` holds its cookie, if it carried one.
    Server: `cookie_received` is the client's option (None: it sent none);
    `accepted` marks a Fast Open connection, whose SYN data (`syn_data` bytes)
    went to the application at once; `cookie_sent` is what our SYN-ACK carries.
    `experimental` is the option format, kind 254 with magic 0xF989 instead of 34.
    """

    experimental: bool = False
    cookie_sent: bytes | None = None
    cookie_received: bytes | None = None
    syn_data: int = 0
    data_acked: int = 0
    accepted: bool = False

    def on_synack(self, opts: Options, data_acked: int, server_mss: int,
                  syn_retransmitted: bool) -> list[ev.Event]:
        """Client: what the SYN-ACK says about our attempt (RFC 7413 §4.2.2), as events.

        TfoCookieReceived: cache the cookie with the server's MSS. TfoIgnored: the
        server (or the path) took no part; a cache may stop trying for a while. A
        SYN-ACK that brings a new cookie without acknowledging our data only means
        ours was stale: the new one is reported, and no TfoIgnored.
        """
        self.data_acked = data_acked
        cookie = opts.tfo_cookie
        if cookie and cookie_length_ok(len(cookie)):
            self.cookie_received = cookie
            return [ev.TfoCookieReceived(cookie, server_mss, opts.tfo_experimental)]
        if self.cookie_sent == b"":
            return [ev.TfoIgnored("the server sent no cookie")]
        if data_acked < self.syn_data:
            if syn_retransmitted:
                return [ev.TfoIgnored("the SYN with data went unanswered, a plain SYN did not")]
            return [ev.TfoIgnored("the server acknowledged only the SYN and sent no cookie")]
        return []


def answer_syn(cfg: Config, client: str, server: str, opts: Options,
               has_data: bool) -> FastOpen | None:
    """Server: the Fast Open answer to one SYN, as Linux's tcp_try_fastopen gives it.

    None: TFO plays no part (server off, or neither a TFO option nor, in
    no-cookie mode, data). Otherwise `accepted` says whether the SYN's data is
    taken, and `cookie_sent` what the SYN-ACK carries: a fresh cookie for a
    request, an invalid cookie or one made with the backup key; none for a cookie
    valid under the primary key, nor in no-cookie mode (as Linux 0x200).
    """
    if not cfg.tfo_server:
        return None
    cookie = opts.tfo_cookie
    if cookie and not cookie_length_ok(len(cookie)):
        cookie = None  # a malformed cookie counts as no option (Linux)
    if cookie is None and not has_data:
        return None
    if cfg.tfo_no_cookie:
        return FastOpen(opts.tfo_experimental, cookie_received=cookie, accepted=True)
    if cookie is None:
        return None  # data without a cookie: a plain SYN
    keys = CookieKeys.from_config(cfg)
    fresh = keys.cookie(client, server)
    answer = FastOpen(opts.tfo_experimental, cookie_sent=fresh, cookie_received=cookie)
    if cookie:
        match = keys.check(cookie, client, server)
        answer.accepted = match is not KeyMatch.NONE
        if match is KeyMatch.PRIMARY:
            answer.cookie_sent = None  # the client's cookie is current
    return answer


def syn_data_room(server_mss: int, our_mss: int) -> int:
    """Data bytes a client's Fast Open SYN may carry: the server's MSS (cached with the
    cookie), bounded by ours, less 40 bytes kept for options, as Linux reserves."""
    return max(min(server_mss, our_mss) - MAX_OPTIONS_LEN, 0)
