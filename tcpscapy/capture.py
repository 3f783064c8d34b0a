"""TCP connections from a tcpdump or Wireshark capture (pcap or pcapng).

`read_capture(path)` gives every TCP segment with its time; `connections()`
groups them by connection; `connection_trace()` turns one connection into a
Trace seen from its client (the SYN's sender: "out", the left of a ladder),
with both sides' states inferred from what the capture shows (a SYN puts its
sender in SYN-SENT, a FIN in FIN-WAIT-1, …). The files are parsed here with
struct, without Scapy, so a capture of a long transfer reads in a second, and
a file that is cut short or is not a capture is told apart in one line.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from socket import AF_INET6, inet_ntop

from tcpscapy.core.options import NO_OPTIONS, parse_options
from tcpscapy.core.segment import ACK, FIN, RST, SYN, Segment
from tcpscapy.core.seq import seq_diff
from tcpscapy.core.state import State
from tcpscapy.io.codec import decode_ex
from tcpscapy.trace import Trace

__all__ = ["CaptureError", "Connection", "connection_trace", "connections", "pick",
           "read_capture"]


class CaptureError(Exception):
    """The capture cannot be read or holds no TCP connection: the message is one line."""


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAPNG_SHB = 0x0A0D0D0A
_IPV4, _IPV6 = 0x0800, 0x86DD
_VLAN = (0x8100, 0x88A8)
_TCP_HDR = struct.Struct("!HHIIBBHHH")
_MAX_RECORD = 1 << 18  # a record larger than this is corruption, not a packet

# link type -> how to find the IP packet in a frame
_ETHERNET, _RAW, _NULL, _LOOP, _SLL, _SLL2 = 1, 101, 0, 108, 113, 276
_RAW_TYPES = {_RAW, 12, 14, 228, 229}


def _frames(data: bytes, name: str) -> Iterator[tuple[float, int, bytes]]:
    """(time, link type, frame) for each record of a pcap or pcapng file."""
    if len(data) < 4:
        raise CaptureError(f"{name}: not a pcap or pcapng capture (only {len(data)} bytes)")
    magic = data[:4]
    if magic in _PCAP_MAGIC:
        yield from _pcap_frames(data, name, *_PCAP_MAGIC[magic])
    elif struct.unpack_from("<I", data)[0] == _PCAPNG_SHB:
        yield from _pcapng_frames(data, name)
    else:
        raise CaptureError(f"{name}: not a pcap or pcapng capture (magic {magic.hex()})")


def _pcap_frames(data: bytes, name: str, endian: str,
                 unit: float) -> Iterator[tuple[float, int, bytes]]:
    if len(data) < 24:
        raise CaptureError(f"{name}: truncated pcap header ({len(data)} of 24 bytes)")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    record = struct.Struct(endian + "IIII")
    pos, count, size = 24, 0, len(data)
    while pos < size:
        if pos + 16 > size:
            raise CaptureError(f"{name}: truncated after {count} packets (a record header "
                               f"cut at byte {size})")
        sec, frac, caplen, _wirelen = record.unpack_from(data, pos)
        if caplen > _MAX_RECORD:
            raise CaptureError(f"{name}: corrupt record {count + 1} at byte {pos} "
                               f"(length {caplen})")
        end = pos + 16 + caplen
        if end > size:
            raise CaptureError(f"{name}: truncated after {count} packets (record {count + 1} "
                               f"wants {caplen} bytes, {size - pos - 16} remain)")
        yield sec + frac * unit, linktype, data[pos + 16:end]
        pos, count = end, count + 1


def _pcapng_frames(data: bytes, name: str) -> Iterator[tuple[float, int, bytes]]:
    pos, count, size = 0, 0, len(data)
    endian = "<"
    links: list[tuple[int, float]] = []  # per interface: (link type, seconds per tick)
    while pos < size:
        if pos + 12 > size:
            raise CaptureError(f"{name}: truncated pcapng block at byte {pos}")
        kind = struct.unpack_from(endian + "I", data, pos)[0]
        if kind == _PCAPNG_SHB or struct.unpack_from("<I", data, pos)[0] == _PCAPNG_SHB:
            order = data[pos + 8:pos + 12]
            if order == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif order == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise CaptureError(f"{name}: corrupt pcapng section header at byte {pos}")
            kind, links = _PCAPNG_SHB, []
        length = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if length < 12 or length % 4:
            raise CaptureError(f"{name}: corrupt pcapng block at byte {pos} (length {length})")
        if pos + length > size:
            raise CaptureError(f"{name}: truncated after {count} packets (a block of {length} "
                               f"bytes cut at byte {size})")
        body = data[pos + 8:pos + length - 4]
        if kind == 1 and len(body) >= 8:  # interface description
            linktype = struct.unpack_from(endian + "H", body)[0]
            links.append((linktype, _tsresol(body[8:], endian)))
        elif kind == 6 and len(body) >= 20:  # enhanced packet
            iface, high, low, caplen = struct.unpack_from(endian + "IIII", body)
            if iface >= len(links) or 20 + caplen > len(body):
                raise CaptureError(f"{name}: corrupt pcapng packet block at byte {pos}")
            linktype, tick = links[iface]
            yield ((high << 32) | low) * tick, linktype, body[20:20 + caplen]
            count += 1
        elif kind == 3 and len(body) >= 4 and links:  # simple packet: no time of its own
            caplen = min(struct.unpack_from(endian + "I", body)[0], len(body) - 4)
            yield 0.0, links[0][0], body[4:4 + caplen]
            count += 1
        pos += length


def _tsresol(options: bytes, endian: str) -> float:
    """Seconds per timestamp tick from an interface's options (default microseconds)."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = options[pos + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0 ** -value
        pos += 4 + length + (-length) % 4
    return 1e-6


