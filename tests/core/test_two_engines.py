"""Two stacks over the in-memory network with a fake clock: whole conversations."""

from __future__ import annotations

import pytest

from tcpscapy.core import (
    ACK,
    FIN,
    RST,
    SYN,
    Closed,
    Config,
    Connected,
    DataReceived,
    Event,
    LocalProtocolError,
    Options,
    PeerClosed,
    Reset,
    Segment,
    State,
    flag_str,
)
from tcpscapy.core import connection as connection_module
from tcpscapy.core.connection import Connection
from tcpscapy.core.stack import Listener, Stack
from tcpscapy.sim import Network

pytestmark = pytest.mark.usefixtures("each_cc")  # every test with each controller
A, B = "10.0.0.1", "10.0.0.2"
CLIENT, SERVER = (A, 40000), (B, 80)
CFG = Config(secret=b"two-engine-tests", msl=5.0)


def events(conn: Connection) -> list[Event]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
        if isinstance(e, DataReceived):
            conn.data_consumed(len(e.data))
    return out


def received(evs: list[Event]) -> bytes:
    return b"".join(e.data for e in evs if isinstance(e, DataReceived))


def pair(config: Config = CFG, **net_kw: object) -> tuple[Network, Stack, Stack, Listener]:
    client, server = Stack(config), Stack(config)
    net = Network({A: client, B: server}, **net_kw)  # type: ignore[arg-type]
    return net, client, server, server.listen(B, 80)


def connected(config: Config = CFG) -> tuple[Network, Connection, Connection]:
    net, client, _, listener = pair(config)
    conn = client.connect(CLIENT, SERVER, net.now)
    assert net.run(lambda: listener.queued and conn.state is State.ESTABLISHED and
                   listener._ready, timeout=5)
    accepted = listener.accept()
    assert accepted is not None
    return net, conn, accepted


def flags_sent(net: Network, src: str | None = None) -> list[str]:
    return [flag_str(s.flags) for s in net.sent() if src is None or s.src == src]


def test_handshake_three_segments_and_events() -> None:
    net, conn, peer = connected()
    assert flags_sent(net) == ["S", "SA", "A"]
    assert conn.state is peer.state is State.ESTABLISHED
    assert any(isinstance(e, Connected) for e in events(conn))
    assert any(isinstance(e, Connected) for e in events(peer))
    syn, synack, _ = net.sent()
    assert synack.ack == (syn.seq + 1) & 0xFFFFFFFF
    assert syn.options.mss == 1460 and syn.options.sack_permitted and syn.options.timestamps


def test_data_both_ways_and_graceful_close() -> None:
    net, conn, peer = connected()
    conn.send(b"hello server")
    peer.send(b"hello client")
    net.run(timeout=2)
    assert received(events(peer)) == b"hello server"
    assert received(events(conn)) == b"hello client"
    conn.close()
    net.run(lambda: conn.state is State.FIN_WAIT_2, timeout=2)
    assert peer.state is State.CLOSE_WAIT
    assert any(isinstance(e, PeerClosed) for e in events(peer))
    peer.close()
    net.run(lambda: peer.state is State.CLOSED, timeout=2)
    assert conn.state is State.TIME_WAIT
    net.run(timeout=60)
    assert conn.state is State.CLOSED  # after 2 x MSL
    assert any(isinstance(e, Closed) for e in events(conn))


def test_time_wait_lasts_two_msl() -> None:
    net, conn, peer = connected()
    conn.close()
    net.run(lambda: peer.state is State.CLOSE_WAIT, timeout=2)
    peer.close()
    net.run(lambda: conn.state is State.TIME_WAIT, timeout=2)
    entered = net.now
    net.run(lambda: conn.state is State.CLOSED, timeout=60)
    assert net.now - entered == pytest.approx(2 * CFG.msl, abs=0.05)


def test_simultaneous_close_goes_through_closing() -> None:
    net, conn, peer = connected()
    conn.close()
    peer.close()
    seen: set[State] = set()
    net.on_step = lambda _: seen.update((conn.state, peer.state))
    net.run(lambda: conn.state is peer.state is State.TIME_WAIT, timeout=5)
    assert State.CLOSING in seen


