"""The client's TCP Fast Open cookie cache: per server address, in a small JSON file.

RFC 7413 §4.1.3: a client keeps, per server IP address, the cookie it was
given and the server's MSS (which bounds how much data fits in the next SYN).
We also keep the option format the server answered in (kind 34, or the
experimental 254 with magic 0xF989) and use it on the next SYN, as Linux does.

Negative caching: when a server takes no part in Fast Open (no cookie for our
request, or our SYN's data acknowledged only after the handshake and no new
cookie), it is remembered for `negative_ttl` seconds (1 hour by default).
Meanwhile connections to it send a plain SYN: no cookie request, no SYN data
(the data goes after the handshake as usual). Afterwards the next connection
asks again. A cookie we already hold is kept through that time.

The file lives at $XDG_CACHE_HOME/tcpscapy/tfo.json (~/.cache/tcpscapy/tfo.json
when unset), mode 0600 in a 0700 directory, and holds at most `max_entries`
servers (the least recently seen are dropped). Every change re-reads the file,
applies itself and replaces the file atomically (temporary file + rename), so
concurrent processes lose at most a racing update, never the file. A missing or
corrupt file counts as empty; a file that cannot be written leaves the cache
working in memory with `error` saying why (and learn()'s line says it was not
saved): the cache never fails a connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tcpscapy.core.tfo import FastOpen, cookie_length_ok

__all__ = ["Attempt", "Entry", "TfoCache", "default_path"]

MAX_ENTRIES = 1000
NEGATIVE_TTL = 3600.0  # seconds without Fast Open to a server that ignored it
FILE_VERSION = 1
_REASON_LEN = 200


def default_path() -> Path:
    """$XDG_CACHE_HOME/tcpscapy/tfo.json, or ~/.cache/tcpscapy/tfo.json.

    A relative XDG_CACHE_HOME is ignored, as the XDG spec asks."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "tcpscapy" / "tfo.json"


