"""The IPv6 codec and cookie layouts against the Linux kernel, inside a lab with IPv6 on.

The lab turns IPv6 on for client and server and adds ULA addresses with
`nodad` (usable at once). Over an AF_PACKET socket in the client, frames built
by codec6 go to kernel listeners in the server, and what the kernel answers
is parsed by codec6 with checksums verified:

- a SYN behind a destination-options header gets a SYN-ACK (so the kernel
  accepted our checksum), whose MSS is the link MTU less 60 (family.mss_for_mtu);
- a SYN behind hop-by-hop, routing (no segments left) and destination-options
  headers is answered too;
- a cookie request to a Fast Open listener with a fixed key
  (net.ipv4.tcp_fastopen_key, which covers IPv6) gets the cookie tfo.make_cookie
  computes for the two IPv6 addresses;
- a SYN carrying an unknown destination option of type 10xxxxxx draws an ICMPv6
  parameter problem (RFC 8200 §4.2) that decode_icmp6 reads back to our SYN.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from tcpscapy.core.family import mss_for_mtu
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.core.tfo import make_cookie, parse_key
from tcpscapy.io.codec6 import (
    DEST_OPTS,
    HOP_BY_HOP,
    PARAMETER_PROBLEM,
    ROUTING,
    ExtHeader,
    Icmp6Error,
    decode6,
    decode_icmp6,
    encode6,
    pad_options,
)
from tcpscapy.lab import Lab
from tests.wire.v6_helpers import KERNEL6, Wire, enable_ipv6

pytestmark = pytest.mark.wire
LAB_PREFIX = "v6"
CLIENT6, SERVER6 = KERNEL6["client"], KERNEL6["server"]
TFO_KEY = "a0bf63f7-ed803d81-cd641d30-cebc4a90"


@pytest.fixture
def wire(lab: Lab) -> Iterator[Wire]:
    enable_ipv6(lab, "client", "server")
    w = Wire(lab, "client", "server", accept=[CLIENT6])
    try:
        yield w
    finally:
        w.close()


def kernel_listener(lab: Lab, fastopen: bool = False) -> socket.socket:
    with lab.enter("server"):
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind((SERVER6, 0))
        if fastopen:
            srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
        srv.listen(16)
    return srv


def syn_of(sport: int, dport: int, opts: Options) -> Segment:
    return Segment(CLIENT6, SERVER6, sport, dport, 0x01020304, 0, SYN, 64800, opts)


def answer_to(syn: Segment) -> Callable[[bytes], Segment | None]:
    def match(packet: bytes) -> Segment | None:
        seg = decode6(packet)  # checksum verified: the lab's offloads are off
        if seg is not None and (seg.sport, seg.dport) == (syn.dport, syn.sport):
            return seg
        return None
    return match


FULL = Options(mss=1460, sack_permitted=True, timestamps=(1000, 0), wscale=7)


def test_a_syn_behind_destination_options_gets_the_kernels_synack(lab: Lab, wire: Wire) -> None:
    srv = kernel_listener(lab)
    with srv:
        syn = syn_of(40001, srv.getsockname()[1], FULL)
        wire.send(encode6(syn, ext=[ExtHeader(DEST_OPTS, pad_options(b""))]))
        answer = wire.wait(answer_to(syn))
    assert isinstance(answer, Segment), "no SYN-ACK: the kernel dropped our SYN"
    assert answer.flags == SYN | ACK and answer.ack == syn.seq + 1
    assert (answer.src, answer.dst) == (SERVER6, CLIENT6)
    assert answer.options.mss == mss_for_mtu(1500, CLIENT6) == 1440  # the kernel's MTU - 60
    assert answer.options.timestamps is not None and answer.options.timestamps[1] == 1000


def test_a_syn_behind_a_chain_of_extension_headers_is_answered(lab: Lab, wire: Wire) -> None:
    srv = kernel_listener(lab)
    with srv:
        syn = syn_of(40002, srv.getsockname()[1], Options(mss=1200))
        chain = [ExtHeader(HOP_BY_HOP, pad_options(b"")),
                 ExtHeader(DEST_OPTS, pad_options(b"")),  # before the routing header
                 ExtHeader(ROUTING, bytes((253, 0)) + bytes(4)),  # experimental type, none left
                 ExtHeader(DEST_OPTS, pad_options(b"\x1e\x02ok"))]  # type 00: skip if unknown
        wire.send(encode6(syn, ext=chain))
        answer = wire.wait(answer_to(syn))
    assert isinstance(answer, Segment) and answer.flags == SYN | ACK
    assert answer.ack == syn.seq + 1


def test_the_kernels_fast_open_cookie_over_ipv6_is_ours(lab: Lab, wire: Wire) -> None:
    lab.sysctl("server", "net.ipv4.tcp_fastopen", "2")
    lab.sysctl("server", "net.ipv4.tcp_fastopen_key", TFO_KEY)
    srv = kernel_listener(lab, fastopen=True)
    with srv:
        syn = syn_of(40003, srv.getsockname()[1], FULL._replace(tfo_cookie=b""))
        wire.send(encode6(syn))
        answer = wire.wait(answer_to(syn))
    assert isinstance(answer, Segment) and answer.flags == SYN | ACK
    assert answer.options.tfo_cookie == make_cookie(parse_key(TFO_KEY), CLIENT6, SERVER6)


def test_an_unknown_option_of_type_10_draws_a_parameter_problem(lab: Lab, wire: Wire) -> None:
    srv = kernel_listener(lab)
    with srv:
        syn = syn_of(40004, srv.getsockname()[1], Options(mss=1440))
        wire.send(encode6(syn, ext=[ExtHeader(DEST_OPTS, pad_options(b"\x9e\x02no"))]))
        error = wire.wait(lambda p: e if isinstance(e := decode_icmp6(p), Icmp6Error) else None)
    assert error == Icmp6Error(PARAMETER_PROBLEM, 2, SERVER6, CLIENT6, SERVER6, 40004,
                               syn.dport, syn.seq, 0, 40 + 8 + 24)


def test_a_bad_checksum_is_not_answered(lab: Lab, wire: Wire) -> None:
    """The control for the tests above: the kernel drops what fails its checksum.

    A SYN with one bit flipped, then a good one: when the good one's SYN-ACK is
    in, the kernel (which works through one link in order) has passed the bad one.
    """
    srv = kernel_listener(lab)
    with srv:
        dport = srv.getsockname()[1]
        bad, good = syn_of(40005, dport, Options(mss=1440)), syn_of(40006, dport, FULL)
        packet = bytearray(encode6(bad))
        packet[-1] ^= 0x10  # the MSS option's last byte
        wire.send(bytes(packet))
        wire.send(encode6(good))
        seen: list[Segment] = []

        def until_good(packet: bytes) -> Segment | None:
            seg = decode6(packet)
            if seg is not None and seg.dport in (40005, 40006):
                seen.append(seg)
            return seg if seg is not None and seg.dport == 40006 else None

        assert wire.wait(until_good) is not None
    assert [seg.dport for seg in seen] == [40006]
