"""What a connection did: segments and state changes, for people to read.

Recording is cheap (two slots appended to a list; no Scapy), and everything
a user looks at is made on demand: `ladder()` for the terminal,
`to_json_lines()` for tools, `to_scapy_list()` and `write_pcap()` for Scapy
and Wireshark.

    trace = Trace()
    trace.record_state(now, State.CLOSED, State.SYN_SENT)
    trace.record_segment(now, "out", syn)
    print(ladder(trace))
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from os import PathLike
from socket import AF_INET, inet_ntop, inet_pton
from typing import TYPE_CHECKING, Any, Literal, overload

from tcpscapy.core.options import NO_OPTIONS, Options
from tcpscapy.core.segment import ACK, RST, SYN, URG, Segment, flag_str
from tcpscapy.core.state import State

if TYPE_CHECKING:
    from scapy.plist import PacketList

__all__ = [
    "Direction",
    "LadderWriter",
    "Side",
    "Trace",
    "TraceEntry",
    "fast_open_lines",
    "handshake_rtt",
    "ladder",
    "to_json_lines",
    "to_scapy_list",
    "write_pcap",
]

Direction = Literal["out", "in"]
Side = Literal["local", "peer"]
_SIDE_DIRECTION: dict[str, Direction] = {"local": "out", "peer": "in"}


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One line of the record.

    A segment entry has `segment` (None when a packet arrived that could not be
    decoded; `note` says why). A state entry has `state_change` = (old, new) and
    its `direction` names whose state it is: "out" the local endpoint (left of
    the ladder), "in" the peer (right), as `side` spells out.
    """

    time: float  # seconds: the `now` the driver used
    direction: Direction
    segment: Segment | None = None
    state_change: tuple[State, State] | None = None
    note: str = ""  # e.g. "retransmission", "dropped: bad checksum"

    @property
    def side(self) -> Side:
        return "local" if self.direction == "out" else "peer"


# --- compact rows ----------------------------------------------------------------------
#
# A trace is kept for every connection, idle ones included, so a row is two
# slots of a flat list, and its kind is told by what sits where:
#   (time, segment)  a segment sent, without a note
#   (segment, time)  a segment received, without a note
#   (time, tag)      anything else: a state change (its tag shared by every trace),
#                    a segment with a note, an entry appended with both; a tag is a
#                    plain tuple (direction, note, state_change, segment slot), told
#                    from a Segment (a tuple subclass) by its type
# A "segment" slot holds the Segment, None (undecodable), or the Segment packed
# into bytes (see _pack): ~70 bytes instead of ~450. A server with many connections
# spends its memory on idle ones, which hold little more than their handshake, so
# the handshake's segments are packed when the connection is established (~2.5 µs,
# once). The list is cut into chunks, so keeping the newest `maxlen` rows drops
# whole chunks.


_Tag = tuple[Any, str, Any, Any]
# side -> old -> new -> tag, shared by every trace (dicts: States hash slowly in a tuple)
_STATE_TAGS: dict[str, dict[Any, dict[Any, _Tag]]] = {"local": {}, "peer": {}}
_LIMITS: dict[int | None, tuple[int | None, int]] = {}  # maxlen -> (_keep, _cap)
_ESTABLISHED = State.ESTABLISHED
_PACK_BACK = 16  # rows of a handshake looked at, at most
_MIN_CHUNK, _MAX_CHUNK = 16, 1024  # rows per chunk: maxlen/16 within these bounds

# src+dst sport dport seq ack flags window urgent | options present | mss wscale tsval tsecr
_PACKED = struct.Struct("!8sHHIIHHHBHBII")
_PACKED_SIZE = _PACKED.size
_HAS_MSS, _HAS_WS, _HAS_TS, _HAS_SACK_OK = 1, 2, 4, 8
_ADDRS: dict[tuple[str, str], bytes] = {}  # (src, dst) -> their 8 bytes
_NAMES: dict[bytes, tuple[str, str]] = {}  # and back
_ADDR_CACHE_MAX = 4096


def _addr_pair(src: object, dst: object) -> bytes | None:
    """8 bytes for two dotted quads that read back exactly; None for anything else."""
    try:
        packed = inet_pton(AF_INET, src) + inet_pton(AF_INET, dst)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return None
    if type(src) is not str or type(dst) is not str or inet_ntop(AF_INET, packed[:4]) != src \
            or inet_ntop(AF_INET, packed[4:]) != dst:
        return None
    if len(_ADDRS) >= _ADDR_CACHE_MAX:
        _ADDRS.clear()
        _NAMES.clear()
    _ADDRS[(src, dst)] = packed
    _NAMES[packed] = (src, dst)
    return packed


