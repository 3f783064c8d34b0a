"""The engine over IPv6: default MSS, MSS from the MTU, SYN and TFO cookies in Linux's layout.

Expected cookies are computed here from net/ipv6/syncookies.c's layout written
out with siphashc, independently of tcpscapy.core.syncookies.
"""

from __future__ import annotations

import socket
import struct

import pytest
from siphashc import siphash

from tcpscapy.core import Config, State
from tcpscapy.core.connection import Connection
from tcpscapy.core.family import DEFAULT_MSS_V6, default_mss, is_ipv6, mss_for_mtu
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.core.stack import Stack
from tcpscapy.core.syncookies import (
    MSS_TABLE,
    MSS_TABLE6,
    SynCookies,
    check_cookie,
    cookie_hash,
    make_cookie,
    mss_index,
    tuple_bytes,
)
from tcpscapy.core.tfo import make_cookie as tfo_cookie
from tcpscapy.core.tfo import parse_key
from tcpscapy.sim import Network

A6, B6 = "2001:db8::1", "2001:db8::2"
K0, K1 = bytes(range(16)), bytes(range(16, 32))
M32 = 0xFFFFFFFF
CFG = Config(secret=b"ipv6-secret", msl=5.0)


def test_family_rules() -> None:
    assert DEFAULT_MSS_V6 == 1220
    assert (default_mss(A6), default_mss("10.0.0.1")) == (1220, 536)
    assert (mss_for_mtu(1500, A6), mss_for_mtu(1500, "10.0.0.1")) == (1440, 1460)
    assert (mss_for_mtu(1280, "::1"), mss_for_mtu(65536, "::1")) == (1220, 65476)
    assert mss_for_mtu(40, "10.0.0.1") == 64  # the engine's floor
    assert is_ipv6("::ffff:10.0.0.1") and not is_ipv6("10.0.0.1")


@pytest.mark.parametrize(("peer", "expected"), [(B6, 1220), ("10.0.0.2", 536)])
def test_a_syn_without_mss_means_the_family_default(peer: str, expected: int) -> None:
    local = A6 if ":" in peer else "10.0.0.1"
    stack = Stack(CFG)
    stack.listen(local, 80)
    stack.receive(Segment(peer, local, 40000, 80, 7, 0, SYN, 65535), 0.0)
    (conn,) = stack.connections
    assert conn.snd_mss == expected


def test_a_synack_without_mss_means_1220_for_the_client() -> None:
    conn = Connection((A6, 40000), (B6, 80), CFG)
    conn.connect(0.0)
    (syn,) = conn.segments_to_send(0.0)
    conn.receive(Segment(B6, A6, 80, 40000, 1000, syn.seq + 1, SYN | ACK, 65535), 0.01)
    assert conn.state is State.ESTABLISHED and conn.snd_mss == 1220


def test_two_engines_over_ipv6_exchange_data() -> None:
    client, server = Stack(CFG), Stack(CFG)
    listener = server.listen(B6, 443)
    net = Network({A6: client, B6: server})
    conn = client.connect((A6, 40000), (B6, 443), 0.0)
    assert net.run(lambda: listener.ready == 1, timeout=1)
    peer = listener.accept()
    assert peer is not None and peer.remote == (A6, 40000)
    conn.send(b"hello over six")
    assert net.run(lambda: peer.next_event() is not None, timeout=1)


# ------------------------------------------------------------------ SYN cookies

def h6(key: bytes, saddr: str, daddr: str, sport: int, dport: int, count: int) -> int:
    """net/ipv6/syncookies.c cookie_hash: saddr, daddr, count (host order), sport, dport."""
    data = (socket.inet_pton(socket.AF_INET6, saddr) + socket.inet_pton(socket.AF_INET6, daddr)
            + struct.pack("<I", count & M32) + struct.pack("!HH", sport, dport))
    return siphash(key, data) & M32