def _ip_packet(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, None when it carries something else."""
    if linktype == _ETHERNET:
        at, proto = 12, 0
        while at + 2 <= len(frame):
            proto = int.from_bytes(frame[at:at + 2], "big")
            if proto not in _VLAN:
                break
            at += 4
        return frame[at + 2:] if proto in (_IPV4, _IPV6) else None
    if linktype in _RAW_TYPES:
        return frame
    if linktype == _SLL:
        return frame[16:] if frame[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == _SLL2:
        return frame[20:] if frame[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (_NULL, _LOOP):
        return frame[4:] if len(frame) >= 4 else None
    return None


def _segment(packet: bytes) -> Segment | None:
    """The TCP segment in an IPv4 or IPv6 packet (a payload cut by the snap length is
    padded back to the length the headers give), None for anything else."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) >= 20 and packet[9] == 6:
            ip_len = int.from_bytes(packet[2:4], "big")
            if ip_len > len(packet):
                packet = packet + bytes(ip_len - len(packet))  # snap length: lengths matter
        return decode_ex(packet, verify_checksum=False).segment  # (offloads: sums not done)
    if version != 6 or len(packet) < 60 or packet[6] != 6:
        return None
    payload_len = int.from_bytes(packet[4:6], "big")
    sport, dport, seq, ack, offset, flags, window, _sum, urgent = _TCP_HDR.unpack_from(packet, 40)
    data_at = 40 + (offset >> 4) * 4
    end = 40 + payload_len
    if offset < 0x50 or data_at > end:
        return None
    opts = parse_options(bytes(packet[60:data_at])) if data_at > 60 else NO_OPTIONS
    body = packet[data_at:end]
    body += bytes(end - data_at - len(body))
    return Segment(inet_ntop(AF_INET6, packet[8:24]), inet_ntop(AF_INET6, packet[24:40]), sport,
                   dport, seq, ack, flags, window, opts, bytes(body), urgent)


def read_capture(path: str | PathLike[str]) -> list[tuple[float, Segment]]:
    """Every TCP segment in the capture with its time, in file order."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaptureError(f"{name}: {exc.strerror or exc}") from None
    found: list[tuple[float, Segment]] = []
    last = 0.0
    for when, linktype, frame in _frames(data, name):
        packet = _ip_packet(linktype, frame)
        seg = _segment(packet) if packet is not None else None
        if seg is not None:
            last = when or last  # a simple packet block has no time: the one before it
            found.append((last, seg))
    return found


# --- connections ---------------------------------------------------------------------

Endpoint = tuple[str, int]


@dataclass
class Connection:
    """One connection's segments; `client` sent the first SYN (else the first segment)."""

    client: Endpoint
    server: Endpoint
    segments: list[tuple[float, Segment]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{_name(self.client)} > {_name(self.server)}"

    @property
    def payload_bytes(self) -> int:
        return sum(len(seg.payload) for _, seg in self.segments)


def _name(end: Endpoint) -> str:
    host, port = end
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connections(segments: list[tuple[float, Segment]]) -> list[Connection]:
    """The segments grouped by 4-tuple, in order of first appearance."""
    found: dict[frozenset[Endpoint], Connection] = {}
    for when, seg in segments:
        src, dst = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = frozenset((src, dst))
        conn = found.get(key)
        if conn is None:
            syn_ack = seg.flags & (SYN | ACK) == SYN | ACK
            conn = found[key] = Connection(dst, src) if syn_ack else Connection(src, dst)
        elif seg.flags & (SYN | ACK) == SYN and not any(s.flags & SYN for _, s in conn.segments):
            conn.client, conn.server = src, dst  # the SYN came after a stray segment
        conn.segments.append((when, seg))
    return list(found.values())


def pick(conns: list[Connection], flow: str | None) -> Connection:
    """The connection `flow` names: its number in the list (1 is the first), a port, or
    HOST:PORT of either end; without `flow`, the first with a SYN, else the first."""
    if not conns:
        raise CaptureError("no TCP segments in the capture")
    if flow is None:
        return next((c for c in conns if any(s.flags & SYN for _, s in c.segments)), conns[0])
    text = flow.strip()
    if text.isdigit() and 1 <= int(text) <= len(conns):  # a number in the list wins
        return conns[int(text) - 1]
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    for conn in conns:
        for end in (conn.client, conn.server):
            if str(end[1]) == port and (not host or host == end[0]):
                return conn
    raise CaptureError(f"no connection matches --flow {flow!r} ({len(conns)} in the capture: "
                       f"use 1..{len(conns)}, a port or HOST:PORT)")


# --- states seen from the wire ----------------------------------------------------------

@dataclass
class _Side:
    state: State = State.CLOSED
    iss: int | None = None
    fin_end: int | None = None  # seq just past its FIN


class _States:
    """Both sides' states as the capture shows them, recorded into `trace`."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.sides = {"local": _Side(), "peer": _Side()}
        self.sender = "local"
        self.pending: list[tuple[float, State, State, str]] = []  # the receiver's, after

    def _go(self, when: float, side: str, new: State) -> None:
        me = self.sides[side]
        if me.state is not new:
            if side == self.sender:  # the sender changes as it sends: before the segment
                self.trace.record_state(when, me.state, new, side)  # type: ignore[arg-type]
            else:
                self.pending.append((when, me.state, new, side))
            me.state = new

    def flush(self) -> None:
        for when, old, new, side in self.pending:
            self.trace.record_state(when, old, new, side)  # type: ignore[arg-type]
        self.pending.clear()

    def see(self, when: float, sender: str, seg: Segment) -> None:
        self.sender = sender
        receiver = "peer" if sender == "local" else "local"
        me, them = self.sides[sender], self.sides[receiver]
        flags = seg.flags
        if flags & RST:
            self._go(when, sender, State.CLOSED)
            if them.state is not State.LISTEN:
                self._go(when, receiver, State.CLOSED)
            return
        if flags & SYN:
            me.iss = seg.seq
            if flags & ACK:
                if me.state in (State.CLOSED, State.LISTEN):
                    me.state = State.LISTEN  # it was listening: it answers a SYN
                    self._go(when, sender, State.SYN_RECEIVED)
                if them.state is State.SYN_SENT:
                    self._go(when, receiver, State.ESTABLISHED)
            elif me.state is State.CLOSED:
                self._go(when, sender, State.SYN_SENT)
            return
        if flags & ACK:
            if them.state is State.SYN_RECEIVED and them.iss is not None \
                    and seq_diff(seg.ack, them.iss) >= 1:
                self._go(when, receiver, State.ESTABLISHED)
            if them.fin_end is not None and seq_diff(seg.ack, them.fin_end) >= 0:
                after = {State.FIN_WAIT_1: State.FIN_WAIT_2, State.CLOSING: State.TIME_WAIT,
                         State.LAST_ACK: State.CLOSED}.get(them.state)
                if after is not None:
                    self._go(when, receiver, after)
        if flags & FIN and me.fin_end is None:
            me.fin_end = (seg.seq + len(seg.payload) + 1) & 0xFFFFFFFF
            if me.state is State.CLOSE_WAIT:
                self._go(when, sender, State.LAST_ACK)
            elif me.state in (State.ESTABLISHED, State.SYN_RECEIVED):
                self._go(when, sender, State.FIN_WAIT_1)
            after = {State.ESTABLISHED: State.CLOSE_WAIT, State.FIN_WAIT_2: State.TIME_WAIT,
                     State.FIN_WAIT_1: State.CLOSING}.get(them.state)
            if after is not None:
                self._go(when, receiver, after)


def connection_trace(conn: Connection, *, states: bool = True,
                     limit: int | None = None) -> Trace:
    """The connection as a Trace seen from its client ("out": client to server), times
    relative to the capture's clock; `limit` keeps the first segments only."""
    trace = Trace()
    inferred = _States(trace) if states else None
    segments = conn.segments if limit is None else conn.segments[:limit]
    for when, seg in segments:
        sender = "local" if (seg.src, seg.sport) == conn.client else "peer"
        if inferred is not None:
            inferred.see(when, sender, seg)
        trace.record_segment(when, "out" if sender == "local" else "in", seg)
        if inferred is not None:
            inferred.flush()
    return trace