def _pack(seg: object) -> bytes | None:
    """The segment in ~70 bytes instead of ~450, when it reads back exactly: int
    fields, IPv4 dotted quads, a bytes payload, and at most MSS, window scale,
    SACK-permitted and timestamps as options. None otherwise (the Segment stays)."""
    if type(seg) is not Segment:
        return None
    src, dst, sport, dport, seq, ack, flags, window, opts, payload, urgent = seg
    if not (int is type(sport) is type(dport) is type(seq) is type(ack) is type(flags)
            is type(window) is type(urgent)) or type(payload) is not bytes:
        return None
    has = mss = wscale = tsval = tsecr = 0
    if opts is not NO_OPTIONS:
        if type(opts) is not Options:
            return None
        mss, wscale, sack_ok, stamps, blocks, cookie, experimental, unknown, malformed = opts
        if blocks or cookie is not None or experimental is not False or unknown \
                or malformed is not False or type(sack_ok) is not bool:
            return None
        if mss is None:
            mss = 0
        elif type(mss) is int:
            has = _HAS_MSS
        else:
            return None
        if wscale is None:
            wscale = 0
        elif type(wscale) is int:
            has |= _HAS_WS
        else:
            return None
        if stamps is not None:
            if type(stamps) is not tuple or len(stamps) != 2:
                return None
            tsval, tsecr = stamps
            if not int is type(tsval) is type(tsecr):
                return None
            has |= _HAS_TS
        if sack_ok:
            has |= _HAS_SACK_OK
    try:
        addrs = _ADDRS.get((src, dst)) or _addr_pair(src, dst)
    except TypeError:  # unhashable addresses from a caller
        return None
    if addrs is None:
        return None
    try:
        head = _PACKED.pack(addrs, sport, dport, seq, ack, flags, window, urgent, has, mss,
                            wscale, tsval, tsecr)
    except struct.error:  # a value out of its field's range
        return None
    return head + payload if payload else head


def _unpack(packed: bytes) -> Segment:
    addrs, sport, dport, seq, ack, flags, window, urgent, has, mss, wscale, tsval, tsecr = \
        _PACKED.unpack_from(packed)
    names = _NAMES.get(addrs) or (inet_ntop(AF_INET, addrs[:4]), inet_ntop(AF_INET, addrs[4:]))
    opts = NO_OPTIONS if not has else Options._make((
        mss if has & _HAS_MSS else None, wscale if has & _HAS_WS else None,
        bool(has & _HAS_SACK_OK), (tsval, tsecr) if has & _HAS_TS else None, (), None, False,
        (), False))
    return Segment._make((*names, sport, dport, seq, ack, flags, window, opts,
                          packed[_PACKED_SIZE:], urgent))


def _segment(item: Any) -> Any:
    return _unpack(item) if type(item) is bytes else item


def _entry(a: Any, b: Any) -> TraceEntry:
    """The TraceEntry the row (a, b) stands for."""
    if a is None or isinstance(a, tuple | bytes):  # a received segment: times are numbers
        return TraceEntry(b, "in", _segment(a))
    if type(b) is tuple:
        direction, note, change, item = b
        return TraceEntry(a, direction, _segment(item), change, note)
    return TraceEntry(a, "out", _segment(b))


def _state_tag(side: object, old: State, new: State, note: str) -> _Tag:
    direction = _SIDE_DIRECTION.get(side) if type(side) is str else None
    if direction is None:
        raise ValueError(f"side must be 'local' or 'peer', not {side!r}")
    tag = (direction, note, (old, new), None)
    if type(old) is State and type(new) is State and not note:
        _STATE_TAGS[side].setdefault(old, {})[new] = tag  # at most 2 * 11 * 11 of them
    return tag


def _limits(maxlen: int | None) -> tuple[int | None, int]:
    """(_keep, _cap) for a maxlen: slots shown, and slots a chunk holds."""
    if maxlen is None:
        return None, 1 << 62
    if maxlen < 0:
        raise ValueError(f"maxlen must be >= 0 or None, not {maxlen}")
    limits = (2 * maxlen, 2 * min(max(maxlen >> 4, _MIN_CHUNK), _MAX_CHUNK) if maxlen else 2)
    if len(_LIMITS) < 64:
        _LIMITS[maxlen] = limits
    return limits