def test_simultaneous_open() -> None:
    a, b = Stack(CFG), Stack(CFG)
    net = Network({A: a, B: b})
    one = a.connect((A, 5000), (B, 6000), 0.0)
    two = b.connect((B, 6000), (A, 5000), 0.0)
    seen: list[State] = []
    net.on_step = lambda _: seen.append(one.state)
    assert net.run(lambda: one.state is two.state is State.ESTABLISHED, timeout=5)
    assert State.SYN_RECEIVED in seen
    assert flags_sent(net, A)[:2] == ["S", "SA"]
    one.send(b"ping")
    net.run(timeout=1)
    assert received(events(two)) == b"ping"


def test_lost_syn_is_retransmitted_with_backoff() -> None:
    drops = {"left": 2}

    def lose_syns(seg: Segment) -> bool:
        if seg.flags == SYN and drops["left"]:
            drops["left"] -= 1
            return True
        return False

    net, client, _, _listener = pair()
    net.drop = lose_syns
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: conn.state is State.ESTABLISHED, timeout=10)
    syn_times = [d.time for d in net.log if d.segment.flags == SYN]
    assert syn_times == [0.0, 1.0, 3.0]  # RTO 1 s, then doubled (RFC 6298)


def test_lost_syn_ack_is_retransmitted() -> None:
    net, client, _, listener = pair()
    first = {"done": False}

    def lose_first_synack(seg: Segment) -> bool:
        if seg.flags == SYN | ACK and not first["done"]:
            first["done"] = True
            return True
        return False

    net.drop = lose_first_synack
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: conn.state is State.ESTABLISHED and listener._ready, timeout=10)
    assert flags_sent(net).count("SA") == 2
    assert net.now < 1.5  # the server's SYN-ACK timer (1 s) or the client's SYN resend


def test_lost_third_ack_recovered_by_synack_retransmission() -> None:
    net, client, _, listener = pair()
    lost = {"n": 0}

    def lose_third_ack(seg: Segment) -> bool:
        if seg.src == A and seg.flags == ACK and not seg.payload and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    net.drop = lose_third_ack
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: bool(listener._ready), timeout=10)
    assert conn.state is State.ESTABLISHED and lost["n"] == 1
    assert flags_sent(net, B).count("SA") == 2


def test_lost_third_ack_repaired_by_data() -> None:
    """The client's first data segment also completes the server's handshake."""
    net, client, _, listener = pair()
    net.drop = lambda seg: seg.src == A and seg.flags == ACK and not seg.payload
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(lambda: conn.state is State.ESTABLISHED, timeout=1)
    conn.send(b"GET / HTTP/1.0\r\n\r\n")
    assert net.run(lambda: bool(listener._ready), timeout=0.5)
    peer = listener.accept()
    assert peer is not None and received(events(peer)) == b"GET / HTTP/1.0\r\n\r\n"


def test_refused_connection() -> None:
    client, server = Stack(CFG), Stack(CFG)  # no listener on the server
    net = Network({A: client, B: server})
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(lambda: conn.state is State.CLOSED, timeout=2)
    evs = events(conn)
    assert Reset(refused=True) in evs
    assert "refused" in conn.close_reason
    assert flags_sent(net) == ["S", "RA"]


def test_syn_retries_give_up_with_a_reason() -> None:
    client = Stack(CFG.with_(syn_retries=3))
    net = Network({A: client})  # nobody at B: every SYN vanishes
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(lambda: conn.state is State.CLOSED, timeout=100)
    assert [d.time for d in net.log] == [0.0, 1.0, 3.0, 7.0]
    assert net.now == 15.0
    closed = [e for e in events(conn) if isinstance(e, Closed)]
    assert closed and "timed out" in closed[0].reason and "3 retransmissions" in closed[0].reason


def test_default_syn_retries_last_over_three_minutes() -> None:
    """MUST-23: keep retransmitting a SYN for at least three minutes."""
    client = Stack(Config())
    net = Network({A: client})
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(lambda: conn.state is State.CLOSED, timeout=1000)
    assert net.log[-1].time >= 60 and net.now >= 180


