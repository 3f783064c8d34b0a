"""SYN cookies: the Linux encoding, its validation, and a listener that survives a flood.

Expected values are computed here from the formula in DESIGN.md with siphashc,
socket.inet_aton and struct, independently of tcpscapy.core.syncookies.
"""

from __future__ import annotations

import gc
import hashlib
import math
import random
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from siphashc import siphash

from tcpscapy.core import (
    ACK,
    FIN,
    RST,
    SYN,
    Config,
    DataReceived,
    LocalProtocolError,
    Options,
    Segment,
    State,
    flag_str,
)
from tcpscapy.core.connection import Connection
from tcpscapy.core.isn import timestamp_offset
from tcpscapy.core.seq import seq_diff, seq_le
from tcpscapy.core.stack import Listener, Stack
from tcpscapy.core.syncookies import (
    LIFETIME,
    MSS_TABLE,
    SynCookies,
    check_cookie,
    cookie_hash,
    decode_ts,
    derive_keys,
    encode_ts,
    make_cookie,
    mss_index,
    tuple_bytes,
)
from tcpscapy.sim import Network

A, B = "10.0.0.1", "10.0.0.2"
CLIENT, SERVER = (A, 40000), (B, 80)
K0, K1 = bytes(range(16)), bytes(range(16, 32))
KEYS = (K0, K1)
M32 = 0xFFFFFFFF
SECRET = b"syncookie-secret"
CFG = Config(secret=SECRET, msl=5.0)
ALWAYS = CFG.with_(syncookies="always")


# -------------------------------------------------------- independent formula

def h(key: bytes, saddr: str, daddr: str, sport: int, dport: int, count: int) -> int:
    data = socket.inet_aton(saddr) + socket.inet_aton(daddr) + struct.pack(
        "!HHI", sport, dport, count & M32)
    return siphash(key, data) & M32


def expected_cookie(saddr: str, daddr: str, sport: int, dport: int, isn: int, count: int,
                    index: int) -> int:
    return (h(K0, saddr, daddr, sport, dport, 0) + isn + (count << 24)
            + ((h(K1, saddr, daddr, sport, dport, count) + index) & 0xFFFFFF)) & M32


def syn(src: str = A, sport: int = 40000, *, seq: int = 0x1234_5678, dst: str = B,
        dport: int = 80, mss: int | None = 1460, wscale: int | None = 7, sack: bool = True,
        tsval: int | None = 1000) -> Segment:
    opts = Options(mss=mss, wscale=wscale, sack_permitted=sack,
                   timestamps=(tsval, 0) if tsval is not None else None)
    return Segment(src, dst, sport, dport, seq, 0, SYN, 64240, opts)


def ack_for(synack: Segment, syn_seg: Segment, *, payload: bytes = b"", flags: int = ACK,
            tsval: int = 2000) -> Segment:
    """The client's answer to a cookie SYN-ACK, echoing its TSval like any client."""
    ts = synack.options.timestamps
    opts = Options(timestamps=(tsval, ts[0])) if ts is not None else Options()
    return Segment(syn_seg.src, syn_seg.dst, syn_seg.sport, syn_seg.dport,
                   (syn_seg.seq + 1) & M32, (synack.seq + 1) & M32, flags, 502, opts, payload)


# ------------------------------------------------------------------ encoding

@pytest.mark.parametrize(("saddr", "daddr", "sport", "dport", "isn", "count", "index"), [
    ("10.0.0.1", "10.0.0.2", 40000, 80, 0x1234_5678, 28_000_000, 3),
    ("192.168.7.200", "172.16.0.1", 1, 65535, 0xFFFF_FFFF, 0, 0),
    ("10.248.0.2", "192.168.0.2", 51515, 443, 0, 255, 2),
])
def test_known_answer(saddr: str, daddr: str, sport: int, dport: int, isn: int, count: int,
                      index: int) -> None:
    four = tuple_bytes(saddr, daddr, sport, dport)
    cookie = make_cookie(KEYS, four, isn, count, index)
    assert cookie == expected_cookie(saddr, daddr, sport, dport, isn, count, index)
    assert check_cookie(KEYS, four, cookie, isn, count) == index
    assert cookie_hash(K1, four, count) == h(K1, saddr, daddr, sport, dport, count)


