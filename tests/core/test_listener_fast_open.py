"""The listener's side of Fast Open: early accept, the pending limit, Linux-named counters."""

from __future__ import annotations

from tcpscapy.core import ACK, Config, DataReceived, State, TfoCookieReceived
from tcpscapy.core.stack import Listener, Stack
from tcpscapy.sim import Network

A, B = "10.248.0.2", "192.168.0.2"
SERVER = (B, 80)


def world(**server: object) -> tuple[Network, Stack, Stack]:
    client = Stack(Config(secret=b"tfo-client"))
    srv = Stack(Config(secret=b"tfo-server", tfo_server=True, **server))  # type: ignore[arg-type]
    return Network({A: client, B: srv}), client, srv


def cookie(net: Network, client: Stack, listener: Listener) -> bytes:
    """A first connection that asks for a cookie; the server's side is accepted."""
    conn = client.connect((A, 40000), SERVER, net.now, tfo_cookie=b"")
    assert net.run(lambda: listener.ready > 0, timeout=2)
    assert listener.accept() is not None
    got = [e for e in iter(conn.next_event, None) if isinstance(e, TfoCookieReceived)]
    assert len(got) == 1
    return got[0].cookie


def test_fast_open_connection_is_accepted_before_the_handshake_ends() -> None:
    net, client, srv = world()
    listener = srv.listen(*SERVER)
    key = cookie(net, client, listener)
    net.drop = lambda seg: seg.src == A and seg.flags == ACK and not seg.payload  # hold the 3rd ACK
    client.connect((A, 40001), SERVER, net.now, data=b"GET /", tfo_cookie=key)
    net.run(timeout=0.015)  # the SYN has arrived, nothing more
    peer = listener.accept()
    assert peer is not None and peer.state is State.SYN_RECEIVED
    assert DataReceived(b"GET /") in list(iter(peer.next_event, None))
    assert listener.counters["tfo_passive"] == 1
    assert listener.counters["tfo_cookie_requests"] == 1


def test_pending_limit_falls_back_to_a_plain_handshake() -> None:
    net, client, srv = world(tfo_max_pending=1)
    listener = srv.listen(*SERVER)
    key = cookie(net, client, listener)
    net.drop = lambda seg: seg.src == A and seg.flags == ACK and not seg.payload
    first = client.connect((A, 40001), SERVER, net.now, data=b"one", tfo_cookie=key)
    second = client.connect((A, 40002), SERVER, net.now, data=b"two", tfo_cookie=key)
    net.run(timeout=0.025)  # both SYN-ACKs are back
    assert listener.counters["tfo_passive"] == 1 and listener.counters["tfo_overflows"] == 1
    assert first.tfo.data_acked == 3 and second.tfo.data_acked == 0
    net.drop = None
    net.run(lambda: second.state is State.ESTABLISHED and listener.ready > 0, timeout=5)


def test_bad_cookie_counts_as_a_passive_failure() -> None:
    net, client, srv = world()
    listener = srv.listen(*SERVER)
    client.connect((A, 40001), SERVER, net.now, data=b"x", tfo_cookie=b"12345678")
    net.run(timeout=1)
    assert listener.counters["tfo_passive_fail"] == 1 and listener.counters["tfo_passive"] == 0
