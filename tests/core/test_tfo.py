"""TCP Fast Open (RFC 7413): cookies as Linux makes them, the server's answers to each
kind of SYN, the client's SYN and its reading of the SYN-ACK, and whole exchanges
between two engines on the fake clock."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpscapy.core import (
    ACK,
    RST,
    SYN,
    Config,
    DataReceived,
    Event,
    LocalProtocolError,
    Options,
    Segment,
    State,
    StateChanged,
    encode_options,
    parse_options,
)
from tcpscapy.core.connection import Connection
from tcpscapy.core.events import TfoCookieReceived, TfoIgnored
from tcpscapy.core.seq import seq_add
from tcpscapy.core.stack import Stack
from tcpscapy.core.tfo import (
    CookieKeys,
    KeyMatch,
    derive_key,
    format_key,
    make_cookie,
    parse_key,
    parse_keys,
    rotate_key,
)
from tcpscapy.sim import Network
from tests.core.states import LOCAL, REMOTE, from_peer

# The known answer of DESIGN.md: these addresses under this key make this cookie.
KEY_TEXT = "a0bf63f7-ed803d81-cd641d30-cebc4a90"
KEY = struct.pack("<4I", 0xA0BF63F7, 0xED803D81, 0xCD641D30, 0xCEBC4A90)
A, B = "10.248.0.2", "192.168.0.2"  # client, server
KNOWN_COOKIE = bytes.fromhex("00abaaabe8e954c2")
OTHER_KEY = bytes(range(16))

SERVER = (B, 80)
CLIENT_CFG = Config(secret=b"tfo-client", msl=5.0)
SERVER_CFG = Config(secret=b"tfo-server", msl=5.0, tfo_server=True, tfo_key=KEY)
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
REPLY = b"HTTP/1.0 200 OK\r\n\r\nhello"


# ------------------------------------------------------------------ cookies

def test_known_answer_vector() -> None:
    assert parse_key(KEY_TEXT) == KEY
    assert make_cookie(KEY, A, B) == KNOWN_COOKIE
    assert CookieKeys(KEY).cookie(A, B) == KNOWN_COOKIE
    assert make_cookie(KEY, B, A) != KNOWN_COOKIE  # client first, then server


def test_ipv6_cookie_hashes_both_sixteen_byte_addresses() -> None:
    cookie = make_cookie(KEY, "2001:db8::1", "2001:db8::2")
    assert len(cookie) == 8
    assert cookie != make_cookie(KEY, "2001:db8::1", "2001:db8::3")


def test_key_text_round_trip() -> None:
    assert format_key(parse_key(KEY_TEXT)) == KEY_TEXT
    assert format_key(parse_key(" A0BF63F7-ED803D81-CD641D30-CEBC4A90\n")) == KEY_TEXT
    assert parse_key("1-2-3-4") == struct.pack("<4I", 1, 2, 3, 4)  # short words, as sscanf %x
    assert parse_keys(f"{KEY_TEXT},00000001-00000002-00000003-00000004") == (
        KEY, struct.pack("<4I", 1, 2, 3, 4))
    assert parse_keys(KEY_TEXT) == (KEY, None)


@given(st.binary(min_size=16, max_size=16))
def test_any_key_survives_format_and_parse(key: bytes) -> None:
    assert parse_key(format_key(key)) == key


@pytest.mark.parametrize("text", [
    "", "a0bf63f7-ed803d81-cd641d30", "a0bf63f7ed803d81cd641d30cebc4a90",
    "a0bf63f7-ed803d81-cd641d30-cebc4a90-0", "xyz-1-2-3", "100000000-1-2-3",
    "a0bf63f7--cd641d30-cebc4a90"])
def test_bad_key_text_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a TFO key"):
        parse_key(text)


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CookieKeys(b"short")
    with pytest.raises(ValueError, match="16 bytes"):
        format_key(b"short")


def test_validation_with_primary_and_backup_after_rotation() -> None:
    before = CookieKeys(KEY)
    old_cookie = before.cookie(A, B)
    after = CookieKeys(OTHER_KEY, backup=KEY)
    new_cookie = after.cookie(A, B)
    assert new_cookie != old_cookie
    assert before.check(old_cookie, A, B) is KeyMatch.PRIMARY
    assert after.check(new_cookie, A, B) is KeyMatch.PRIMARY
    assert after.check(old_cookie, A, B) is KeyMatch.BACKUP
    assert after.check(bytes(8), A, B) is KeyMatch.NONE
    assert after.check(old_cookie[:4], A, B) is KeyMatch.NONE
    assert after.check(make_cookie(KEY, "10.248.0.3", B), A, B) is KeyMatch.NONE  # another client
    assert CookieKeys(OTHER_KEY).check(old_cookie, A, B) is KeyMatch.NONE  # backup dropped


def test_rotate_key_keeps_the_current_key_as_backup() -> None:
    derived = Config(secret=b"s")
    rotated = rotate_key(derived, OTHER_KEY)
    assert rotated.tfo_key == OTHER_KEY and rotated.tfo_backup_key == derive_key(b"s")
    twice = rotate_key(rotated, KEY)
    keys = CookieKeys.from_config(twice)
    assert keys == CookieKeys(KEY, OTHER_KEY)
    assert keys.check(make_cookie(derive_key(b"s"), A, B), A, B) is KeyMatch.NONE


def test_derived_key_depends_on_the_secret() -> None:
    assert len(derive_key(b"one")) == 16
    assert derive_key(b"one") != derive_key(b"two")
    assert CookieKeys.from_config(Config(secret=b"one")).primary == derive_key(b"one")
    assert CookieKeys.from_config(SERVER_CFG).primary == KEY


# ------------------------------------------------------------------ options

@pytest.mark.parametrize(("opts", "wire"), [
    (Options(tfo_cookie=b""), bytes([34, 2, 1, 1])),
    (Options(tfo_cookie=KNOWN_COOKIE), bytes([34, 10]) + KNOWN_COOKIE + bytes([1, 1])),
    (Options(tfo_cookie=b"", tfo_experimental=True), bytes([254, 4, 0xF9, 0x89])),
    (Options(tfo_cookie=KNOWN_COOKIE, tfo_experimental=True),
     bytes([254, 12, 0xF9, 0x89]) + KNOWN_COOKIE),
])
def test_tfo_option_in_both_formats(opts: Options, wire: bytes) -> None:
    assert encode_options(opts) == wire
    assert parse_options(wire) == opts


def test_kind_254_with_another_magic_is_not_tfo() -> None:
    opts = parse_options(bytes([254, 6, 0x12, 0x34, 0xAB, 0xCD]))
    assert opts.tfo_cookie is None
    assert opts.unknown == ((254, bytes([0x12, 0x34, 0xAB, 0xCD])),)


# ---------------------------------------------- the server, one SYN at a time
# The connection is the server at LOCAL (10.0.0.1); the client is REMOTE (10.0.0.2).

TABLE_KEY_COOKIE = make_cookie(KEY, REMOTE[0], LOCAL[0])
TABLE_FRESH = TABLE_KEY_COOKIE
TABLE_OLD_COOKIE = make_cookie(OTHER_KEY, REMOTE[0], LOCAL[0])
TABLE_CFG = Config(timestamps=False, delayed_ack=0.0, secret=b"t", tfo_server=True, tfo_key=KEY,
                   tfo_backup_key=OTHER_KEY)
ISN = 0xFFFF_FFF0  # the data in the SYN crosses 2**32
DATA = b"x" * 30


@dataclass(frozen=True)
class Answer:
    acked: int  # bytes of the SYN's data the SYN-ACK acknowledges
    cookie: bytes | None  # what the SYN-ACK's TFO option carries
    fast_open: bool  # a Fast Open connection (counts as pending)


SERVER_CASES: list[tuple[str, Config, bytes | None, bytes, Answer]] = [
    ("plain SYN", TABLE_CFG, None, b"", Answer(0, None, False)),
    ("plain SYN with data", TABLE_CFG, None, DATA, Answer(0, None, False)),
    ("cookie request", TABLE_CFG, b"", b"", Answer(0, TABLE_FRESH, False)),
    ("cookie request with data", TABLE_CFG, b"", DATA, Answer(0, TABLE_FRESH, False)),
    ("valid cookie and data", TABLE_CFG, TABLE_KEY_COOKIE, DATA, Answer(30, None, True)),
    ("valid cookie, no data", TABLE_CFG, TABLE_KEY_COOKIE, b"", Answer(0, None, True)),
    ("backup-key cookie and data", TABLE_CFG, TABLE_OLD_COOKIE, DATA,
     Answer(30, TABLE_FRESH, True)),
    ("invalid cookie and data", TABLE_CFG, b"12345678", DATA, Answer(0, TABLE_FRESH, False)),
    ("malformed cookie length", TABLE_CFG, b"123", DATA, Answer(0, None, False)),
    ("no-cookie mode, plain SYN with data", TABLE_CFG.with_(tfo_no_cookie=True), None, DATA,
     Answer(30, None, True)),
    ("no-cookie mode, invalid cookie", TABLE_CFG.with_(tfo_no_cookie=True), b"12345678", DATA,
     Answer(30, None, True)),
    ("no-cookie mode, plain SYN", TABLE_CFG.with_(tfo_no_cookie=True), None, b"",
     Answer(0, None, False)),
    ("server TFO off", TABLE_CFG.with_(tfo_server=False), TABLE_KEY_COOKIE, DATA,
     Answer(0, None, False)),
]


def accept(cfg: Config, cookie: bytes | None, payload: bytes, *, experimental: bool = False,
           tfo_allowed: bool = True) -> tuple[Connection, Segment, list[Event]]:
    conn = Connection(LOCAL, REMOTE, cfg)
    opts = Options(mss=1460, tfo_cookie=cookie, tfo_experimental=experimental)
    conn.accept_syn(from_peer(SYN, ISN, options=opts, payload=payload), 0.0,
                    tfo_allowed=tfo_allowed)
    (synack,) = conn.segments_to_send(0.0)
    evs = []
    while (e := conn.next_event()) is not None:
        evs.append(e)
    return conn, synack, evs


@pytest.mark.parametrize(("what", "cfg", "cookie", "payload", "answer"), SERVER_CASES,
                         ids=[case[0] for case in SERVER_CASES])
def test_server_answers_each_kind_of_syn(what: str, cfg: Config, cookie: bytes | None,
                                         payload: bytes, answer: Answer) -> None:
    conn, synack, evs = accept(cfg, cookie, payload)
    assert synack.flags == SYN | ACK
    assert synack.ack == seq_add(ISN, 1 + answer.acked)
    assert synack.options.tfo_cookie == answer.cookie
    assert conn.tfo_pending is answer.fast_open
    delivered = [e.data for e in evs if isinstance(e, DataReceived)]
    assert delivered == ([payload] if answer.acked else [])


def test_syn_data_reaches_the_application_in_syn_received() -> None:
    _, _, evs = accept(TABLE_CFG, TABLE_KEY_COOKIE, DATA)
    assert evs == [StateChanged(State.CLOSED, State.SYN_RECEIVED), DataReceived(DATA)]


@pytest.mark.parametrize("experimental", [False, True])
def test_server_answers_in_the_clients_format(experimental: bool) -> None:
    _, synack, _ = accept(TABLE_CFG, b"", b"", experimental=experimental)
    assert synack.options.tfo_experimental is experimental
    kind = bytes([254, 12, 0xF9, 0x89]) if experimental else bytes([34, 10])
    assert kind + TABLE_FRESH in encode_options(synack.options)


def test_pending_limit_turns_fast_open_off_for_the_syn() -> None:
    conn, synack, evs = accept(TABLE_CFG, TABLE_KEY_COOKIE, DATA, tfo_allowed=False)
    assert synack.ack == seq_add(ISN, 1) and synack.options.tfo_cookie is None
    assert not conn.tfo_pending and conn.tfo is None
    assert not any(isinstance(e, DataReceived) for e in evs)


def test_retransmitted_synack_acks_the_data_and_keeps_the_cookie() -> None:
    conn, first, _ = accept(TABLE_CFG, TABLE_OLD_COOKIE, DATA)
    conn.handle_timer(conn.get_timer() or 0.0)
    (again,) = conn.segments_to_send(1.0)
    assert again.flags == SYN | ACK and again.ack == first.ack == seq_add(ISN, 31)
    assert again.options.tfo_cookie == TABLE_FRESH


# ------------------------------------------------------ the client's SYN

def client_syn(data: bytes, **tfo: object) -> tuple[Connection, Segment]:
    conn = Connection(LOCAL, REMOTE, Config(secret=b"c"))
    conn.connect(0.0, data=data, **tfo)  # type: ignore[arg-type]
    (syn,) = conn.segments_to_send(0.0)
    return conn, syn


@pytest.mark.parametrize(("data", "tfo", "in_syn"), [
    (b"hi", {}, 0),  # no Fast Open: data after the handshake
    (b"hi", {"tfo_cookie": b""}, 0),  # a cookie request carries no data
    (b"hi", {"tfo_cookie": KNOWN_COOKIE}, 2),
    (bytes(3000), {"tfo_cookie": KNOWN_COOKIE}, 536 - 40),  # no cached MSS: 536
    (bytes(3000), {"tfo_cookie": KNOWN_COOKIE, "tfo_mss": 1460}, 1460 - 40),
    (bytes(3000), {"tfo_cookie": KNOWN_COOKIE, "tfo_mss": 9000}, 1460 - 40),  # bounded by ours
])
def test_client_syn_carries_cookie_and_data(data: bytes, tfo: dict[str, object],
                                            in_syn: int) -> None:
    conn, syn = client_syn(data, **tfo)
    assert syn.flags == SYN
    assert syn.options.tfo_cookie == tfo.get("tfo_cookie")
    assert syn.payload == data[:in_syn]
    assert conn.snd_nxt == seq_add(conn.iss, 1 + in_syn)


def test_client_experimental_format() -> None:
    _, syn = client_syn(b"hi", tfo_cookie=KNOWN_COOKIE, tfo_experimental=True)
    assert encode_options(syn.options).count(bytes([254, 12, 0xF9, 0x89]) + KNOWN_COOKIE) == 1


@pytest.mark.parametrize("cookie", [b"abc", b"abcde", bytes(18)])
def test_client_refuses_a_malformed_cookie(cookie: bytes) -> None:
    conn = Connection(LOCAL, REMOTE, Config())
    with pytest.raises(LocalProtocolError, match="TFO cookie"):
        conn.connect(0.0, data=b"x", tfo_cookie=cookie)


def test_retransmitted_syn_carries_no_data_and_no_cookie() -> None:
    conn, first = client_syn(b"hello", tfo_cookie=KNOWN_COOKIE)
    assert first.payload == b"hello"
    conn.handle_timer(conn.get_timer() or 0.0)
    (again,) = conn.segments_to_send(1.0)
    assert again.flags == SYN and again.seq == first.seq
    assert again.payload == b"" and again.options.tfo_cookie is None


def synack_for(conn: Connection, acked: int, cookie: bytes | None = None) -> Segment:
    return from_peer(SYN | ACK, 5000, seq_add(conn.iss, 1 + acked),
                     options=Options(mss=1400, tfo_cookie=cookie))


def client_events(conn: Connection) -> list[Event]:
    evs = []
    while (e := conn.next_event()) is not None:
        evs.append(e)
    return [e for e in evs if isinstance(e, (TfoCookieReceived, TfoIgnored))]


def test_synack_acking_the_data_completes_it() -> None:
    conn, _ = client_syn(b"hello", tfo_cookie=KNOWN_COOKIE)
    conn.receive(synack_for(conn, 5), 0.1)
    assert conn.state is State.ESTABLISHED and client_events(conn) == []
    assert conn.tfo is not None and conn.tfo.data_acked == 5
    (ack,) = conn.segments_to_send(0.1)
    assert ack.payload == b"" and ack.seq == seq_add(conn.iss, 6)


def test_synack_acking_only_the_syn_sends_the_data_after() -> None:
    conn, _ = client_syn(b"hello", tfo_cookie=KNOWN_COOKIE)
    conn.receive(synack_for(conn, 0, cookie=b"newcooki"), 0.1)
    assert client_events(conn) == [TfoCookieReceived(b"newcooki", 1400)]  # a stale cookie
    (data,) = conn.segments_to_send(0.1)
    assert data.payload == b"hello" and data.seq == seq_add(conn.iss, 1)


def test_synack_acking_beyond_the_syn_data_is_refused() -> None:
    conn, _ = client_syn(b"hello", tfo_cookie=KNOWN_COOKIE)
    conn.receive(synack_for(conn, 6), 0.1)
    assert conn.state is State.SYN_SENT
    (rst,) = conn.segments_to_send(0.1)
    assert rst.flags == RST and rst.seq == seq_add(conn.iss, 7)


@pytest.mark.parametrize(("cookie_sent", "acked", "cookie", "expected"), [
    (b"", 0, KNOWN_COOKIE, [TfoCookieReceived(KNOWN_COOKIE, 1400)]),
    (b"", 0, None, [TfoIgnored("the server sent no cookie")]),
    (KNOWN_COOKIE, 5, None, []),
    (KNOWN_COOKIE, 0, None,
     [TfoIgnored("the server acknowledged only the SYN and sent no cookie")]),
    (KNOWN_COOKIE, 0, b"abc", [TfoIgnored(  # a malformed cookie is no cookie
        "the server acknowledged only the SYN and sent no cookie")]),
])
def test_client_reads_the_synack(cookie_sent: bytes, acked: int, cookie: bytes | None,
                                 expected: list[Event]) -> None:
    conn, _ = client_syn(b"hello", tfo_cookie=cookie_sent)
    conn.receive(synack_for(conn, acked, cookie), 0.1)
    assert conn.state is State.ESTABLISHED
    assert client_events(conn) == expected


def test_unsolicited_cookie_is_ignored() -> None:
    conn, _ = client_syn(b"hello")
    conn.receive(synack_for(conn, 0, KNOWN_COOKIE), 0.1)
    assert conn.state is State.ESTABLISHED and client_events(conn) == [] and conn.tfo is None


# ------------------------------------------- two engines on the fake clock

@dataclass
class App:
    """An application on one connection: reads its events, notes when data came and in
    which state the connection was then (the last StateChanged before it)."""

    find: Callable[[], Connection | None]
    data: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    first_data_at: float | None = None
    state_at_first_data: State | None = None
    _state: State = State.CLOSED

    def poll(self, now: float) -> None:
        conn = self.find()
        while conn is not None and (e := conn.next_event()) is not None:
            self.events.append(e)
            if isinstance(e, StateChanged):
                self._state = e.new
            elif isinstance(e, DataReceived):
                if self.first_data_at is None:
                    self.first_data_at, self.state_at_first_data = now, self._state
                self.data += e.data
                conn.data_consumed(len(e.data))

    def has(self, net: Network, n: int) -> bool:
        self.poll(net.now)
        return len(self.data) >= n

    def tfo_events(self) -> list[Event]:
        return [e for e in self.events if isinstance(e, (TfoCookieReceived, TfoIgnored))]


@dataclass
class Exchange:
    """One request and its reply, as seen on the fake clock."""

    net: Network
    conn: Connection
    client: App
    server: App
    started: float
    request_at: float = 0.0  # when the server's application had the whole request
    reply_at: float = 0.0  # when the client's application had the whole reply


def world(server_cfg: Config = SERVER_CFG, **net_kw: object) -> tuple[Network, Stack, Stack]:
    client, server = Stack(CLIENT_CFG), Stack(server_cfg)
    server.listen(B, 80)
    net = Network({A: client, B: server}, **net_kw)  # type: ignore[arg-type]
    return net, client, server


def exchange(net: Network, client: Stack, server: Stack, port: int, request: bytes = REQUEST,
             **tfo: object) -> Exchange:
    """Connect from port `port` with `request` (and Fast Open arguments); the server's
    application answers REPLY as soon as it has the request, even in SYN-RECEIVED."""
    conn = client.connect((A, port), SERVER, net.now, data=request, **tfo)  # type: ignore[arg-type]
    started = net.now
    ours = App(lambda: conn)
    theirs = App(lambda: server.connection(SERVER, (A, port)))
    ex = Exchange(net, conn, ours, theirs, started)
    assert net.run(lambda: theirs.has(net, len(request)), timeout=10)
    ex.request_at = net.now - started
    peer = server.connection(SERVER, (A, port))
    assert peer is not None
    peer.send(REPLY)
    assert net.run(lambda: ours.has(net, len(REPLY)), timeout=10)
    ex.reply_at = net.now - started
    assert bytes(theirs.data) == request and bytes(ours.data) == REPLY
    return ex


def first_cookie(net: Network, client: Stack, server: Stack, **tfo: object) -> bytes:
    ex = exchange(net, client, server, 40000, tfo_cookie=b"", **tfo)
    (got,) = ex.client.tfo_events()
    assert isinstance(got, TfoCookieReceived)
    return got.cookie


def test_first_connection_requests_and_receives_a_cookie() -> None:
    net, client, server = world()
    ex = exchange(net, client, server, 40000, tfo_cookie=b"")
    syn, synack = net.sent()[:2]
    assert syn.options.tfo_cookie == b"" and syn.payload == b""
    assert synack.options.tfo_cookie == KNOWN_COOKIE  # Linux's cookie for A -> B
    assert ex.client.tfo_events() == [TfoCookieReceived(KNOWN_COOKIE, 1460)]
    assert ex.server.state_at_first_data is State.ESTABLISHED  # no data in a request


def test_second_connection_saves_a_round_trip() -> None:
    rtt = 2 * Network({}).delay
    net, client, server = world()
    cookie = first_cookie(net, client, server)
    start = len(net.log)
    fast = exchange(net, client, server, 40001, tfo_cookie=cookie, tfo_mss=1460)
    syn, synack = (d.segment for d in net.log[start:start + 2])
    assert syn.payload == REQUEST and syn.options.tfo_cookie == KNOWN_COOKIE
    assert synack.ack == seq_add(syn.seq, 1 + len(REQUEST))
    assert synack.options.tfo_cookie is None  # the client's cookie is current
    assert fast.server.state_at_first_data is State.SYN_RECEIVED
    assert fast.client.tfo_events() == []

    net2, client2, server2 = world()
    plain = exchange(net2, client2, server2, 40001)
    assert plain.server.state_at_first_data is State.ESTABLISHED
    # Without TFO the request arrives after a whole handshake: SYN, SYN-ACK, ACK + data.
    assert plain.request_at == pytest.approx(1.5 * rtt)
    assert fast.request_at == pytest.approx(0.5 * rtt)
    # The server answers from SYN-RECEIVED, so the reply also comes a round trip sooner.
    assert plain.reply_at - fast.reply_at == pytest.approx(rtt)


def test_fast_open_connection_is_pending_until_the_handshake_ends() -> None:
    net, client, server = world()
    cookie = first_cookie(net, client, server)
    conn = Connection((A, 40001), SERVER, CLIENT_CFG)
    client._add(conn)
    conn.connect(net.now, data=REQUEST, tfo_cookie=cookie)
    states: list[tuple[State, bool]] = []

    def watch(_: Network) -> None:
        peer = server.connection(SERVER, (A, 40001))
        if peer is not None:
            states.append((peer.state, peer.tfo_pending))

    net.on_step = watch
    net.run(lambda: conn.state is State.ESTABLISHED and states[-1][0] is State.ESTABLISHED,
            timeout=5)
    assert (State.SYN_RECEIVED, True) in states
    assert states[-1] == (State.ESTABLISHED, False)


def test_invalid_cookie_gets_a_fresh_one_and_data_after_the_handshake() -> None:
    net, client, server = world()
    ex = exchange(net, client, server, 40001, tfo_cookie=b"\x00" * 8)
    syn, synack = net.sent()[:2]
    assert syn.payload == REQUEST
    assert synack.ack == seq_add(syn.seq, 1)
    assert synack.options.tfo_cookie == KNOWN_COOKIE
    assert ex.client.tfo_events() == [TfoCookieReceived(KNOWN_COOKIE, 1460)]
    assert ex.server.state_at_first_data is State.ESTABLISHED
    assert ex.conn.tfo is not None and ex.conn.tfo.data_acked == 0


def test_server_without_tfo_ignores_the_option() -> None:
    net, client, server = world(SERVER_CFG.with_(tfo_server=False))
    ex = exchange(net, client, server, 40001, tfo_cookie=KNOWN_COOKIE)
    syn, synack = net.sent()[:2]
    assert syn.payload == REQUEST
    assert synack.ack == seq_add(syn.seq, 1) and synack.options.tfo_cookie is None
    assert ex.client.tfo_events() == [
        TfoIgnored("the server acknowledged only the SYN and sent no cookie")]
    assert ex.server.state_at_first_data is State.ESTABLISHED


def test_cookie_request_to_a_server_without_tfo() -> None:
    net, client, server = world(SERVER_CFG.with_(tfo_server=False))
    ex = exchange(net, client, server, 40000, tfo_cookie=b"")
    assert ex.client.tfo_events() == [TfoIgnored("the server sent no cookie")]


def drop_first(predicate: Callable[[Segment], bool]) -> Callable[[Segment], bool]:
    left = [1]

    def drop(seg: Segment) -> bool:
        if left[0] and predicate(seg):
            left[0] -= 1
            return True
        return False

    return drop


def test_lost_syn_with_data_then_plain_syn_and_data_once() -> None:
    net, client, server = world()
    cookie = first_cookie(net, client, server)
    start = len(net.log)
    net.drop = drop_first(lambda s: s.flags == SYN and bool(s.payload))
    ex = exchange(net, client, server, 40001, tfo_cookie=cookie)
    syns = [d for d in net.log[start:] if d.segment.flags == SYN]
    assert [d.fate for d in syns] == ["dropped", "sent"]
    assert syns[1].segment.payload == b"" and syns[1].segment.options.tfo_cookie is None
    sent_data = [d.segment for d in net.log[start:] if d.segment.src == A and d.segment.payload]
    assert [s.payload for s in sent_data] == [REQUEST, REQUEST]  # in the lost SYN, then after
    assert ex.client.tfo_events() == [
        TfoIgnored("the SYN with data went unanswered, a plain SYN did not")]
    assert ex.server.state_at_first_data is State.ESTABLISHED


def test_lost_synack_the_retransmitted_syn_gets_the_data_acked() -> None:
    net, client, server = world()
    cookie = first_cookie(net, client, server)
    start = len(net.log)
    net.drop = drop_first(lambda s: s.flags == SYN | ACK)
    ex = exchange(net, client, server, 40001, tfo_cookie=cookie)
    client_data = [d.segment for d in net.log[start:] if d.segment.src == A and d.segment.payload]
    assert [s.flags for s in client_data] == [SYN]  # the data went once, in the first SYN
    synacks = [d.segment for d in net.log[start:] if d.segment.flags == SYN | ACK]
    assert len(synacks) >= 2 and synacks[-1].ack == seq_add(client_data[0].seq, 1 + len(REQUEST))
    assert ex.server.state_at_first_data is State.SYN_RECEIVED
    assert ex.conn.tfo is not None and ex.conn.tfo.data_acked == len(REQUEST)


def test_no_cookie_server_accepts_data_without_a_valid_cookie() -> None:
    net, client, server = world(SERVER_CFG.with_(tfo_no_cookie=True))
    ex = exchange(net, client, server, 40001, tfo_cookie=b"any-old!")
    syn, synack = net.sent()[:2]
    assert synack.ack == seq_add(syn.seq, 1 + len(REQUEST)) and synack.options.tfo_cookie is None
    assert ex.server.state_at_first_data is State.SYN_RECEIVED


def test_experimental_format_end_to_end() -> None:
    net, client, server = world()
    assert first_cookie(net, client, server, tfo_experimental=True) == KNOWN_COOKIE
    assert all(s.options.tfo_experimental for s in net.sent()[:2])
    ex = exchange(net, client, server, 40001, tfo_cookie=KNOWN_COOKIE, tfo_experimental=True)
    assert ex.server.state_at_first_data is State.SYN_RECEIVED


def test_request_longer_than_the_syn_room_goes_on_after_the_handshake() -> None:
    net, client, server = world()
    cookie = first_cookie(net, client, server)
    start = len(net.log)
    request = bytes(range(256)) * 12  # 3072 bytes
    ex = exchange(net, client, server, 40001, request=request, tfo_cookie=cookie, tfo_mss=1460)
    syn = net.log[start].segment
    assert syn.payload == request[:1420]
    assert ex.server.state_at_first_data is State.SYN_RECEIVED


def test_backup_key_cookie_is_accepted_and_replaced() -> None:
    net, client, server = world(SERVER_CFG.with_(tfo_key=OTHER_KEY, tfo_backup_key=KEY))
    ex = exchange(net, client, server, 40001, tfo_cookie=KNOWN_COOKIE)
    assert ex.server.state_at_first_data is State.SYN_RECEIVED
    assert ex.client.tfo_events() == [TfoCookieReceived(make_cookie(OTHER_KEY, A, B), 1460)]


# ----------------------------------------------------- a guard this touched

def test_data_is_sent_more_than_two_gigabytes_after_the_isn() -> None:
    """The 'SYN acknowledged?' guard once compared SND.UNA with the ISN modulo 2**32,
    which stopped all sending after 2 GiB; it now asks the state."""
    net, client, server = world()
    ex = exchange(net, client, server, 40001)
    conn = ex.conn
    conn.iss = seq_add(conn.snd_una, -(1 << 31) - 5)  # as if 2 GiB had gone by
    conn.send(b"more")
    assert [s.payload for s in conn.segments_to_send(net.now)] == [b"more"]


def test_data_right_behind_the_synack_is_accepted() -> None:
    """A Fast Open server answers before our ACK: the window our SYN offered holds."""
    conn, _ = client_syn(b"hello", tfo_cookie=KNOWN_COOKIE)
    conn.receive(synack_for(conn, 5), 0.1)
    conn.receive(from_peer(ACK, 5001, seq_add(conn.iss, 6), b"answer"), 0.1)
    evs = []
    while (e := conn.next_event()) is not None:
        evs.append(e)
    assert DataReceived(b"answer") in evs