@pytest.mark.parametrize(("saddr", "daddr", "sport", "dport", "isn", "count", "index"), [
    (A6, B6, 40000, 80, 0x1234_5678, 28_000_000, 3),
    ("fe80::1", "fe80::abcd:ef01:2345:6789", 1, 65535, M32, 0, 0),
    ("::1", "::1", 51515, 443, 0, 255, 2),
])
def test_ipv6_cookie_known_answer(saddr: str, daddr: str, sport: int, dport: int, isn: int,
                                  count: int, index: int) -> None:
    four = tuple_bytes(saddr, daddr, sport, dport)
    expected = (h6(K0, saddr, daddr, sport, dport, 0) + isn + (count << 24)
                + ((h6(K1, saddr, daddr, sport, dport, count) + index) & 0xFFFFFF)) & M32
    assert make_cookie((K0, K1), four, isn, count, index) == expected
    assert check_cookie((K0, K1), four, expected, isn, count) == index
    assert cookie_hash(K1, four, count) == h6(K1, saddr, daddr, sport, dport, count)


def test_ipv6_mss_table_is_linux_msstab() -> None:
    assert MSS_TABLE6 == (1220, 1420, 1440, 8940)
    assert [mss_index(m, MSS_TABLE6) for m in (536, 1220, 1419, 1420, 1460, 8940, 65535)] == [
        0, 0, 0, 1, 2, 3, 3]


@pytest.mark.parametrize(("mss", "kept"), [(None, 1220), (1440, 1440), (1460, 1440),
                                           (9000, 8940), (1300, 1220)])
def test_cookie_ack_over_ipv6_rebuilds_the_table_mss(mss: int | None, kept: int) -> None:
    cfg = CFG.with_(syncookies="always", mss=9000)
    cookies = SynCookies(cfg)
    syn = Segment(A6, B6, 40000, 80, 99, 0, SYN, 65535, Options(mss=mss, timestamps=(5, 0)))
    synack = cookies.synack(syn, 100.0)
    ts = synack.options.timestamps
    assert ts is not None
    ack = Segment(A6, B6, 40000, 80, 100, (synack.seq + 1) & M32, ACK, 500,
                  Options(timestamps=(6, ts[0])))
    found = cookies.check(ack, 130.0)
    assert found is not None and found.mss == kept
    assert cookies.check(ack.replace(src="2001:db8::3"), 130.0) is None


def test_ipv4_cookies_keep_their_table() -> None:
    cookies = SynCookies(CFG.with_(syncookies="always"))
    syn = Segment("10.0.0.1", "10.0.0.2", 40000, 80, 99, 0, SYN, 65535, Options(mss=1440))
    synack = cookies.synack(syn, 100.0)
    ack = Segment("10.0.0.1", "10.0.0.2", 40000, 80, 100, (synack.seq + 1) & M32, ACK, 500)
    found = cookies.check(ack, 100.0)
    assert found is not None and found.mss == 1440 and found.mss in MSS_TABLE


def test_always_cookies_connect_over_ipv6() -> None:
    client, server = Stack(CFG), Stack(CFG)
    listener = server.listen(B6, 80, config=CFG.with_(syncookies="always"))
    net = Network({A6: client, B6: server})
    conn = client.connect((A6, 40000), (B6, 80), 0.0)
    assert net.run(lambda: listener.ready == 1, timeout=1)
    peer = listener.accept()
    assert peer is not None and conn.state is peer.state is State.ESTABLISHED
    assert listener.counters["cookies_validated"] == 1
    assert peer.snd_mss == 1440  # the client offered 1460: the IPv6 table's 1500 - 60


# ------------------------------------------------------------------ TFO cookies

def test_tfo_cookie_over_ipv6_is_siphash_of_both_addresses() -> None:
    """tcp_fastopen.c: SipHash-2-4 of the 16-byte client then server address, little-endian."""
    key = parse_key("a0bf63f7-ed803d81-cd641d30-cebc4a90")
    data = socket.inet_pton(socket.AF_INET6, A6) + socket.inet_pton(socket.AF_INET6, B6)
    assert tfo_cookie(key, A6, B6) == struct.pack("<Q", siphash(key, data))
    assert tfo_cookie(key, A6, B6) != tfo_cookie(key, B6, A6)