def test_one_known_answer_written_out() -> None:
    """The formula's parts for one 4-tuple, so a change of layout shows in the numbers."""
    four = tuple_bytes(A, B, 40000, 80)
    assert four == bytes([10, 0, 0, 1, 10, 0, 0, 2, 0x9C, 0x40, 0, 80])
    h0 = siphash(K0, four + bytes(4)) & M32
    h1 = siphash(K1, four + (7).to_bytes(4, "big")) & M32
    expected = (h0 + 100 + (7 << 24) + ((h1 + 1) & 0xFFFFFF)) & M32
    assert make_cookie(KEYS, four, 100, 7, 1) == expected


def test_keys_derived_from_the_secret_apart_from_isn_and_timestamps() -> None:
    k0, k1 = derive_keys(SECRET)
    assert k0 == hashlib.blake2s(key=SECRET, digest_size=16, person=b"syncook0").digest()
    assert k1 == hashlib.blake2s(key=SECRET, digest_size=16, person=b"syncook1").digest()
    assert k0 != k1 and derive_keys(b"another secret") != (k0, k1)
    for person in (b"isn", b"tsoff"):  # isn.py's derivations
        other = hashlib.blake2s(key=SECRET, digest_size=16, person=person).digest()
        assert other not in (k0, k1)


@pytest.mark.parametrize(("mss", "index"), [
    (None, 0), (0, 0), (100, 0), (535, 0), (536, 0), (1299, 0), (1300, 1), (1439, 1),
    (1440, 2), (1452, 2), (1459, 2), (1460, 3), (9000, 3), (65535, 3),
])
def test_every_mss_index_round_trips(mss: int | None, index: int) -> None:
    if mss is not None:
        assert mss_index(mss) == index
    cookies = SynCookies(CFG)
    s = syn(mss=mss)
    synack = cookies.synack(s, 10.0)
    found = cookies.check(ack_for(synack, s), 10.5)
    assert found is not None and found.mss == MSS_TABLE[index]


def test_expiry_at_the_counter_boundary() -> None:
    four = tuple_bytes(A, B, 40000, 80)
    count = 1000
    cookie = make_cookie(KEYS, four, 5, count, 3)
    assert check_cookie(KEYS, four, cookie, 5, count) == 3
    assert check_cookie(KEYS, four, cookie, 5, count + 1) == 3
    assert check_cookie(KEYS, four, cookie, 5, count + 2) is None
    assert check_cookie(KEYS, four, cookie, 5, count - 1) is None  # from the future
    assert check_cookie(KEYS, four, cookie, 5, count + 256) is None  # the 8-bit count wrapped


def test_expiry_in_time() -> None:
    cookies = SynCookies(CFG)
    s = syn()
    made = 60 * 1000 + 59.999  # the last instant of count 1000
    synack = cookies.synack(s, made)
    ack = ack_for(synack, s)
    assert cookies.check(ack, made) is not None
    assert cookies.check(ack, 60 * 1002 - 0.001) is not None  # still count 1001
    assert cookies.check(ack, 60 * 1002) is None  # count 1002: two counts later
    assert cookies.check(ack, 60 * 1000 - 0.001) is None  # before it was made


def test_tampered_ack_is_rejected() -> None:
    cookies = SynCookies(CFG)
    s = syn(mss=1460)  # index 3, the top of the table: one more falls off it
    synack = cookies.synack(s, 100.0)
    good = ack_for(synack, s)
    assert cookies.check(good, 100.0) is not None
    tampered = [
        good.replace(ack=(good.ack + 1) & M32),
        good.replace(ack=(good.ack + (1 << 24)) & M32),  # another count
        good.replace(ack=good.ack ^ 0x0000_8000),
        good.replace(seq=(good.seq - 1) & M32),
        good.replace(seq=(good.seq + 1000) & M32),
        good.replace(sport=good.sport + 1),
        good.replace(dport=81),
        good.replace(src="10.0.0.3"),
        good.replace(dst="10.0.0.9"),
    ]
    for seg in tampered:
        assert cookies.check(seg, 100.0) is None, seg
    assert SynCookies(CFG.with_(secret=b"not-the-same-key")).check(good, 100.0) is None