@dataclass(frozen=True, slots=True)
class Entry:
    """What we know about one server's Fast Open."""

    cookie: bytes | None = None  # the cookie it gave us, if any
    mss: int | None = None  # its MSS, from the SYN-ACK that carried the cookie
    experimental: bool = False  # it answered with option 254/0xF989
    seen: float = 0.0  # wall-clock time of the last update (the oldest are dropped first)
    ignored_until: float = 0.0  # negative cache: no Fast Open to it before this time
    reason: str = ""  # why it was negatively cached


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the next SYN to a server carries; `connect_args()` are for Driver.open_connection.

    `cookie` None: no Fast Open (the server is negatively cached); b"": a cookie
    request; else the cached cookie, with data.
    """

    server: str
    cookie: bytes | None
    mss: int | None = None
    experimental: bool = False
    note: str = ""

    def connect_args(self) -> dict[str, Any]:
        return {"tfo_cookie": self.cookie, "tfo_experimental": self.experimental,
                "tfo_mss": self.mss}


class TfoCache:
    """Fast Open cookies per server address, kept in a JSON file (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 max_entries: int = MAX_ENTRIES, negative_ttl: float = NEGATIVE_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.path = Path(path) if path is not None else default_path()
        self._unsaved = False  # the last write failed
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.error: str | None = None  # the last problem reading or writing the file
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def get(self, server: str) -> Entry | None:
        with self._lock:
            self._load()
            return self._entries.get(_key(server))

    def entries(self) -> dict[str, Entry]:
        with self._lock:
            self._load()
            return dict(self._entries)

    def __len__(self) -> int:
        return len(self.entries())

    def attempt(self, server: str) -> Attempt:
        """What to send to `server`: the cached cookie, a cookie request, or nothing."""
        key = _key(server)
        entry = self.get(key)
        now = self.clock()
        if entry is not None and entry.ignored_until > now:
            left = (entry.ignored_until - now) / 60
            return Attempt(key, None, note=f"{key} ignored Fast Open ({entry.reason}); "
                                           f"plain SYN for another {left:.0f} min")
        if entry is None or entry.cookie is None:
            experimental = entry.experimental if entry is not None else False
            return Attempt(key, b"", experimental=experimental,
                           note=f"no cookie cached for {key}: requesting one")
        return Attempt(key, entry.cookie, entry.mss, entry.experimental,
                       note=f"cookie {entry.cookie.hex()} cached for {key}")

    # -- learning ------------------------------------------------------------------------

    def store_cookie(self, server: str, cookie: bytes, mss: int, *,
                     experimental: bool = False) -> None:
        """Keep `cookie` and the server's `mss`; a server that sends cookies is no longer
        negatively cached."""
        if not cookie_length_ok(len(cookie)):
            raise ValueError(f"not a Fast Open cookie: {len(cookie)} bytes")
        self._update(server, lambda old: Entry(cookie, mss, experimental, self.clock()))

    def mark_ignored(self, server: str, reason: str) -> None:
        """Negative caching: no Fast Open to `server` for `negative_ttl` seconds."""
        now = self.clock()
        self._update(server, lambda old: replace(
            old or Entry(), seen=now, ignored_until=now + self.negative_ttl,
            reason=reason[:_REASON_LEN]))

    def forget(self, server: str) -> None:
        key = _key(server)
        with self._lock:
            self._load()
            if self._entries.pop(key, None) is not None:
                self._save()

    def learn(self, server: str, fo: FastOpen | None, server_mss: int) -> str:
        """Update the cache from a handshake's Fast Open record (the SYN-ACK is in);
        returns a line saying what the cache did ("" when Fast Open was not tried).

        The decisions are FastOpen.on_synack's: a cookie in the SYN-ACK is kept
        (TfoCookieReceived), a request left unanswered or SYN data acknowledged
        only with the SYN is negatively cached (TfoIgnored).
        """
        note = self._learn(_key(server), fo, server_mss)
        if note and self._unsaved:
            note += f"; not saved: {self.error}"
        return note

    def _learn(self, key: str, fo: FastOpen | None, server_mss: int) -> str:
        if fo is None or fo.cookie_sent is None:
            return ""
        if fo.cookie_received:
            self.store_cookie(key, fo.cookie_received, server_mss,
                              experimental=fo.experimental)
            stale = " (ours was stale)" if fo.cookie_sent else ""
            return f"cookie {fo.cookie_received.hex()} cached for {key}{stale}"
        if fo.cookie_sent == b"" or fo.data_acked < fo.syn_data:
            reason = ("no cookie for our request" if fo.cookie_sent == b""
                      else "SYN data not acknowledged, no new cookie")
            self.mark_ignored(key, reason)
            return (f"{key} ignored Fast Open ({reason}): no Fast Open to it for "
                    f"{self.negative_ttl / 60:.0f} min")
        self._update(key, lambda old: replace(old or Entry(), seen=self.clock()))
        if fo.syn_data:
            return f"cookie {fo.cookie_sent.hex()} accepted by {key}"
        return f"cookie {fo.cookie_sent.hex()} sent to {key} (no data in the SYN)"

    # -- the file ------------------------------------------------------------------------

    def _update(self, server: str, change: Callable[[Entry | None], Entry]) -> None:
        key = _key(server)
        with self._lock:
            self._load()
            self._entries[key] = change(self._entries.get(key))
            if len(self._entries) > self.max_entries:
                newest = sorted(self._entries.items(), key=lambda item: item[1].seen)
                self._entries = dict(newest[-self.max_entries:])
            self._save()

    def _load(self) -> None:
        """Read the file (lock held); a missing one is empty, a bad one too (with `error`)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._entries = {}
            return
        except (OSError, UnicodeError) as exc:
            self.error = f"cannot read {self.path}: {_why(exc)}"
            return  # keep what we have in memory
        try:
            raw = json.loads(text)
            servers = raw["servers"] if isinstance(raw, dict) else None
            if not isinstance(servers, dict):
                raise ValueError("no 'servers' object")
        except (ValueError, KeyError, TypeError) as exc:
            self.error = f"ignored corrupt {self.path}: {_why(exc)}"
            self._entries = {}
            return
        self._entries = {key: entry for key, value in servers.items()
                         if (entry := _entry_from_json(key, value)) is not None}

    def _save(self) -> None:
        """Replace the file atomically (lock held); failures land in `error`."""
        data = {"version": FILE_VERSION,
                "servers": {key: _entry_to_json(entry) for key, entry in self._entries.items()}}
        tmp: str | None = None
        self._unsaved = True
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tfo.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            self._unsaved = False
        except OSError as exc:
            self.error = f"cannot write {self.path}: {_why(exc)}"
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def __repr__(self) -> str:
        return f"<TfoCache {self.path}>"


# -- helpers ---------------------------------------------------------------------------


def _key(server: str) -> str:
    """The canonical text of an IP address (ValueError for anything else)."""
    return str(ipaddress.ip_address(server))


def _why(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()[0]


def _entry_to_json(entry: Entry) -> dict[str, Any]:
    return {"cookie": entry.cookie.hex() if entry.cookie is not None else None,
            "mss": entry.mss, "experimental": entry.experimental, "seen": entry.seen,
            "ignored_until": entry.ignored_until, "reason": entry.reason}


def _entry_from_json(key: Any, value: Any) -> Entry | None:
    """An Entry from its JSON object, or None if anything in it is off."""
    try:
        if not isinstance(key, str) or _key(key) != key or not isinstance(value, dict):
            return None
        cookie_hex, mss = value.get("cookie"), value.get("mss")
        cookie = bytes.fromhex(cookie_hex) if cookie_hex is not None else None
        seen, until = value.get("seen", 0.0), value.get("ignored_until", 0.0)
        experimental, reason = value.get("experimental", False), value.get("reason", "")
        if cookie is not None and not cookie_length_ok(len(cookie)):
            return None
        if mss is not None and (type(mss) is not int or not 1 <= mss <= 0xFFFF):
            return None
        if not all(type(t) in (int, float) and math.isfinite(t) for t in (seen, until)):
            return None
        if not isinstance(experimental, bool) or not isinstance(reason, str):
            return None
        return Entry(cookie, mss, experimental, float(seen), float(until), reason[:_REASON_LEN])
    except (ValueError, TypeError):
        return None
