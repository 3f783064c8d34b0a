"""Fuzz targets (hypothesis, no root) for the codec and the core receive path.

They complement tests/core/test_fuzz.py (random segments into an established
pair and a listener) and tests/io/test_codec.py (decode never raises) with
properties that hold for *every* input:

- the core, in each of its states, takes any segment without raising, and
  whatever it emits is a well-formed segment of its own 4-tuple that the codec
  can put on the wire and read back unchanged; it never answers a RST with a
  RST, never moves RCV.NXT backwards, never lets SND.UNA pass SND.NXT, and a
  CLOSED connection stays closed;
- mutated wire packets (bit flips, cuts, junk) of a live connection go through
  decode and the stack without raising, and the stack's output stays encodable;
- any options a peer can send (at most 40 bytes, packed any way it likes) can
  be re-encoded faithfully: encode(), the Scapy bridge behind pcaps and the
  shell, and decode agree (this found the overflow fixed in codec.option_bytes);
- decode agrees with Scapy's own dissector on every packet it accepts, IP
  options, reserved bits, link padding and malformed TCP options included.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tcpscapy.core import RST, Config, Options, Segment, State, parse_options
from tcpscapy.core.connection import Connection
from tcpscapy.core.options import EXPERIMENTAL, MAX_OPTIONS_LEN, TFO_MAGIC
from tcpscapy.core.seq import seq_diff, seq_le
from tcpscapy.core.stack import Stack
from tcpscapy.io import codec
from tcpscapy.sim import Network

from .core import states
from .core.states import LOCAL, REMOTE

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)
FLAGS = st.integers(0, 0xFF)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every state the fixtures can build (LISTEN is the Stack's, fuzzed in test_fuzz.py).
FIXTURES: dict[str, Callable[[], Connection]] = {
    "SYN-SENT": states.syn_sent,
    "SYN-RECEIVED": states.syn_received,
    "ESTABLISHED": states.established,
    "FIN-WAIT-1": states.fin_wait_1,
    "FIN-WAIT-2": states.fin_wait_2,
    "CLOSING": states.closing,
    "TIME-WAIT": states.time_wait,
    "CLOSE-WAIT": states.close_wait,
    "LAST-ACK": states.last_ack,
    "CLOSED": states.closed_by_reset,
}


@st.composite
def option_bytes(draw: st.DrawFn) -> bytes:
    """Up to 40 bytes of options: real kinds with right or wrong lengths, or noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=MAX_OPTIONS_LEN))
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 34, EXPERIMENTAL, 99]))
        if kind in (0, 1):
            out += bytes((kind,))
            continue
        body = draw(st.binary(max_size=16))
        if kind == EXPERIMENTAL and draw(st.booleans()):
            body = TFO_MAGIC + body
        length = draw(st.one_of(st.just(2 + len(body)), st.integers(0, 255)))
        out += bytes((kind, length)) + body
    return out[:MAX_OPTIONS_LEN]


def near(base: int) -> st.SearchStrategy[int]:
    """A sequence number: anywhere, or within ±70000 of `base` (in and around the window)."""
    return st.one_of(U32, st.integers(-70_000, 70_000).map(lambda d: (base + d) & 0xFFFF_FFFF))


@st.composite
def hostile(draw: st.DrawFn, conn: Connection) -> Segment:
    """Any segment for `conn`'s 4-tuple, seq/ack often close to the real ones."""
    return Segment(REMOTE[0], LOCAL[0], REMOTE[1], LOCAL[1], draw(near(conn.rcv_nxt)),
                   draw(st.one_of(near(conn.snd_una), near(conn.snd_nxt))), draw(FLAGS),
                   draw(U16), parse_options(draw(option_bytes())),
                   draw(st.binary(max_size=300)), draw(U16))


def check_output(conn: Connection, out: list[Segment], provoked_by: Segment | None) -> None:
    for seg in out:
        assert (seg.src, seg.sport, seg.dst, seg.dport) == (*LOCAL, *REMOTE), seg
        wire = codec.encode(seg)  # raises ValueError if a field does not fit
        assert codec.decode(wire) == seg
        if provoked_by is not None and provoked_by.flags & RST:
            assert not seg.flags & RST, f"answered {provoked_by} with {seg}"


def check_sequence(conn: Connection, before: State, rcv_nxt: int) -> None:
    assert seq_le(conn.snd_una, conn.snd_nxt), (conn.snd_una, conn.snd_nxt)
    if before.synchronized and conn.state.synchronized:
        assert seq_diff(conn.rcv_nxt, rcv_nxt) >= 0, "RCV.NXT moved backwards"
    if before is State.CLOSED:
        assert conn.state is State.CLOSED


@fuzz(400)
@given(name=st.sampled_from(sorted(FIXTURES)), data=st.data())
def test_every_state_takes_any_segment_and_emits_only_wire_ready_segments(
        name: str, data: st.DataObject) -> None:
    conn = FIXTURES[name]()
    assert str(conn.state) == name
    now = 0.0
    for _ in range(data.draw(st.integers(1, 12), label="segments")):
        now += data.draw(st.floats(0, 2.0), label="gap")
        timer = conn.get_timer()
        if timer is not None and timer <= now:
            assert math.isfinite(timer)
            conn.handle_timer(now)
            check_output(conn, conn.segments_to_send(now), None)
        seg = data.draw(hostile(conn), label="segment")
        before, rcv_nxt = conn.state, conn.rcv_nxt
        conn.receive(seg, now)
        check_output(conn, conn.segments_to_send(now), seg)
        check_sequence(conn, before, rcv_nxt)
        while conn.next_event() is not None:
            pass