def test_small_seq_shifts_move_the_mss_index_as_on_linux() -> None:
    """The client ISN enters additively, so ISN+k reads as index-k: no gain for anyone
    who can only guess (the hashes still have to match), documented here."""
    cookies = SynCookies(CFG)
    s = syn(mss=1460)
    good = ack_for(cookies.synack(s, 100.0), s)
    shifted = cookies.check(good.replace(seq=(good.seq + 1) & M32), 100.0)
    assert shifted is not None and shifted.mss == 1440


# ---------------------------------------------------------------- timestamps

CLOCKS = [0, 1, 63, 64, 65, 1000, 123_456_789, M32 - 64, M32 - 1, M32]


@pytest.mark.parametrize("clock", CLOCKS)
def test_option_bits_round_trip_and_tsval_stays_behind_the_clock(clock: int) -> None:
    for ws in (None, *range(15)):
        for sack in (False, True):
            for ecn in (False, True):
                ts = encode_ts(clock, ws, sack, ecn)
                assert decode_ts(ts) == (ws, sack, ecn)
                assert seq_le(ts, clock) and 0 <= seq_diff(clock, ts) < 64
                assert 0 <= ts <= M32


def test_bad_window_scale_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="window scale"):
        encode_ts(1000, 15, False)


def test_ts_bits_layout() -> None:
    assert encode_ts(64 * 10 + 63, 7, True, True) == 64 * 10 + (7 | 16 | 32)
    assert encode_ts(64 * 10, None, False) == 64 * 9 + 15  # would be ahead: one slot back


def test_synack_tsval_never_exceeds_the_connection_clock() -> None:
    cookies = SynCookies(CFG)
    offset = timestamp_offset(SERVER, CLIENT, SECRET)
    for now in (0.0, 0.001, 0.063, 0.064, 12.3456, 86_400.0):
        tsval = cookies.synack(syn(), now).options.timestamps[0]  # type: ignore[index]
        clock = (int(now * 1000) + offset) & M32
        assert seq_le(tsval, clock) and seq_diff(clock, tsval) < 64


def test_synack_carries_what_a_connection_would_send() -> None:
    s = syn(wscale=3)
    cookie = SynCookies(CFG).synack(s, 5.0)
    conn = Connection(SERVER, CLIENT, CFG)
    conn.accept_syn(s, 5.0)
    (normal,) = conn.segments_to_send(5.0)
    assert (cookie.flags, cookie.ack, cookie.window) == (normal.flags, normal.ack, normal.window)
    assert (cookie.src, cookie.dst, cookie.sport, cookie.dport) == \
        (normal.src, normal.dst, normal.sport, normal.dport)
    co, no = cookie.options, normal.options
    assert (co.mss, co.wscale, co.sack_permitted) == (no.mss, no.wscale, no.sack_permitted)
    assert co.timestamps is not None and no.timestamps is not None
    assert co.timestamps[1] == no.timestamps[1] == 1000
    assert cookie.seq != normal.seq


def test_without_timestamps_no_wscale_and_no_sack() -> None:
    cookies = SynCookies(CFG)
    s = syn(tsval=None, wscale=7, sack=True)
    synack = cookies.synack(s, 1.0)
    assert synack.options == Options(mss=CFG.mss)
    found = cookies.check(ack_for(synack, s), 1.0)
    assert found is not None and (found.wscale, found.sack) == (None, False)


def test_option_bits_we_would_not_have_agreed_to_are_rejected() -> None:
    s = syn()
    synack = SynCookies(CFG).synack(s, 1.0)  # carries wscale 7 and SACK
    ack = ack_for(synack, s)
    assert SynCookies(CFG.with_(sack=False)).check(ack, 1.0) is None
    assert SynCookies(CFG.with_(wscale=None)).check(ack, 1.0) is None
    assert SynCookies(CFG.with_(timestamps=False)).check(ack, 1.0) is None
    no_ts = ack.replace(options=Options())  # a client may drop timestamps: no options then
    found = SynCookies(CFG).check(no_ts, 1.0)
    assert found is not None and (found.mss, found.wscale, found.sack) == (1460, None, False)


# ------------------------------------------------------------------ property

ipv4 = st.integers(0, M32).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))
port = st.integers(1, 65535)
u32 = st.integers(0, M32)


