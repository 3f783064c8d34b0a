"""The client's Fast Open cookie cache (tcpscapy.io.tfo_cache); no root needed.

File handling (mode, atomic replacement, missing and corrupt files, bounds),
negative caching, the option format, and learning from the core engine's own
Fast Open records over the in-memory network.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tcpscapy import api, errors
from tcpscapy.core.config import Config
from tcpscapy.core.stack import Stack
from tcpscapy.core.state import State
from tcpscapy.core.tfo import FastOpen
from tcpscapy.io import tfo_cache
from tcpscapy.io.tfo_cache import Entry, TfoCache, default_path
from tcpscapy.sim import Network

SERVER, OTHER = "10.77.0.2", "192.0.2.9"
COOKIE, COOKIE2 = bytes.fromhex("00abaaabe8e954c2"), bytes.fromhex("1122334455667788")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "tfo.json"


def cache_at(path: Path, clock: Clock, **kw: float) -> TfoCache:
    return TfoCache(path, clock=clock, **kw)  # type: ignore[arg-type]


# -- location ----------------------------------------------------------------------------


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "tcpscapy" / "tfo.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".cache" / "tcpscapy" / "tfo.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_path() == tmp_path / "home" / ".cache" / "tcpscapy" / "tfo.json"
    assert TfoCache().path == default_path()


# -- the file ----------------------------------------------------------------------------


def test_missing_file_is_an_empty_cache_that_asks_for_a_cookie(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock)
    attempt = cache.attempt(SERVER)
    assert (attempt.cookie, attempt.mss, attempt.experimental) == (b"", None, False)
    assert attempt.connect_args() == {"tfo_cookie": b"", "tfo_experimental": False,
                                      "tfo_mss": None}
    assert len(cache) == 0 and cache.error is None
    assert not path.exists()  # reading creates nothing


def test_a_cookie_is_written_private_and_read_back(path: Path, clock: Clock) -> None:
    cache_at(path, clock).store_cookie(SERVER, COOKIE, 1400)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    raw = json.loads(path.read_text())
    assert raw["version"] == 1
    assert raw["servers"][SERVER]["cookie"] == COOKIE.hex()
    assert raw["servers"][SERVER]["mss"] == 1400
    again = cache_at(path, clock).attempt(SERVER)  # a new process, say
    assert (again.cookie, again.mss, again.experimental) == (COOKIE, 1400, False)
    assert sorted(os.listdir(path.parent)) == ["tfo.json"]  # no temporary file left


@pytest.mark.parametrize("text", [
    "", "not json", "[1, 2]", '{"servers": []}', '{"version": 1}', "\x00\xff" * 10,
    '{"servers": {"10.77.0.2": {"cookie": "zz"}}}',
])
def test_a_corrupt_file_counts_as_empty_and_is_replaced(path: Path, clock: Clock,
                                                         text: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    cache = cache_at(path, clock)
    assert cache.attempt(SERVER).cookie == b""
    if "cookie" not in text:  # not even the shape of a cache: said so
        assert cache.error is not None and cache.error.startswith(f"ignored corrupt {path}")
    cache.store_cookie(SERVER, COOKIE, 1460)
    assert json.loads(path.read_text())["servers"][SERVER]["cookie"] == COOKIE.hex()


def test_bad_entries_are_skipped_and_good_ones_kept(path: Path, clock: Clock) -> None:
    good = {"cookie": COOKIE.hex(), "mss": 1460, "experimental": False, "seen": 1.0,
            "ignored_until": 0.0, "reason": ""}
    servers = {
        SERVER: good,
        "not-an-address": good,
        "10.0.0.1": {**good, "cookie": "abcdef"},  # 3 bytes: not a cookie length
        "10.0.0.2": {**good, "mss": "1460"},
        "10.0.0.3": {**good, "experimental": "yes"},
        "10.0.0.4": {**good, "seen": float("nan")},
        "10.0.0.5": "a string",
        "010.0.0.6": good,  # not the canonical spelling
    }
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "servers": servers}))
    assert list(cache_at(path, clock).entries()) == [SERVER]


def test_an_unwritable_cache_keeps_working_in_memory(tmp_path: Path, clock: Clock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    cache = cache_at(blocker / "tfo.json", clock)  # its directory cannot exist
    cache.store_cookie(SERVER, COOKIE, 1460)
    assert cache.error is not None and "cannot write" in cache.error
    assert cache.attempt(SERVER).cookie == COOKIE


def test_a_failed_write_leaves_the_old_file_whole(path: Path, clock: Clock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cache_at(path, clock)
    cache.store_cookie(SERVER, COOKIE, 1460)
    before = path.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tfo_cache.os, "replace", broken)
    cache.store_cookie(OTHER, COOKIE2, 1460)
    assert cache.error == f"cannot write {path}: No space left on device"
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["tfo.json"]


def test_two_caches_on_one_file_keep_each_others_updates(path: Path, clock: Clock) -> None:
    first, second = cache_at(path, clock), cache_at(path, clock)
    first.store_cookie(SERVER, COOKIE, 1460)
    second.store_cookie(OTHER, COOKIE2, 1200)
    assert set(first.entries()) == {SERVER, OTHER}


def test_the_cache_is_bounded_dropping_the_oldest(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock, max_entries=3)
    for i in range(5):
        clock.now += 1
        cache.store_cookie(f"10.1.0.{i}", COOKIE, 1460)
    clock.now += 1
    cache.mark_ignored("10.1.0.2", "test")  # seen again: now the newest
    clock.now += 1
    cache.store_cookie("10.1.0.9", COOKIE, 1460)
    assert sorted(cache.entries()) == ["10.1.0.2", "10.1.0.4", "10.1.0.9"]
    assert len(json.loads(path.read_text())["servers"]) == 3


def test_addresses_are_keyed_canonically(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock)
    cache.store_cookie("2001:DB8::0001", COOKIE, 1440)
    assert cache.get("2001:db8::1") == Entry(COOKIE, 1440, False, clock.now)
    with pytest.raises(ValueError):
        cache.attempt("example.com")


# -- negative caching and the option format -----------------------------------------------


def test_a_server_that_ignored_fast_open_gets_plain_syns_for_an_hour(path: Path,
                                                                   clock: Clock) -> None:
    cache = cache_at(path, clock)
    cache.mark_ignored(SERVER, "no cookie for our request")
    attempt = cache.attempt(SERVER)
    assert attempt.cookie is None  # no cookie request, no data in the SYN
    assert "plain SYN for another 60 min" in attempt.note
    assert cache_at(path, clock).attempt(SERVER).cookie is None  # remembered in the file
    clock.now += tfo_cache.NEGATIVE_TTL - 1
    assert cache.attempt(SERVER).cookie is None
    clock.now += 2
    assert cache.attempt(SERVER).cookie == b""  # asks again


def test_negative_caching_keeps_the_cookie_for_later(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock, negative_ttl=60)
    cache.store_cookie(SERVER, COOKIE, 1460)
    cache.mark_ignored(SERVER, "SYN data not acknowledged")
    assert cache.attempt(SERVER).cookie is None
    clock.now += 61
    assert cache.attempt(SERVER).cookie == COOKIE
    cache.store_cookie(SERVER, COOKIE2, 1460)  # a cookie ends the negative entry at once
    assert cache.get(SERVER) == Entry(COOKIE2, 1460, False, clock.now)


def test_the_servers_option_format_is_used_again(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock, negative_ttl=10)
    cache.store_cookie(SERVER, COOKIE, 1460, experimental=True)
    attempt = cache.attempt(SERVER)
    assert (attempt.cookie, attempt.experimental) == (COOKIE, True)
    cache.forget(SERVER)
    assert cache.attempt(SERVER).experimental is False
    assert SERVER not in json.loads(path.read_text())["servers"]


# -- learning from the engine's record ------------------------------------------------


@pytest.mark.parametrize(("record", "cached", "ignored", "note"), [
    (FastOpen(cookie_sent=b"", cookie_received=COOKIE), COOKIE, False,
     f"cookie {COOKIE.hex()} cached for {SERVER}"),
    (FastOpen(cookie_sent=b""), None, True, "ignored Fast Open (no cookie for our request)"),
    (FastOpen(cookie_sent=COOKIE, syn_data=100, data_acked=100), COOKIE, False,
     f"cookie {COOKIE.hex()} accepted by {SERVER}"),
    (FastOpen(cookie_sent=COOKIE, syn_data=100, data_acked=0), COOKIE, True,
     "SYN data not acknowledged, no new cookie"),
    (FastOpen(cookie_sent=COOKIE, syn_data=100, cookie_received=COOKIE2), COOKIE2, False,
     "(ours was stale)"),
    (FastOpen(cookie_sent=COOKIE), COOKIE, False, "sent to 10.77.0.2 (no data in the SYN)"),
])
def test_learn_follows_the_synack(path: Path, clock: Clock, record: FastOpen,
                                  cached: bytes | None, ignored: bool, note: str) -> None:
    cache = cache_at(path, clock)
    if record.cookie_sent:
        cache.store_cookie(SERVER, record.cookie_sent, 1460)
    clock.now += 5
    assert note in cache.learn(SERVER, record, 1380)
    entry = cache.get(SERVER)
    assert entry is not None and entry.cookie == cached
    assert (entry.ignored_until > clock.now) is ignored
    assert entry.seen == clock.now


def test_learn_without_an_attempt_changes_nothing(path: Path, clock: Clock) -> None:
    cache = cache_at(path, clock)
    assert cache.learn(SERVER, None, 1460) == ""
    assert cache.learn(SERVER, FastOpen(cookie_received=COOKIE), 1460) == ""  # server side
    assert cache.entries() == {} and not path.exists()


def test_two_engines_fast_open_through_the_cache(path: Path, clock: Clock) -> None:
    """Cookie request, then cookie and data in the SYN, as a connect() does it."""
    config = Config(secret=b"tfo cache test", msl=1.0)
    client, server = Stack(config), Stack(config.with_(tfo_server=True, mss=1200))
    net = Network({"10.0.0.1": client, SERVER: server}, delay=0.010)
    listener = server.listen(SERVER, 80)
    cache = cache_at(path, clock)
    payload = bytes(range(256)) * 8  # more than one SYN holds

    def connect(sport: int) -> tuple[int, bytes]:
        args = cache.attempt(SERVER).connect_args()
        conn = client.connect(("10.0.0.1", sport), (SERVER, 80), net.now, data=payload, **args)
        trace = net.follow(conn)
        net.run(lambda: conn.state is State.ESTABLISHED)
        cache.learn(SERVER, conn.tfo, 1200)
        syn = trace.segments("out")[0]
        synack = trace.segments("in")[0]
        return (synack.ack - syn.seq - 1) % 2**32, syn.payload

    assert connect(40000) == (0, b"")  # the cookie request
    entry = cache.get(SERVER)
    assert entry is not None and entry.cookie is not None and entry.mss == 1200
    acked, syn_data = connect(40001)
    assert syn_data == payload[: 1200 - 40] and acked == len(syn_data)
    assert listener.tfo_passive == 1 and listener.tfo_cookie_requests == 1


def test_connect_takes_a_cache_a_path_or_none(path: Path, clock: Clock) -> None:
    empty = cache_at(path, clock)
    assert api._tfo_cache(True, empty) is empty
    assert api._tfo_cache(True, str(path)).path == path  # type: ignore[union-attr]
    assert api._tfo_cache(True, path).path == path  # type: ignore[union-attr]
    assert api._tfo_cache(True, None).path == default_path()  # type: ignore[union-attr]
    assert api._tfo_cache(False, None) is None
    with pytest.raises(errors.BadOption, match="tfo_cache needs tfo=True"):
        api._tfo_cache(False, path)
    with pytest.raises(errors.BadOption, match="takes a TfoCache or a file path"):
        api._tfo_cache(True, 42)
    with pytest.raises(errors.BadOption, match="option tfo takes True or False"):
        api.connect("10.77.0.2", 80, tfo="yes")  # checked before anything is sent
    with pytest.raises(errors.BadOption, match="option data takes bytes, not str"):
        api.connect("10.77.0.2", 80, data="text")  # type: ignore[arg-type]
