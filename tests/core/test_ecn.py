"""ECN (RFC 3168) between two engines: negotiation, ECT(0), one reduction per window, CWR."""

from __future__ import annotations

import pytest

from tcpscapy.bulk import pattern
from tcpscapy.core import ACK, SYN, Config, Options, Segment, State
from tcpscapy.core.cc import Cubic
from tcpscapy.core.segment import CE, CWR, ECE, ECT0
from tcpscapy.core.stack import Stack
from tcpscapy.core.syncookies import SynCookies
from tcpscapy.sim import Network

from .test_two_engines import CLIENT, SERVER, A, B, events, received

ON = Config(secret=b"ecn-tests", ecn="on")
PASSIVE = Config(secret=b"ecn-tests")  # the default, as Linux's tcp_ecn=2


def pair(client_cfg: Config, server_cfg: Config) -> tuple[Network, object, object]:
    client, server = Stack(client_cfg), Stack(server_cfg)
    net = Network({A: client, B: server})
    listener = server.listen(B, 80)
    conn = client.connect(CLIENT, SERVER, net.now)
    assert net.run(lambda: conn.state is State.ESTABLISHED and listener._ready, timeout=5)
    peer = listener.accept()
    assert peer is not None
    return net, conn, peer


@pytest.mark.parametrize(("client", "server", "agreed"), [
    (ON, PASSIVE, True),  # we ask, a passive peer accepts
    (ON, ON, True),
    (PASSIVE, ON, False),  # passive side never asks (active opens: off by default)
    (ON, Config(secret=b"ecn-tests", ecn="off"), False),
])
def test_negotiation_in_syn_and_syn_ack(client: Config, server: Config, agreed: bool) -> None:
    net, conn, peer = pair(client, server)
    syn, synack = net.sent()[:2]
    assert syn.flags & (ECE | CWR) == ((ECE | CWR) if client.ecn == "on" else 0)
    assert synack.flags & (ECE | CWR) == (ECE if agreed else 0)
    assert conn.ecn_ok is peer.ecn_ok is agreed  # type: ignore[attr-defined]


def test_new_data_is_ect0_and_acks_and_retransmissions_are_not() -> None:
    net, conn, peer = pair(ON, PASSIVE)
    lost: list[int] = []
    net.drop = lambda s: bool(s.payload and s.src == A and not lost and not lost.append(s.seq))
    conn.send(pattern(30_000, 1))  # type: ignore[attr-defined]
    net.run(timeout=3)
    data = [s for s in net.sent() if s.src == A and s.payload]
    assert received(events(peer)) == pattern(30_000, 1)  # type: ignore[arg-type]
    again = [s for s in data if s.seq == lost[0]]
    assert len(again) == 2 and again[0].ecn == ECT0 and again[1].ecn == 0  # RFC 3168 §6.1.5
    assert all(s.ecn == ECT0 for s in data if s.seq != lost[0])
    assert all(s.ecn == 0 for s in net.sent() if not s.payload)


def test_ce_marks_cost_one_reduction_per_window_and_cwr_ends_the_echo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, conn, peer = pair(ON, PASSIVE)
    data, got, sent = pattern(3_000_000, 2), bytearray(), [0]

    def pump(_: Network) -> None:  # the applications: keep the send buffer full, read all
        if sent[0] < len(data):
            sent[0] += conn.send(data[sent[0]:sent[0] + 65536])  # type: ignore[attr-defined]
        got.extend(received(events(peer)))  # type: ignore[arg-type]

    net.on_step = pump
    net.run(timeout=0.1)  # slow start: the window has grown
    reductions: list[int] = []
    original = Cubic.on_congestion_event

    def counted(self: Cubic, now: float, in_flight: int) -> None:
        if self is conn.cc:  # type: ignore[attr-defined]
            reductions.append(self.cwnd)
        original(self, now, in_flight)

    monkeypatch.setattr(Cubic, "on_congestion_event", counted)
    marks = {"left": 5}

    def congested(seg: Segment) -> bool:  # five CE marks in a row: one window's worth
        if seg.src == A and marks["left"]:
            marks["left"] -= 1
            return True
        return False

    net.ce_mark = congested
    start = len(net.log)
    net.run(timeout=0.2)
    assert len(reductions) == 1  # RFC 3168 §6.1.2: once per window of data
    assert conn.ssthresh == int(reductions[0] * 0.7)  # type: ignore[attr-defined]  # CUBIC's beta
    log = net.log[start:]
    echoes = [d for d in log if d.segment.src == B and d.segment.flags & ECE]
    cwr = [d for d in log if d.segment.src == A and d.segment.flags & CWR]
    assert echoes and len(cwr) == 1 and cwr[0].segment.ecn == ECT0
    # The receiver echoes until it sees CWR, then stops.
    after_cwr = [d for d in log if d.segment.src == B and d.time > cwr[0].time + 2 * net.delay]
    assert after_cwr and not any(d.segment.flags & ECE for d in after_cwr)
    net.run(timeout=10)
    assert got == data


def test_syn_cookies_keep_the_ecn_agreement() -> None:
    cookies = SynCookies(PASSIVE.with_(syncookies="always"))
    opts = Options(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0))
    syn = Segment(A, B, 40000, 80, 1000, 0, SYN | ECE | CWR, 65535, opts)
    synack = cookies.synack(syn, 10.0)
    assert synack.flags == SYN | ACK | ECE and synack.options.timestamps is not None
    echo = Options(timestamps=(5, synack.options.timestamps[0]))
    ack = Segment(A, B, 40000, 80, 1001, (synack.seq + 1) % 2**32, ACK, 502, echo)
    found = cookies.check(ack, 10.5)
    assert found is not None and found.ecn  # the TSval's ECN bit came back
    assert cookies.synack(syn.replace(flags=SYN), 10.0).flags == SYN | ACK  # not asked
    refused = SynCookies(PASSIVE.with_(syncookies="always", ecn="off"))
    assert refused.synack(syn, 10.0).flags == SYN | ACK


def test_ce_on_a_connection_without_ecn_is_ignored() -> None:
    net, conn, peer = pair(PASSIVE, PASSIVE)
    assert CE == 3 and not conn.ecn_ok  # type: ignore[attr-defined]
    peer.receive(Segment(A, B, 40000, 80, conn.snd_nxt, conn.rcv_nxt, ACK, 502, ecn=CE),  # type: ignore[attr-defined]
                 net.now)
    assert not any(s.flags & ECE for s in peer.segments_to_send(net.now))  # type: ignore[attr-defined]