@settings(max_examples=300, deadline=None)
@given(src=ipv4, dst=ipv4, sport=port, dport=port, isn=u32, tsval=u32,
       mss=st.none() | st.integers(0, 65535), ws=st.none() | st.integers(0, 20),
       sack=st.booleans(), ts=st.booleans(), now=st.floats(0, 2e9),
       later=st.floats(0, 1, exclude_max=True), cfg_ws=st.none() | st.integers(0, 14))
def test_any_cookie_validates_within_its_lifetime(
        src: str, dst: str, sport: int, dport: int, isn: int, tsval: int, mss: int | None,
        ws: int | None, sack: bool, ts: bool, now: float, later: float,
        cfg_ws: int | None) -> None:
    cfg = CFG.with_(wscale=cfg_ws)
    cookies = SynCookies(cfg)
    s = syn(src, sport, seq=isn, dst=dst, dport=dport, mss=mss, wscale=ws, sack=sack,
            tsval=tsval if ts else None)
    synack = cookies.synack(s, now)
    count = int(now // 60)
    end = math.nextafter(60.0 * (count + 2), 0.0)  # the last instant the cookie is valid
    arrive = min(now + later * (end - now), end)
    found = cookies.check(ack_for(synack, s, tsval=tsval), arrive)
    assert found is not None
    peer_mss = 536 if mss is None else mss
    assert found.mss == max([m for m in MSS_TABLE if m <= peer_mss], default=536)
    scaled = ts and ws is not None and cfg_ws is not None
    assert found.wscale == (min(ws, 14) if scaled and ws is not None else None)
    assert found.sack is (ts and sack)
    assert (synack.options.wscale is not None) is scaled
    if ts:
        tsv = synack.options.timestamps[0]  # type: ignore[index]
        clock = (int(now * 1000) + timestamp_offset((dst, dport), (src, sport), SECRET)) & M32
        assert seq_le(tsv, clock) and seq_diff(clock, tsv) < 64


@settings(max_examples=200, deadline=None)
@given(src=ipv4, sport=port, isn=u32, now=st.floats(0, 2e9),
       delta=st.integers(4, M32 - 4), field=st.sampled_from(["seq", "ack"]))
def test_a_shifted_seq_or_ack_is_rejected(src: str, sport: int, isn: int, now: float,
                                           delta: int, field: str) -> None:
    cookies = SynCookies(CFG)
    s = syn(src, sport, seq=isn)
    ack = ack_for(cookies.synack(s, now), s)
    bad = ack.replace(**{field: (getattr(ack, field) + delta) & M32})
    assert cookies.check(bad, now) is None


# ------------------------------------------------------ listener and stacks

def events_data(conn: Connection) -> bytes:
    out = b""
    while (e := conn.next_event()) is not None:
        if isinstance(e, DataReceived):
            out += e.data
            conn.data_consumed(len(e.data))
    return out


def network(server_cfg: Config, client_cfg: Config = CFG, *, backlog: int = 16
            ) -> tuple[Network, Stack, Stack, Listener]:
    client, server = Stack(client_cfg), Stack(CFG)
    listener = server.listen(B, 80, backlog=backlog, config=server_cfg)
    return Network({A: client, B: server}), client, server, listener


def exchange(net: Network, conn: Connection, peer: Connection, size: int) -> None:
    """Send `size` random bytes each way and check they arrive intact."""
    rng = random.Random(size)
    up, down = rng.randbytes(size), rng.randbytes(size)
    got_up, got_down = bytearray(), bytearray()
    sent = [0, 0]

    def pump(_: Network | None = None) -> None:
        for i, (side, data) in enumerate(((conn, up), (peer, down))):
            if sent[i] < size:
                sent[i] += side.send(data[sent[i]:sent[i] + 65536])
        got_up.extend(events_data(peer))
        got_down.extend(events_data(conn))

    def done() -> bool:
        return len(got_up) == size and len(got_down) == size

    net.on_step = pump
    for _ in range(200):  # the network goes idle when both sides wait for the app: prime it
        pump()
        if net.run(done, timeout=1):
            break
    net.on_step = None
    assert bytes(got_up) == up and bytes(got_down) == down


def never_handshaking(listener: Listener) -> Callable[[Network], None]:
    def check(_: Network) -> None:
        assert not listener._handshaking
    return check


def test_always_mode_connects_statelessly_and_transfers_both_ways() -> None:
    net, client, server, listener = network(ALWAYS, CFG.with_(wscale=5))
    net.on_step = never_handshaking(listener)
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: listener.ready == 1, timeout=1)
    peer = listener.accept()
    assert peer is not None and peer.state is conn.state is State.ESTABLISHED
    syn_seg, synack, _ = net.sent()[:3]
    assert flag_str(synack.flags) == "SA" and peer.iss == synack.seq
    assert peer.irs == syn_seg.seq and conn.irs == synack.seq
    # Negotiated as encoded: the client's wscale 5 came back out of the TSval.
    assert (peer.ws_ok, peer.snd_wscale, peer.rcv_wscale) == (True, 5, 7)
    assert (conn.ws_ok, conn.snd_wscale, conn.rcv_wscale) == (True, 7, 5)
    assert peer.sack_ok and conn.sack_ok and peer.ts_ok and conn.ts_ok
    assert peer.snd_mss == conn.snd_mss == 1460
    exchange(net, conn, peer, 300_000)
    later = [s.options.timestamps[0] for s in net.sent() if s.src == B and s.options.timestamps]
    assert all(seq_le(later[0], t) for t in later)  # the cookie TSval comes first
    assert listener.counters == {"syns_received": 1, "syns_dropped": 0, "cookies_sent": 1,
                                 "cookies_validated": 1, "cookies_rejected": 0,
                                 "listen_overflows": 0, "tfo_passive": 0,
                                 "tfo_cookie_requests": 0, "tfo_passive_fail": 0,
                                 "tfo_overflows": 0}


