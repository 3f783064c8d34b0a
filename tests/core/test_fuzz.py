"""Hostile input never breaks the engine: random segments, malformed bytes, any state.

A connection is built, then hit with arbitrary segments for its 4-tuple (any
flags, sequence numbers, options, payloads); the engine must never raise, and
a transfer that follows must still deliver its bytes intact — unless one of the
random segments was an exact-match RST, which legitimately ends it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpscapy.core import RST, Config, DataReceived, Segment, State, parse_options
from tcpscapy.core.stack import Stack
from tcpscapy.io import codec
from tcpscapy.sim import Network

from .test_two_engines import CLIENT, SERVER, A, B

u32 = st.integers(0, 2**32 - 1)
FLAGS = st.integers(0, 255)


@st.composite
def hostile(draw: st.DrawFn, near: tuple[int, int]) -> Segment:
    """A segment for the server's 4-tuple; seq/ack near the real ones half of the time."""
    rcv_nxt, snd_nxt = near
    seq = draw(st.one_of(u32, st.integers(-70000, 70000).map(lambda d: (rcv_nxt + d) % 2**32)))
    ack = draw(st.one_of(u32, st.integers(-70000, 70000).map(lambda d: (snd_nxt + d) % 2**32)))
    options = parse_options(draw(st.binary(max_size=40)))
    return Segment(A, B, CLIENT[1], SERVER[1], seq, ack, draw(FLAGS), draw(st.integers(0, 65535)),
                   options, draw(st.binary(max_size=1500)), draw(st.integers(0, 65535)))


def established(config: Config) -> tuple[Network, Stack, Stack]:
    client, server = Stack(config), Stack(config)
    net = Network({A: client, B: server})
    listener = server.listen(*SERVER)
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: conn.state is State.ESTABLISHED and listener.ready > 0, timeout=5)
    listener.accept()
    return net, client, server


def exact_reset(seg: Segment, rcv_nxt: int) -> bool:
    return bool(seg.flags & RST) and seg.seq == rcv_nxt


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), timestamps=st.booleans())
def test_random_segments_never_raise_and_data_still_flows(data: st.DataObject,
                                                          timestamps: bool) -> None:
    net, client, server = established(Config(secret=b"fuzz", timestamps=timestamps))
    conn = client.connection(CLIENT, SERVER)
    peer = server.connection(SERVER, CLIENT)
    assert conn is not None and peer is not None
    start = peer.rcv_nxt
    ended = False
    for _ in range(data.draw(st.integers(1, 30))):
        seg = data.draw(hostile((peer.rcv_nxt, peer.snd_nxt)))
        ended = ended or exact_reset(seg, peer.rcv_nxt)
        server.receive(seg, net.now)  # must not raise
        server.segments_to_send(net.now)
        if peer.state is State.CLOSED:
            break
    if peer.state is State.CLOSED:
        assert ended, f"only an exact RST may end the connection, not: {peer.close_reason}"
        return
    if peer.rcv_nxt != start or peer._reassembly:
        return  # a blind guess landed in the window: the stream now holds forged bytes
    # Nothing forged was taken: the real client's bytes must arrive exactly.
    message = bytes(range(256)) * 40
    conn.send(message)
    got = bytearray()

    def delivered() -> bool:
        for event in iter(peer.next_event, None):
            if isinstance(event, DataReceived):
                got.extend(event.data)
                peer.data_consumed(len(event.data))
        return len(got) >= len(message)

    assert net.run(delivered, timeout=300)
    assert bytes(got) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_any_bytes_through_codec_and_stack_never_raise(packet: bytes) -> None:
    stack = Stack(Config(secret=b"fuzz"))
    stack.listen("10.0.0.2", 80)
    for verify in (True, False):
        seg = codec.decode(packet, verify_checksum=verify)
        if seg is not None:
            stack.receive(seg, 0.0)
            stack.segments_to_send(0.0)


@settings(max_examples=200, deadline=None)
@given(flags=FLAGS, seq=u32, ack=u32, payload=st.binary(max_size=100),
       raw_options=st.binary(max_size=40))
def test_every_flag_combination_against_a_listener(flags: int, seq: int, ack: int,
                                                   payload: bytes, raw_options: bytes) -> None:
    for mode in ("never", "always"):
        stack = Stack(Config(secret=b"fuzz", syncookies=mode, tfo_server=True))
        stack.listen(*SERVER)
        seg = Segment(A, B, CLIENT[1], SERVER[1], seq, ack, flags, 1000,
                      parse_options(raw_options), payload)
        stack.receive(seg, 1.0)
        out = stack.segments_to_send(1.0)
        assert len(out) <= 1
        if flags & RST:
            assert out == []  # never answer a reset