def _pack_recent(rows: list[Any]) -> None:
    """Pack the segments among the last _PACK_BACK rows, newest first, back to one
    already packed. Each store replaces one slot with an equal value, so a reader on
    another thread is never disturbed."""
    end = len(rows) & ~1
    for i in range(end - 2, max(end - 2 * _PACK_BACK, 0) - 1, -2):
        a, b = rows[i], rows[i + 1]
        if a is None or isinstance(a, tuple | bytes):  # received: (segment, time)
            slot, item = i, a
        elif type(b) is tuple:
            if b[2] is not None:
                continue  # a state change
            slot, item = i + 1, b[3]
        else:
            slot, item = i + 1, b
        if type(item) is bytes:
            break
        packed = _pack(item)
        if packed is not None:
            rows[slot] = packed if slot == i or type(b) is not tuple else (*b[:3], packed)


class Trace:
    """A list-like record of TraceEntry values, oldest first.

    Recording appends two slots to a list (~0.1 µs); TraceEntry objects are
    made when read. `maxlen` keeps only the newest entries. The handshake's
    segments are packed into bytes when the connection is established (and
    rebuilt, equal, when read), so an idle connection holds a few hundred bytes.
    `time_offset` is added to entry times in JSON and pcap exports, e.g.
    `time.time() - time.monotonic()` when the driver's clock is monotonic.
    """

    # _rows: the newest chunk, appended to. _chunks: None while there is one chunk,
    # else all chunks kept, oldest first, _rows last; a roll replaces it whole and
    # chunks only grow at the end, so a reader on another thread sees a consistent
    # record. _cap: slots at which _rows rolls over; _keep: slots shown (None: all).
    __slots__ = ("_cap", "_chunks", "_keep", "_rows", "sampler", "time_offset")

    def __init__(self, entries: Iterable[TraceEntry] = (), *, maxlen: int | None = None,
                 time_offset: float = 0.0) -> None:
        self._rows: list[Any] = []
        self._chunks: tuple[list[Any], ...] | None = None
        self._keep, self._cap = _LIMITS.get(maxlen) or _limits(maxlen)
        self.time_offset = time_offset
        # Called with `now` after each segment or state change (tcpscapy.metrics), or None.
        self.sampler: Callable[[float], None] | None = None
        for entry in entries:
            self.append(entry)

    def record_segment(self, now: float, direction: Direction, seg: Segment | None,
                       note: str = "") -> None:
        """A segment sent ("out") or received ("in"); seg None for an undecodable packet."""
        rows = self._rows
        if note:
            if direction != "out" and direction != "in":
                raise ValueError(f"direction must be 'out' or 'in', not {direction!r}")
            rows.append(now)
            rows.append((direction, note, None, seg))
        elif direction == "out":
            rows.append(now)
            rows.append(seg)
        elif direction == "in":
            rows.append(seg)
            rows.append(now)
        else:
            raise ValueError(f"direction must be 'out' or 'in', not {direction!r}")
        if len(rows) >= self._cap:
            self._roll()
        if self.sampler is not None:
            self.sampler(now)

    def record_state(self, now: float, old: State, new: State, side: Side = "local",
                     note: str = "") -> None:
        """A state change of the local endpoint or (when known, e.g. in simulation) the peer."""
        try:
            tag = _STATE_TAGS[side][old][new] if not note else _state_tag(side, old, new, note)
        except (KeyError, TypeError):  # TypeError: unhashable values from a caller
            tag = _state_tag(side, old, new, note)
        rows = self._rows
        rows.append(now)
        rows.append(tag)
        if len(rows) >= self._cap:
            self._roll()
        elif new is _ESTABLISHED and side == "local":
            _pack_recent(rows)  # the handshake, which an idle connection keeps for good
        if self.sampler is not None:
            self.sampler(now)

    def append(self, entry: TraceEntry) -> None:
        direction, seg, change, note = (entry.direction, entry.segment, entry.state_change,
                                        entry.note)
        rows = self._rows
        if change is None and type(note) is str and not note and direction == "out" \
                and type(seg) is not tuple and type(seg) is not bytes:
            rows.append(entry.time)
            rows.append(seg)
        elif change is None and type(note) is str and not note and direction == "in" \
                and (seg is None or isinstance(seg, tuple | bytes)):
            rows.append(seg)
            rows.append(entry.time)
        else:
            rows.append(entry.time)
            rows.append((direction, note, change, seg))
        if len(rows) >= self._cap:
            self._roll()

    def _roll(self) -> None:
        """_rows is full: start a new chunk, keeping the fewest old ones that still hold
        the newest `maxlen` rows (every chunk but the newest is full)."""
        keep, cap = self._keep, self._cap
        if not keep:  # maxlen=0: nothing is kept
            self._rows.clear()
            return
        chunks = self._chunks or (self._rows,)
        needed = -(-keep // cap)  # full chunks that hold `keep` slots
        tail: list[Any] = []
        self._chunks = (*chunks[max(len(chunks) - needed, 0):], tail)
        self._rows = tail

    def _view(self) -> tuple[tuple[list[Any], ...], int, int]:
        """(chunks, first slot, end slot) of the rows shown; safe while the driver's
        thread appends (read _rows before _chunks: a roll sets _chunks first)."""
        rows = self._rows
        chunks = self._chunks
        if chunks is None:
            chunks = (rows,)
            total = len(rows)
        else:
            total = sum(map(len, chunks))
        end = total - (total & 1)  # a row being appended right now is left out
        keep = self._keep
        return chunks, (0 if keep is None or end <= keep else end - keep), end

    def _slots(self) -> list[Any]:
        """The slots of the rows shown, flat, in a list of their own."""
        chunks, start, end = self._view()
        flat = chunks[0][:] if len(chunks) == 1 else list(chain.from_iterable(chunks))
        return flat if start == 0 and end == len(flat) else flat[start:end]

    def clear(self) -> None:
        self._chunks = None
        self._rows = []

    def __len__(self) -> int:
        _, start, end = self._view()
        return (end - start) >> 1

    def __iter__(self) -> Iterator[TraceEntry]:
        slots = self._slots()
        for i in range(0, len(slots), 2):
            yield _entry(slots[i], slots[i + 1])

    @overload
    def __getitem__(self, index: int) -> TraceEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[TraceEntry]: ...

    def __getitem__(self, index: int | slice) -> TraceEntry | list[TraceEntry]:
        if isinstance(index, slice):
            slots = self._slots()
            return [_entry(slots[i], slots[i + 1]) for i in range(0, len(slots), 2)[index]]
        chunks, start, end = self._view()
        pos = range(start, end, 2)[index]  # IndexError, TypeError as a list gives them
        for chunk in chunks:  # no row straddles two chunks
            if pos < len(chunk):
                return _entry(chunk[pos], chunk[pos + 1])
            pos -= len(chunk)
        raise IndexError("trace index out of range")  # not reached: the view is consistent

    def segments(self, direction: Direction | None = None) -> list[Segment]:
        """The decoded segments, optionally only those going one way."""
        out: list[Segment] = []
        for entry in self:
            if entry.segment is not None and (direction is None or entry.direction == direction):
                out.append(entry.segment)
        return out

    def __repr__(self) -> str:
        return f"<Trace {len(self)} entries>"

    def __str__(self) -> str:
        return ladder(self)

    # Method spellings of the module functions, for the interactive shell.
    def ladder(self, *, relative: bool = True, width: int | None = None, color: bool = False,
               ascii_only: bool = False) -> str:
        return ladder(self, relative=relative, width=width, color=color, ascii_only=ascii_only)

    def to_json_lines(self) -> Iterator[str]:
        return to_json_lines(self)

    def to_scapy(self) -> PacketList:
        return to_scapy_list(self)

    def write_pcap(self, path: str | PathLike[str]) -> None:
        write_pcap(self, path)


# --- the ladder ------------------------------------------------------------------------

_STATE_WIDTH = len("SYN-RECEIVED")
_RESET, _BOLD, _DIM = "\x1b[0m", "\x1b[1m", "\x1b[2m"
_RED, _GREEN, _MAGENTA, _CYAN = "\x1b[31m", "\x1b[32m", "\x1b[35m", "\x1b[36m"
_HANDSHAKE_MASK = SYN | ACK | RST
_WORDS = re.compile(r"<[^>]*>|\[[^\]]*\]|\S+")  # <options> and a [tag] wrap as one word


@dataclass(frozen=True, slots=True)
class _Glyphs:
    line: str
    dashed: str
    right: str
    left: str
    to: str
    both: str
    ellipsis: str


_UNICODE = _Glyphs("─", "╌", "▶", "◀", " → ", " ⇄ ", "…")
_ASCII = _Glyphs("-", ".", ">", "<", " -> ", " <-> ", "..")


def endpoints(entries: list[TraceEntry]) -> tuple[str, str] | None:
    """("local addr:port", "peer addr:port") from the first segment."""
    for entry in entries:
        seg = entry.segment
        if seg is not None:
            ours, theirs = f"{seg.src}:{seg.sport}", f"{seg.dst}:{seg.dport}"
            return (ours, theirs) if entry.direction == "out" else (theirs, ours)
    return None


def isn_bases(entries: list[TraceEntry]) -> dict[str, int]:
    """Each direction's base: the seq of its first SYN, else of its first segment."""
    bases: dict[str, int] = {}
    syn_seen: set[str] = set()
    for entry in entries:
        seg, way = entry.segment, entry.direction
        if seg is None or way in syn_seen:
            continue
        if seg.flags & SYN:
            bases[way] = seg.seq
            syn_seen.add(way)
        else:
            bases.setdefault(way, seg.seq)
    return bases


def _handshake(entries: Iterable[TraceEntry]) -> tuple[float, bool] | None:
    """(seconds, we are the client) from our last SYN to the SYN-ACK, or from our last
    SYN-ACK to the ACK."""
    syn_at = synack_at = None
    for entry in entries:
        seg = entry.segment
        if seg is None:
            continue
        kind = seg.flags & _HANDSHAKE_MASK
        if entry.direction == "out":
            if kind == SYN:
                syn_at = entry.time
            elif kind == SYN | ACK:
                synack_at = entry.time
        elif kind == SYN | ACK and syn_at is not None:
            return entry.time - syn_at, True
        elif kind == ACK and synack_at is not None:
            return entry.time - synack_at, False
    return None


def handshake_rtt(trace: Iterable[TraceEntry]) -> float | None:
    """Seconds from our SYN to the peer's SYN-ACK (client) or from our SYN-ACK to the
    peer's ACK (server), using the last transmission before the answer; None if absent."""
    found = _handshake(trace)
    return None if found is None else found[0]


def _signed(value: int) -> int:
    value %= 2**32
    return value - 2**32 if value >= 2**31 else value


def _options_text(opts: Options, sack_base: int | None) -> str:
    parts: list[str] = []
    if opts.mss is not None:
        parts.append(f"mss {opts.mss}")
    if opts.sack_permitted:
        parts.append("sack")
    if opts.timestamps is not None:
        parts.append("ts")
    if opts.wscale is not None:
        parts.append(f"ws {opts.wscale}")
    if opts.tfo_cookie is not None:
        name = "tfo-exp" if opts.tfo_experimental else "tfo"
        parts.append(f"{name} {opts.tfo_cookie.hex()}" if opts.tfo_cookie else name)
    parts.extend(f"opt {kind}" + (f" {body.hex()}" if body else "") for kind, body in opts.unknown)
    if opts.sack_blocks:
        def rel(edge: int) -> int:
            return edge if sack_base is None else _signed(edge - sack_base)
        parts.append("sack " + " ".join(f"{rel(left)}-{rel(right)}"
                                         for left, right in opts.sack_blocks))
    if opts.malformed:
        parts.append("malformed")
    return f" <{','.join(parts)}>" if parts else ""


def _segment_text(seg: Segment, seq_base: int | None, ack_base: int | None) -> str:
    seq = seg.seq if seq_base is None else _signed(seg.seq - seq_base)
    text = f"{flag_str(seg.flags) or '(no flags)'} seq={seq}"
    if seg.flags & ACK:
        text += f" ack={seg.ack if ack_base is None else _signed(seg.ack - ack_base)}"
    text += f" win={seg.window}"
    if seg.flags & URG:
        text += f" urg={seg.urgent}"
    if seg.payload:
        text += f" len={len(seg.payload)}"
    return text + _options_text(seg.options, ack_base)


def _fit(text: str, width: int, glyphs: _Glyphs) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - len(glyphs.ellipsis), 0)] + glyphs.ellipsis


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap keeping `<options>` and `[tags]` whole where they fit; longer
    words are cut (after a comma where possible)."""
    chunks: list[str] = []
    current = ""
    for word in _WORDS.findall(text):
        while len(word) > width:
            if current:
                chunks.append(current)
                current = ""
            cut = word.rfind(",", 0, width) + 1 or width  # after a comma where possible
            chunks.append(word[:cut])
            word = word[cut:]
        if current and len(current) + 1 + len(word) > width:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*chunks, current] if current else chunks


def _arrow(label: str, direction: Direction, width: int, glyphs: _Glyphs, dashed: bool) -> str:
    """`── label ───▶` going out, `◀─── label ──` coming in, `width` characters long;
    the label must fit in `width - 6`."""
    line = glyphs.dashed if dashed else glyphs.line
    fill = line * (width - 5 - len(label))
    if direction == "out":
        return f"{line * 2} {label} {fill}{glyphs.right}"
    return f"{glyphs.left}{fill} {label} {line * 2}"


def segment_label(entry: TraceEntry, bases: dict[str, int]) -> str:
    """The text an arrow carries (empty for state changes)."""
    seg, way = entry.segment, entry.direction
    if entry.state_change is not None:
        return ""
    if seg is None:
        return entry.note or "undecodable packet"
    other = "in" if way == "out" else "out"
    text = _segment_text(seg, bases.get(way), bases.get(other))
    if seg.flags & SYN and (tag := _fast_open_tag(seg, bases.get(other))):
        text += f" [{tag}]"
    return f"{text} ({entry.note})" if entry.note else text


def _fast_open_tag(seg: Segment, ack_base: int | None) -> str:
    """A SYN's or SYN-ACK's part in TCP Fast Open, in a few words ("" for none)."""
    cookie = seg.options.tfo_cookie
    if not seg.flags & ACK:
        if cookie == b"":
            return "TFO cookie request"
        if seg.payload:
            return "TFO: data in the SYN" if cookie else "data in the SYN"
        return "TFO cookie" if cookie else ""
    acked = 0 if ack_base is None else _signed(seg.ack - ack_base - 1)
    words = ["TFO cookie"] if cookie else []
    if acked > 0:
        words.append(f"acks {acked} bytes of SYN data")
    return ", ".join(words)


def fast_open_lines(entries: Iterable[TraceEntry]) -> list[str]:
    """What TCP Fast Open did in the handshake, in words; [] when it played no part.

    Read from the segments alone, so it holds for either side: the opener's
    first SYN (cookie request, cookie, data) and the SYN-ACK that answered it.
    """
    syn: TraceEntry | None = None
    synack: Segment | None = None
    syns = 0
    for entry in entries:
        seg = entry.segment
        if seg is None:
            continue
        kind = seg.flags & _HANDSHAKE_MASK
        if kind == SYN and (syn is None or entry.direction == syn.direction):
            syn = syn or entry
            syns += 1
        elif kind == SYN | ACK and syn is not None and entry.direction != syn.direction:
            synack = seg
            break
    if syn is None or syn.segment is None:
        return []
    first = syn.segment
    cookie, sent = first.options.tfo_cookie, len(first.payload)
    given = synack.options.tfo_cookie if synack is not None else None
    if cookie is None and not sent and not given:
        return []
    head = "Fast Open" + (" (experimental option 254)" if first.options.tfo_experimental else "")
    if cookie == b"":
        what = "cookie requested"
    elif not sent:
        what = f"cookie {cookie.hex()} sent without data" if cookie else "no data in the SYN"
    else:
        what = f"{sent} bytes rode in the SYN"
    if synack is None:
        return [f"{head}: {what}; no SYN-ACK"]
    if cookie == b"":
        return [f"{head}: {what}; " + (f"the SYN-ACK carried cookie {given.hex()}" if given
                                       else "no cookie came back (the server ignored Fast Open)")]
    if sent and _signed(synack.ack - first.seq - 1) >= sent:
        what += " and were acknowledged by the SYN-ACK (1 RTT saved)"
    elif sent:
        retried = ", which was retransmitted without them" if syns > 1 else ""
        what += (f"{retried}; the SYN-ACK acknowledged only the SYN, so they went again after "
                 "the handshake (no RTT saved)")
    fresh = f"; the SYN-ACK carried a new cookie {given.hex()}" if given else ""
    return [f"{head}: {what}{fresh}"]


class LadderWriter:
    """Draws ladder lines one entry at a time, for live output; `ladder()` uses it too.

    `arrow_width` is the width of the arrow column; `cut` bounds every line.
    Without `bases`, each direction's ISN is learned from its first segment (a
    SYN's seq, when the first is a SYN), which is what a live view can know.
    """

    def __init__(self, *, arrow_width: int = 72, time_width: int = 11, state_column: bool = True,
                 relative: bool = True, bases: dict[str, int] | None = None,
                 t0: float | None = None, state: State | None = None, cut: int | None = None,
                 color: bool = False, ascii_only: bool = False) -> None:
        self.glyphs = _ASCII if ascii_only else _UNICODE
        self.arrow_width = arrow_width
        self.time_width = time_width
        self.state_width = _STATE_WIDTH + 2 if state_column else 0
        self.prefix_width = time_width + 2 + self.state_width
        self.relative = relative
        self.bases: dict[str, int] = dict(bases) if bases is not None else {}
        self._learn = relative and bases is None
        self._syn_ways: set[str] = set()  # directions whose base came from a SYN
        self.t0 = t0
        self.state = state
        self.cut = cut
        self.color = color

    def _emit(self, out: list[str], text: str, style: str, plain_upto: int = 0) -> None:
        """Append a line cut to `cut`; colour it after `plain_upto` (ANSI adds no width)."""
        if self.cut is not None:
            text = _fit(text, self.cut, self.glyphs)
        if self.color:
            text = text[:plain_upto] + style + text[plain_upto:] + _RESET
        out.append(text)

    def header(self, local: str, peer: str) -> list[str]:
        gap = self.arrow_width - len(local) - len(peer)
        pair = local + " " * gap + peer if gap >= 1 else local + self.glyphs.both + peer
        out: list[str] = []
        self._emit(out, " " * self.prefix_width + pair, _BOLD, self.prefix_width)
        return out

    def lines(self, entry: TraceEntry) -> list[str]:
        if self.t0 is None:
            self.t0 = entry.time
        seg = entry.segment
        if self._learn and seg is not None and (entry.direction not in self.bases or (
                seg.flags & SYN and entry.direction not in self._syn_ways)):
            self.bases[entry.direction] = seg.seq
            if seg.flags & SYN:
                self._syn_ways.add(entry.direction)
        out: list[str] = []
        start = f"{(entry.time - self.t0) * 1000:.3f} ms".rjust(self.time_width) + "  "
        glyphs = self.glyphs
        if entry.state_change is not None:
            old, new = entry.state_change
            change = f"{old}{glyphs.to}{new}" + (f" ({entry.note})" if entry.note else "")
            if entry.direction == "out":
                self.state = new
                self._emit(out, start + change, _MAGENTA, len(start))
            else:
                self._emit(out, start.ljust(self.prefix_width)
                           + f"peer: {change}".rjust(self.arrow_width), _MAGENTA, len(start))
            return out
        label = segment_label(entry, self.bases if self.relative else {})
        chunks = _wrap(label, self.arrow_width - 6)  # a long label goes on under its arrow
        arrow = _arrow(chunks[0], entry.direction, self.arrow_width, glyphs, dashed=seg is None)
        style = (_RED if seg is None or seg.flags & RST else
                 _CYAN if entry.direction == "out" else _GREEN)
        column = (str(self.state or "").ljust(_STATE_WIDTH) + "  ") if self.state_width else ""
        self._emit(out, start + column + arrow, style, self.prefix_width)
        for chunk in chunks[1:]:
            self._emit(out, " " * (self.prefix_width + 3) + chunk, style, self.prefix_width)
        return out

    def footer(self, entries: Iterable[TraceEntry]) -> list[str]:
        entries = list(entries)
        out: list[str] = []
        found = _handshake(entries)
        if found is not None:
            rtt, client = found
            what = ("SYN", "SYN-ACK") if client else ("SYN-ACK", "ACK")
            self._emit(out, f"handshake RTT {rtt * 1000:.3f} ms ({what[0]}{self.glyphs.to}"
                            f"{what[1]})", _BOLD)
        for line in fast_open_lines(entries):
            for chunk in _wrap(line, self.cut) if self.cut else [line]:
                self._emit(out, chunk, _BOLD)
        if self.relative and self.bases:
            isns = ", ".join(f"{side} {self.bases[way]}"
                             for way, side in (("out", "local"), ("in", "peer"))
                             if way in self.bases)
            self._emit(out, f"seq/ack relative to the ISNs: {isns}", _DIM)
        return out


def ladder(trace: Iterable[TraceEntry], *, relative: bool = True, width: int | None = None,
           color: bool = False, ascii_only: bool = False,
           omitted: Mapping[int, int] | None = None) -> str:
    """The trace as a text ladder: local endpoint on the left, peer on the right.

    One line per segment (elapsed ms, the local state, an arrow carrying flags
    in Scapy letters, seq/ack relative to each side's ISN unless `relative` is
    False, window, urgent pointer, payload length, options, note) and per state
    change, then the handshake RTT and the ISNs. `width` bounds every line: long
    labels wrap onto lines under their arrow, other lines are cut with an
    ellipsis. `color` adds ANSI colours; `ascii_only` draws in ASCII.
    An excerpt says where it skipped: `omitted[i] = n` puts a line "… n rows
    omitted …" before entry i (i == len(trace): after the last).
    """
    entries = list(trace)
    if not entries:
        return "(empty trace)"
    t0 = entries[0].time
    bases = isn_bases(entries) if relative else {}
    time_width = max(len(f"{(e.time - t0) * 1000:.3f} ms") for e in entries)
    local_changes = [e.state_change for e in entries if e.state_change and e.direction == "out"]
    peer_changes = [e.state_change for e in entries if e.state_change and e.direction == "in"]
    state_width = _STATE_WIDTH + 2 if local_changes else 0  # the column only when known
    prefix_width = time_width + 2 + state_width
    ends = endpoints(entries)
    labels = [segment_label(entry, bases) for entry in entries]
    natural = max([*map(len, labels), sum(map(len, ends or ())),
                   *(len(f"{old}{new}") + 14 for old, new in peer_changes), 24]) + 6
    writer = LadderWriter(
        arrow_width=natural if width is None else max(width - prefix_width, 16),
        time_width=time_width, state_column=bool(local_changes), relative=relative,
        bases=bases, t0=t0, state=local_changes[0][0] if local_changes else None, cut=width,
        color=color, ascii_only=ascii_only)
    lines = writer.header(*ends) if ends is not None else []
    gaps = omitted or {}
    dots = _ASCII.ellipsis if ascii_only else _UNICODE.ellipsis
    for i, entry in enumerate([*entries, None]):
        if gaps.get(i):
            lines.append(" " * prefix_width + f"{dots} {gaps[i]} rows omitted {dots}")
        if entry is not None:
            lines += writer.lines(entry)
    lines += writer.footer(entries)
    return "\n".join(lines)


# --- machine-readable exports -----------------------------------------------------------

def _options_dict(opts: Options) -> dict[str, object]:
    out: dict[str, object] = {}
    if opts.mss is not None:
        out["mss"] = opts.mss
    if opts.wscale is not None:
        out["wscale"] = opts.wscale
    if opts.sack_permitted:
        out["sack_permitted"] = True
    if opts.timestamps is not None:
        out["timestamps"] = list(opts.timestamps)
    if opts.sack_blocks:
        out["sack_blocks"] = [list(block) for block in opts.sack_blocks]
    if opts.tfo_cookie is not None:
        out["tfo_cookie"] = opts.tfo_cookie.hex()
        out["tfo_experimental"] = opts.tfo_experimental
    if opts.unknown:
        out["unknown"] = [{"kind": kind, "data": body.hex()} for kind, body in opts.unknown]
    if opts.malformed:
        out["malformed"] = True
    return out


def to_json_lines(trace: Trace | Iterable[TraceEntry]) -> Iterator[str]:
    """One compact JSON object per entry, absolute seq/ack, times plus `time_offset`.

    Segments: {"t", "type": "segment", "dir", "src", "dst", "sport", "dport",
    "flags", "seq", "ack", "win", "urg", "len", "options", "note"} (no segment
    fields for an undecodable packet). State changes: {"t", "type": "state",
    "dir", "side", "old", "new", "note"}.
    """
    offset = trace.time_offset if isinstance(trace, Trace) else 0.0
    for entry in trace:
        obj: dict[str, object] = {"t": entry.time + offset}
        seg = entry.segment
        if entry.state_change is not None:
            old, new = entry.state_change
            obj.update(type="state", dir=entry.direction, side=entry.side, old=str(old),
                       new=str(new))
        else:
            obj.update(type="segment", dir=entry.direction)
            if seg is not None:
                obj.update(src=seg.src, dst=seg.dst, sport=seg.sport, dport=seg.dport,
                           flags=flag_str(seg.flags), seq=seg.seq, ack=seg.ack, win=seg.window,
                           urg=seg.urgent, len=len(seg.payload),
                           options=_options_dict(seg.options))
        obj["note"] = entry.note
        yield json.dumps(obj, separators=(",", ":"))


def to_scapy_list(trace: Trace | Iterable[TraceEntry]) -> PacketList:
    """The segments as Scapy IP/TCP packets with `.time` from the trace (Scapy imported now)."""
    from scapy.plist import PacketList

    from tcpscapy.io.codec import to_scapy

    offset = trace.time_offset if isinstance(trace, Trace) else 0.0
    packets = []
    for entry in trace:
        if entry.segment is not None:
            pkt = to_scapy(entry.segment)
            pkt.time = entry.time + offset
            packets.append(pkt)
    return PacketList(packets, name="tcpscapy trace")


def write_pcap(trace: Trace | Iterable[TraceEntry], path: str | PathLike[str]) -> None:
    """Write the segments to a pcap file (raw IPv4 link type) with Scapy's wrpcap."""
    from scapy.utils import wrpcap

    wrpcap(str(path), to_scapy_list(trace))