def test_always_mode_client_without_timestamps_gets_no_wscale_and_no_sack() -> None:
    net, client, _, listener = network(ALWAYS, CFG.with_(timestamps=False))
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: listener.ready == 1, timeout=1)
    peer = listener.accept()
    assert peer is not None
    assert not (peer.ws_ok or peer.sack_ok or peer.ts_ok)
    assert not (conn.ws_ok or conn.sack_ok or conn.ts_ok)  # the SYN-ACK offered none
    assert peer.snd_mss == 1460
    exchange(net, conn, peer, 200_000)


def test_always_mode_third_ack_carrying_data() -> None:
    net, client, _, listener = network(ALWAYS)
    net.drop = lambda seg: seg.src == A and seg.flags == ACK and not seg.payload
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: conn.state is State.ESTABLISHED, timeout=1)
    assert listener.ready == 0 and listener.cookies_validated == 0
    conn.send(b"GET / HTTP/1.0\r\n\r\n")
    assert net.run(lambda: listener.ready == 1, timeout=0.5)
    peer = listener.accept()
    assert peer is not None and events_data(peer) == b"GET / HTTP/1.0\r\n\r\n"
    assert listener.cookies_validated == 1 and peer.ts_ok and peer.sack_ok


def test_cookie_ack_with_fin_reaches_close_wait() -> None:
    stack = Stack(CFG)
    listener = stack.listen(B, 80, config=ALWAYS)
    s = syn()
    stack.receive(s, 0.0)
    (synack,) = stack.segments_to_send(0.0)
    stack.receive(ack_for(synack, s, payload=b"bye", flags=ACK | FIN), 0.1)
    peer = listener.accept()
    assert peer is not None and peer.state is State.CLOSE_WAIT
    assert events_data(peer) == b"bye"


def spoof_syns(stack: Stack, n: int, now: float, start: int = 0) -> None:
    for i in range(start, start + n):
        src = f"10.66.{(i >> 8) & 255}.{i & 255}"
        stack.receive(syn(src, 1024 + i % 60000, seq=(i * 2654435761) & M32), now)


def test_auto_mode_real_client_connects_through_a_full_syn_queue() -> None:
    net, client, server, listener = network(CFG, backlog=4)
    spoof_syns(server, 4, 0.0)
    assert len(listener._handshaking) == 4 and listener.cookies_sent == 0
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.on_step = lambda _: spoof_syns(server, 10, net.now, 4)  # the flood goes on
    assert net.run(lambda: listener.ready == 1, timeout=0.5)  # no SYN retransmission needed
    peer = listener.accept()
    assert peer is not None and peer.remote == CLIENT
    assert len(listener._handshaking) == 4  # the spoofed half-opens, nothing more
    assert listener.cookies_validated == 1
    assert listener.cookies_sent == listener.syns_received - 4
    net.on_step = None
    exchange(net, conn, peer, 50_000)