def test_fin_retransmitted_until_acked() -> None:
    net, conn, _peer = connected()
    lost = {"n": 0}

    def lose_two_fins(seg: Segment) -> bool:
        if seg.src == A and seg.flags & FIN and lost["n"] < 2:
            lost["n"] += 1
            return True
        return False

    net.drop = lose_two_fins
    conn.close()
    assert net.run(lambda: conn.state is State.FIN_WAIT_2, timeout=10)
    assert flags_sent(net, A).count("FA") == 3


def test_retransmitted_fin_in_time_wait_is_acked_again() -> None:
    net, conn, peer = connected()
    conn.close()
    net.run(lambda: peer.state is State.CLOSE_WAIT, timeout=2)
    lost = {"n": 0}

    def lose_last_ack(seg: Segment) -> bool:
        if seg.src == A and seg.flags == ACK and conn.state is State.TIME_WAIT and not lost["n"]:
            lost["n"] += 1
            return True
        return False

    net.drop = lose_last_ack
    peer.close()
    assert net.run(lambda: peer.state is State.CLOSED, timeout=10)
    assert conn.state is State.TIME_WAIT
    assert flags_sent(net, B).count("FA") == 2  # the peer's FIN, sent again
    assert flags_sent(net, A)[-2:] == ["A", "A"]  # and acknowledged both times


def test_half_close_while_data_flows_the_other_way() -> None:
    net, conn, peer = connected()
    conn.shutdown()
    net.run(timeout=1)
    assert conn.state is State.FIN_WAIT_2 and peer.state is State.CLOSE_WAIT
    with pytest.raises(LocalProtocolError):
        conn.send(b"too late")
    payload = bytes(range(256)) * 200
    sent = 0
    got = bytearray()
    while sent < len(payload):
        sent += peer.send(payload[sent:sent + 20000])
        net.run(timeout=1)
        got += received(events(conn))
    net.run(timeout=2)
    got += received(events(conn))
    assert bytes(got) == payload
    peer.close()
    net.run(lambda: conn.state is State.TIME_WAIT, timeout=2)


def test_abort_sends_rst_and_peer_reports_reset() -> None:
    net, conn, peer = connected()
    conn.abort()
    net.run(lambda: peer.state is State.CLOSED, timeout=2)
    assert conn.state is State.CLOSED
    assert flags_sent(net, A)[-1] == "R"
    assert Reset() in events(peer)


def test_blind_rst_and_syn_get_challenge_acks_and_connection_survives() -> None:
    net, conn, peer = connected()
    server_stack = net.hosts[B]
    # An attacker who knows the 4-tuple but not the exact sequence number.
    for guess in (100, 5000, 60000):
        blind = Segment(A, B, 40000, 80, (peer.rcv_nxt + guess) & 0xFFFFFFFF, 0, RST, 0)
        server_stack.receive(blind, net.now)
    server_stack.receive(Segment(A, B, 40000, 80, peer.rcv_nxt, 0, SYN, 1000), net.now)
    out = server_stack.segments_to_send(net.now)
    assert [flag_str(s.flags) for s in out] == ["A"] * 4  # challenge ACKs
    assert all(s.ack == peer.rcv_nxt for s in out)
    assert peer.state is State.ESTABLISHED
    # an RST far outside the window is silently dropped
    server_stack.receive(Segment(A, B, 40000, 80, (peer.rcv_nxt + 2**30) & 0xFFFFFFFF, 0,
                                 RST, 0), net.now)
    assert server_stack.segments_to_send(net.now) == []
    conn.send(b"still here")
    net.run(timeout=1)
    assert received(events(peer)) == b"still here"


def test_challenge_acks_are_throttled() -> None:
    net, _conn, peer = connected(CFG.with_(challenge_ack_limit=5))
    stack = net.hosts[B]
    for i in range(50):
        stack.receive(Segment(A, B, 40000, 80, (peer.rcv_nxt + 10 + i) & 0xFFFFFFFF, 0, RST, 0),
                      net.now)
    assert len(stack.segments_to_send(net.now)) == 5