# -- mutated wire packets into a live stack --------------------------------------------

A, B = "10.0.0.1", "10.0.0.2"
CLIENT, SERVER = (A, 40000), (B, 80)


def live_pair() -> tuple[Network, Stack, list[bytes]]:
    """An established pair that exchanged some data; the server's packets as seen on a wire."""
    client, server = Stack(Config(secret=b"fuzz-targets")), Stack(Config(secret=b"fuzz-targets"))
    net = Network({A: client, B: server})
    listener = server.listen(*SERVER)
    conn = client.connect(CLIENT, SERVER, 0.0)
    assert net.run(lambda: conn.state is State.ESTABLISHED and listener.ready > 0, timeout=5)
    peer = listener.accept()
    assert peer is not None
    peer.send(bytes(range(256)) * 20)
    assert net.run(lambda: conn.rcv_nxt == peer.snd_nxt, timeout=5)
    sent = [codec.encode(d.segment) for d in net.log if d.segment.src == B]
    assert len(sent) > 3
    return net, client, sent


@st.composite
def mutated(draw: st.DrawFn, packets: list[bytes]) -> bytes:
    packet = bytearray(draw(st.sampled_from(packets)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "junk", "field"]))
        if how == "flip" and packet:
            bit = draw(st.integers(0, 8 * len(packet) - 1))
            packet[bit // 8] ^= 1 << (bit % 8)
        elif how == "cut":
            del packet[draw(st.integers(0, len(packet))):]
        elif how == "junk":
            packet += draw(st.binary(min_size=1, max_size=40))
        elif len(packet) >= 40:  # rewrite a TCP field: seq, ack, offset/flags, window
            at = draw(st.sampled_from([24, 28, 32, 34]))
            struct.pack_into("!H", packet, at, draw(U16))
    return bytes(packet)


@fuzz(300)
@given(data=st.data())
def test_mutated_packets_of_a_live_connection_never_break_the_stack(data: st.DataObject) -> None:
    net, client, packets = live_pair()
    for _ in range(data.draw(st.integers(1, 10))):
        packet = data.draw(mutated(packets))
        for verify in (True, False):
            seg = codec.decode(packet, verify_checksum=verify)
            if seg is None:
                continue
            client.receive(seg, net.now)
            for out in client.segments_to_send(net.now):
                assert codec.decode(codec.encode(out)) == out
                assert not (seg.flags & RST and out.flags & RST
                            and (out.dst, out.dport) == (seg.src, seg.sport))


# -- options a peer sends, re-encoded ----------------------------------------------------

PACKED_40 = bytes((8, 10, *[1] * 8, 3, 3, 7, 2, 4, 5, 180, 99, 23, *[7] * 21))  # TS WS MSS ?


@fuzz(600)
@given(raw=option_bytes(), payload=st.binary(max_size=40))
@example(raw=PACKED_40, payload=b"x")
def test_any_received_options_re_encode_faithfully(raw: bytes, payload: bytes) -> None:
    opts = parse_options(raw)
    seg = Segment(B, A, 80, 40000, 1, 2, 0x18, 512, opts, payload)
    wire = codec.encode(seg)
    assert bytes(codec.to_scapy(seg)) == wire  # what --pcap and the shell show
    assert codec.decode(wire) == seg._replace(options=opts._replace(malformed=False))


def test_a_peers_tightly_packed_options_fit_where_aligned_ones_would_not() -> None:
    opts = parse_options(PACKED_40)
    assert opts == Options(mss=1460, wscale=7, timestamps=(0x01010101, 0x01010101),
                           unknown=((99, bytes([7] * 21)),))
    assert len(codec.option_bytes(opts)) == 40  # aligned, it would take 44


# -- decode against Scapy's dissector ----------------------------------------------------


@st.composite
def odd_packets(draw: st.DrawFn) -> bytes:
    """IPv4/TCP packets with IP options, any data offset and options, reserved bits, padding."""
    ihl = draw(st.integers(5, 9))
    doff = draw(st.integers(5, 15))
    tcp = struct.pack("!HHIIBBHHH", draw(U16), draw(U16), draw(U32), draw(U32),
                      doff << 4 | draw(st.integers(0, 15)), draw(FLAGS), draw(U16), 0, draw(U16))
    tcp += draw(st.binary(min_size=(doff - 5) * 4, max_size=(doff - 5) * 4))
    tcp += draw(st.binary(max_size=30))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, draw(st.integers(0, 255)),
                         ihl * 4 + len(tcp), draw(U16), 0x4000, draw(st.integers(1, 255)), 6, 0,
                         bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)))
    header += draw(st.binary(min_size=(ihl - 5) * 4, max_size=(ihl - 5) * 4))
    return header + tcp + draw(st.binary(max_size=6))  # link-layer padding


@fuzz(300)
@given(packet=odd_packets())
def test_decode_agrees_with_scapys_dissector(packet: bytes) -> None:
    from scapy.layers.inet import IP

    seg = codec.decode(packet, verify_checksum=False)
    assert seg is not None  # every packet drawn is well-formed enough to decode
    assert codec.from_scapy(IP(packet)) == seg