def test_never_mode_with_a_small_backlog_stalls_the_client() -> None:
    net, client, server, listener = network(CFG.with_(syncookies="never"), backlog=4)
    spoof_syns(server, 4, 0.0)
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert not net.run(lambda: conn.state is State.ESTABLISHED, timeout=30)
    assert conn.state is State.SYN_SENT and listener.ready == 0
    assert listener.syns_dropped == 5  # the SYN at 0 s and its retransmissions at 1, 3, 7, 15 s
    assert listener.cookies_sent == 0
    assert not [s for s in net.sent() if s.dst == A]  # the client never heard back


def test_flood_in_always_mode_keeps_no_state() -> None:
    stack = Stack(CFG)
    listener = stack.listen(B, 80, config=ALWAYS)
    attrs = set(vars(listener))

    def flood(start: int, n: int) -> list[Segment]:
        out = []
        for i in range(start, start + n, 1000):
            spoof_syns(stack, 1000, i / 1000, i)
            out = stack.segments_to_send(i / 1000)  # the driver drains every turn
            assert len(out) == 1000
        return out

    first = flood(0, 1000)
    gc.collect()
    before = len(gc.get_objects())
    last = flood(1000, 99_000)
    del first  # both counts hold one batch of SYN-ACKs
    gc.collect()
    after = len(gc.get_objects())
    assert after - before < 200, after - before  # one batch of SYN-ACKs, not 99,000
    assert not [o for o in gc.get_objects() if isinstance(o, Connection)]
    assert not stack._conns and not stack._out
    assert not listener._handshaking and not listener._ready and set(vars(listener)) == attrs
    assert listener.counters["syns_received"] == listener.cookies_sent == 100_000
    assert listener.syns_dropped == 0
    assert all(flag_str(s.flags) == "SA" for s in last)
    # The cookies are real: the last spoofed SYN's could be completed.
    i = 99_999
    spoofed = syn(f"10.66.{(i >> 8) & 255}.{i & 255}", 1024 + i % 60000, seq=(i * 2654435761) & M32)
    assert SynCookies(ALWAYS).check(ack_for(last[-1], spoofed), 100.0) is not None


def test_invalid_and_expired_cookies_get_rst_and_are_counted() -> None:
    stack = Stack(CFG)
    listener = stack.listen(B, 80, config=ALWAYS)
    s = syn()
    stack.receive(s, 0.0)
    (synack,) = stack.segments_to_send(0.0)
    bad = ack_for(synack, s).replace(ack=(synack.seq + 2) & M32)
    stack.receive(bad, 0.1)
    (rst,) = stack.segments_to_send(0.1)
    assert (flag_str(rst.flags), rst.seq) == ("R", bad.ack)
    stack.receive(ack_for(synack, s), 120.0)  # count 2: expired
    (rst,) = stack.segments_to_send(120.0)
    assert flag_str(rst.flags) == "R"
    assert (listener.cookies_rejected, listener.cookies_validated) == (2, 0)
    assert not stack.connections and listener.ready == 0


def test_acks_are_not_taken_for_cookies_when_none_are_in_play() -> None:
    for mode in ("never", "auto"):
        stack = Stack(CFG)
        listener = stack.listen(B, 80, config=CFG.with_(syncookies=mode))
        s = syn()
        good = ack_for(SynCookies(CFG).synack(s, 0.0), s)  # a valid cookie, but we sent none
        stack.receive(good, 0.0)
        (rst,) = stack.segments_to_send(0.0)
        assert flag_str(rst.flags) == "R"
        assert listener.cookies_rejected == listener.cookies_validated == 0