def test_sequence_numbers_wrap_past_2_32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "initial_sequence_number",
                        lambda *args: 2**32 - 3000)
    net, conn, peer = connected()
    data = bytes(i % 251 for i in range(50_000))
    conn.send(data)
    peer.send(data)
    net.run(timeout=5)
    assert received(events(peer)) == data and received(events(conn)) == data
    assert conn.snd_nxt < 2**20  # it really wrapped
    conn.close()
    peer.close()
    assert net.run(lambda: peer.state is conn.state is State.TIME_WAIT, timeout=5)


def test_new_syn_may_reopen_a_time_wait_connection() -> None:
    client = Stack(CFG.with_(timestamps=False))
    server = Stack(CFG.with_(timestamps=False))
    net = Network({A: client, B: server})
    listener = server.listen(B, 80)
    # The server closes first, so the server side holds TIME-WAIT.
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(lambda: bool(listener._ready), timeout=2)
    peer = listener.accept()
    assert peer is not None
    peer.close()
    net.run(lambda: conn.state is State.CLOSE_WAIT, timeout=2)
    conn.close()
    net.run(lambda: conn.state is State.CLOSED, timeout=2)
    assert peer.state is State.TIME_WAIT
    again = client.connect(CLIENT, SERVER, net.now + 1)  # a later clock: a higher ISN
    assert net.run(lambda: again.state is State.ESTABLISHED and bool(listener._ready), timeout=2)
    assert listener.accept() is not None


def test_backlog_full_drops_syns() -> None:
    net, client, server, _ = pair()
    server._listeners.clear()
    small = server.listen(B, 81, backlog=2, config=CFG.with_(syncookies="never"))
    conns = [client.connect((A, 41000 + i), (B, 81), 0.0) for i in range(3)]
    net.run(timeout=0.5)
    assert [c.state for c in conns].count(State.ESTABLISHED) == 2
    assert small.syns_dropped >= 1
    small.accept()
    net.run(timeout=5)  # the dropped SYN is retransmitted and now fits
    assert all(c.state is State.ESTABLISHED for c in conns)


def test_closed_port_answers_rst_and_can_be_silenced() -> None:
    quiet = Stack(CFG.with_(rst_for_closed_port=False))
    quiet.receive(Segment(A, B, 1, 2, 100, 0, SYN, 1000), 0.0)
    assert quiet.segments_to_send(0.0) == []
    loud = Stack(CFG)
    loud.receive(Segment(A, B, 1, 2, 100, 0, SYN, 1000), 0.0)
    (rst,) = loud.segments_to_send(0.0)
    assert (flag_str(rst.flags), rst.seq, rst.ack) == ("RA", 0, 101)


def test_wrong_local_calls_raise() -> None:
    net, conn, _peer = connected()
    with pytest.raises(LocalProtocolError):
        conn.connect(net.now)
    conn.close()
    with pytest.raises(LocalProtocolError):
        conn.send(b"x")
    stack = Stack(CFG)
    stack.listen(B, 80)
    with pytest.raises(LocalProtocolError):
        stack.listen(B, 80)
    stack.connect(CLIENT, SERVER, 0.0)
    with pytest.raises(LocalProtocolError):
        stack.connect(CLIENT, SERVER, 0.0)


def test_rst_in_syn_received_returns_to_listen() -> None:
    net, client, server, listener = pair()
    net.drop = lambda seg: seg.flags == SYN | ACK
    conn = client.connect(CLIENT, SERVER, 0.0)
    net.run(timeout=0.05)
    assert listener.queued == 1
    half = server.connection(SERVER, CLIENT)
    assert half is not None and half.state is State.SYN_RECEIVED
    server.receive(Segment(A, B, 40000, 80, half.rcv_nxt, 0, RST, 0), net.now)
    server.segments_to_send(net.now)
    assert listener.queued == 0 and server.connection(SERVER, CLIENT) is None
    assert conn.state is State.SYN_SENT


