"""ICMP errors about our segments: what they are, and whether they may count.

The driver parses an ICMP error and hands the engine an `IcmpError`: who sent
it, its type and code, the next-hop MTU, and the quoted IP and TCP header of
the segment it is about (so `src`/`sport` are ours). This module classifies it:

- soft (RFC 1122 4.2.3.9, RFC 9293 §3.9.2.2): net/host unreachable and the
  other "maybe later" codes, time exceeded, parameter problem. Never abort a
  connection; remembered and reported (and named when the connection times out).
- hard: protocol or port unreachable, and administratively prohibited (codes 9,
  10, 13; RFC 1122 4.2.3.9 leaves these to the implementation, Linux takes them
  as fatal too). They end a connection in SYN-SENT; in a synchronized state they
  are taken as soft, as RFC 5927 §4.1 recommends (a blind attacker could otherwise
  reset connections with one guessed packet), and as Linux does.
- fragmentation needed (type 3 code 4): path MTU discovery, see pmtu.py.
- source quench: ignored (RFC 6633).

RFC 5927 §4.1 checks (`check`): the quoted 4-tuple must be a connection of ours
(the stack's demux does that) and the quoted sequence number must lie in
SND.UNA..SND.NXT (inclusive, as Linux); anything else is dropped and counted.
"""

from __future__ import annotations

from typing import NamedTuple

from .seq import seq_ge, seq_le

DEST_UNREACHABLE, SOURCE_QUENCH, TIME_EXCEEDED, PARAMETER_PROBLEM = 3, 4, 11, 12
FRAG_NEEDED = 4  # code of DEST_UNREACHABLE
HARD_CODES = frozenset({2, 3, 9, 10, 13})  # protocol, port, administratively prohibited

SOFT, HARD, PMTU, IGNORED = "soft", "hard", "pmtu", "ignored"

_UNREACHABLE_NAMES = {
    0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
    6: "destination net unknown", 7: "destination host unknown", 8: "source host isolated",
    9: "net administratively prohibited", 10: "host administratively prohibited",
    11: "net unreachable for TOS", 12: "host unreachable for TOS",
    13: "communication administratively prohibited", 14: "host precedence violation",
    15: "precedence cutoff in effect",
}


class IcmpError(NamedTuple):
    """An ICMP error as the driver parsed it; the quoted header is our own segment's."""

    type: int
    code: int
    reporter: str  # the ICMP packet's source: the router or host that complained
    src: str  # quoted IP source: our address
    dst: str  # quoted IP destination: the peer
    sport: int
    dport: int
    seq: int  # quoted TCP sequence number
    mtu: int = 0  # next-hop MTU (fragmentation needed; 0 if the router gave none)
    quoted_len: int = 0  # the quoted IP header's total length (RFC 1191 §5 uses it)

    def __str__(self) -> str:
        text = f"ICMP {describe(self)} from {self.reporter}"
        if is_frag_needed(self):
            text += f" (mtu {self.mtu})"
        return text


def is_frag_needed(err: IcmpError) -> bool:
    return err.type == DEST_UNREACHABLE and err.code == FRAG_NEEDED


def describe(err: IcmpError) -> str:
    """The error in words: 'host unreachable', 'time exceeded', ..."""
    if err.type == DEST_UNREACHABLE:
        return _UNREACHABLE_NAMES.get(err.code, f"destination unreachable (code {err.code})")
    if err.type == TIME_EXCEEDED:
        return "time exceeded" if err.code == 0 else "fragment reassembly time exceeded"
    if err.type == PARAMETER_PROBLEM:
        return "parameter problem"
    if err.type == SOURCE_QUENCH:
        return "source quench"
    return f"type {err.type} code {err.code}"


def classify(err: IcmpError) -> str:
    """SOFT, HARD, PMTU or IGNORED (source quench, and types that are no error for TCP)."""
    if err.type == DEST_UNREACHABLE:
        if err.code == FRAG_NEEDED:
            return PMTU
        return HARD if err.code in HARD_CODES else SOFT
    if err.type in (TIME_EXCEEDED, PARAMETER_PROBLEM):
        return SOFT
    return IGNORED


def seq_acceptable(seq: int, snd_una: int, snd_nxt: int) -> bool:
    """RFC 5927 §4.1: the quoted sequence number is data we sent and still hold."""
    return seq_ge(seq, snd_una) and seq_le(seq, snd_nxt)