def test_auto_mode_checks_cookies_only_for_a_lifetime_after_the_last() -> None:
    stack = Stack(CFG)
    listener = stack.listen(B, 80, config=CFG, backlog=1)
    spoof_syns(stack, 1, 1.0)  # the SYN queue is full
    stack.segments_to_send(1.0)
    s = syn()
    stack.receive(s, 1.0)
    (synack,) = stack.segments_to_send(1.0)
    stack.receive(ack_for(synack, s).replace(seq=1), 1.0 + LIFETIME - 1)
    assert listener.cookies_rejected == 1  # checked: cookies were recently sent
    stack.receive(ack_for(synack, s).replace(seq=1), 1.0 + LIFETIME)
    assert listener.cookies_rejected == 1  # not checked any more


def test_accept_queue_bound_holds_with_cookies() -> None:
    """backlog 1: the second cookie ACK is dropped (as Linux) until accept() makes room;
    the client's data retransmission then carries the cookie again."""
    client, server = Stack(CFG), Stack(CFG)
    listener = server.listen(B, 80, backlog=1, config=ALWAYS)
    net = Network({A: client, B: server})
    net.on_step = lambda _: assert_bounded(listener)
    first = client.connect((A, 40001), SERVER, 0.0)
    second = client.connect((A, 40002), SERVER, 0.0)
    second.send(b"hello")
    assert net.run(lambda: listener.ready == 1 and listener.listen_overflows >= 1, timeout=0.5)
    late = client.connect((A, 40003), SERVER, net.now)
    net.run(timeout=0.2)
    assert listener.syns_dropped >= 1 and late.state is State.SYN_SENT  # accept queue full
    got = listener.accept()
    assert got is not None and got.remote == (A, 40001) and first.state is State.ESTABLISHED
    assert net.run(lambda: listener.ready == 1, timeout=3)  # the data's RTO retransmission
    peer = listener.accept()
    assert peer is not None and peer.remote == (A, 40002) and events_data(peer) == b"hello"
    assert listener.cookies_validated == listener.listen_overflows + 2


def assert_bounded(listener: Listener) -> None:
    assert len(listener._ready) <= listener.backlog


def test_auto_mode_holds_a_handshake_back_while_the_accept_queue_is_full() -> None:
    client, server = Stack(CFG), Stack(CFG)
    listener = server.listen(B, 80, backlog=1, config=CFG)
    net = Network({A: client, B: server})
    net.on_step = lambda _: assert_bounded(listener)
    lost = {"n": 0}

    def lose_first_ack_of_40001(seg: Segment) -> bool:
        if seg.sport == 40001 and seg.flags == ACK and lost["n"] == 0:
            lost["n"] = 1
            return True
        return False

    net.drop = lose_first_ack_of_40001
    one = client.connect((A, 40001), SERVER, 0.0)  # SYN queue: one SYN-RECEIVED, now full
    two = client.connect((A, 40002), SERVER, 0.001)  # gets a cookie, completes first
    assert net.run(lambda: listener.ready == 1, timeout=0.5)
    assert listener.cookies_sent == 1
    half = server.connection(SERVER, (A, 40001))
    assert half is not None
    assert net.run(lambda: listener.listen_overflows == 1, timeout=2)  # SYN-ACK resent at 1 s
    assert half.state is State.SYN_RECEIVED and one.state is two.state is State.ESTABLISHED
    got = listener.accept()
    assert got is not None and got.remote == (A, 40002)
    assert net.run(lambda: listener.ready == 1, timeout=5)  # the next SYN-ACK resend, at 3 s
    completed = listener.accept()
    assert completed is half and completed.state is State.ESTABLISHED


def test_syn_ack_and_rst_to_the_listener() -> None:
    stack = Stack(CFG)
    listener = stack.listen(B, 80, config=ALWAYS)
    s = syn()
    stack.receive(s, 0.0)
    (synack,) = stack.segments_to_send(0.0)
    stack.receive(ack_for(synack, s, flags=SYN | ACK), 0.0)  # SYN-ACK to a listener: RST
    stack.receive(ack_for(synack, s, flags=RST | ACK), 0.0)  # RST: ignored
    out = stack.segments_to_send(0.0)
    assert [flag_str(o.flags) for o in out] == ["R"]
    assert listener.cookies_validated == listener.cookies_rejected == 0


def test_unknown_mode_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="syncookies"):
        Stack(CFG).listen(B, 80, config=CFG.with_(syncookies="sometimes"))