def test_close_in_syn_sent_deletes_the_connection() -> None:
    client = Stack(CFG)
    conn = client.connect(CLIENT, SERVER, 0.0)
    client.segments_to_send(0.0)
    conn.close()
    assert conn.state is State.CLOSED
    assert client.segments_to_send(0.0) == []  # nothing on the wire, nothing left
    assert client.connections == []


def test_shutdown_during_handshake_sends_fin_after_it() -> None:
    net, client, _, listener = pair()
    conn = client.connect(CLIENT, SERVER, 0.0, data=b"early")
    conn.shutdown()
    net.run(lambda: bool(listener._ready), timeout=2)
    peer = listener.accept()
    assert peer is not None
    net.run(timeout=1)
    evs = events(peer)
    assert received(evs) == b"early" and PeerClosed() in evs
    assert conn.state is State.FIN_WAIT_2


def test_delayed_ack_waits_but_under_500ms_and_acks_every_second_segment() -> None:
    net, conn, _peer = connected(CFG.with_(delayed_ack=0.2, quickacks=0))  # no quick ACKs
    start = len(net.log)
    conn.send(b"x")
    net.run(timeout=1)
    acks = [d for d in net.log[start:] if d.segment.src == B]
    assert len(acks) == 1 and acks[0].time - net.log[start].time < 0.5
    start = len(net.log)
    conn.send(b"y" * (4 * conn.max_payload()))  # 1448: the MSS less 12 bytes of timestamps
    net.run(timeout=1)
    data = [d for d in net.log[start:] if d.segment.src == A and d.segment.payload]
    acks = [d for d in net.log[start:] if d.segment.src == B]
    assert len(data) == 4 and len(acks) == 2  # MUST-58: one for every second full segment


def test_ack_flag_needed_before_any_event() -> None:
    assert ACK and FIN and RST  # flags are plain ints: cheap on the hot path
    assert isinstance(ACK | FIN, int)


def test_closed_events_name_their_cause() -> None:
    net, conn, peer = connected()
    conn.abort()
    net.run(lambda: peer.state is State.CLOSED, timeout=2)
    assert [e.cause for e in events(conn) if isinstance(e, Closed)] == ["aborted"]
    assert [e.cause for e in events(peer) if isinstance(e, Closed)] == ["reset"]
    client = Stack(CFG.with_(syn_retries=1))
    lonely = client.connect(CLIENT, SERVER, 0.0)
    Network({A: client}).run(lambda: lonely.state is State.CLOSED, timeout=10)
    assert lonely.close_cause == "timeout"


def test_secrets_never_show_in_a_config_repr() -> None:
    config = Config(secret=b"\xab" * 16, tfo_key=b"\xcd" * 16, tfo_backup_key=b"\xef" * 16)
    text = repr(config)
    assert "secret" not in text and "tfo_key" not in text
    assert not any(marker in text for marker in ("ab" * 4, "\\xab", "cd" * 4, "\\xcd", "\\xef"))


def test_no_window_update_after_the_peers_fin() -> None:
    net, conn, peer = connected(CFG.with_(recv_buffer=4096, wscale=None))
    peer.send(b"q" * 4096)
    peer.close()
    net.run(lambda: conn.state is State.CLOSE_WAIT, timeout=5)
    start = len(net.log)
    conn.data_consumed(4096)  # the app reads it all after the FIN
    net.run(timeout=1)
    assert [s for s in net.sent()[start:] if s.src == A] == []


def test_a_forged_tsval_with_a_bad_ack_does_not_poison_paws() -> None:
    net, conn, peer = connected()
    conn.send(b"hello")
    net.run(timeout=1)
    before = peer.ts_recent
    forged_ts = (before + (1 << 30)) % 2**32
    forged = Segment(A, B, 40000, 80, peer.rcv_nxt, (peer.snd_nxt + (1 << 30)) % 2**32,
                     ACK | 0x08, 8192, Options(timestamps=(forged_ts, 0)), b"X")
    net.hosts[B].receive(forged, net.now)  # in window, but acks what was never sent
    assert peer.ts_recent == before
    conn.send(b"again")
    net.run(timeout=1)
    assert received(events(peer)) == b"helloagain"
