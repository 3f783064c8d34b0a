"""Pictures of a transfer: a time-sequence graph and the sender's state over time (SVG).

Top panel (Stevens/tcptrace style): one direction's data as a vertical bar per
segment from its first to its last byte, at the time it was sent; the ACK line
(the highest cumulative ACK coming back), the receive-window line (ACK plus the
advertised window: how far the sender may go), SACK blocks, retransmissions
(red, one mark each) and segments the trace notes as lost, and RACK/TLP events
where the trace records them (a note naming them).

Below: congestion window, ssthresh and bytes in flight with the congestion
control's phases shaded, then smoothed RTT and RTO. These come from a
`tcpscapy.metrics.MetricsRecorder`; without one (a capture, or data that flows
towards us) bytes in flight are worked out from the segments as the sender
sees them (highest byte sent minus highest ACK) and RTT samples from when a
segment went out to the ACK that covered it (Karn: never a retransmitted one).

Everything is drawn per pixel column, so a transfer of any length gives a
bounded number of SVG elements: marks above `MAX_MARKS` of a kind are merged
per column and the legend gives their number.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import escape

from tcpscapy.core.segment import ACK, FIN, SYN
from tcpscapy.metrics import Sample
from tcpscapy.trace import Direction, TraceEntry

__all__ = ["MAX_MARKS", "FlowData", "analyse", "plot_svg", "write_plot_svg"]

WIDTH = 1000  # pixel columns of the plots
LEFT, RIGHT = 90, 40
SEQ_HEIGHT, CC_HEIGHT, RTT_HEIGHT = 420, 220, 150
GAP = 70  # between panels: the time axis labels and the next legend
TOP = 60
MAX_MARKS = 400  # individual marks of one kind; more are merged per column
_EVENT = re.compile(r"\b(tlp|rack|probe|loss probe)\b", re.IGNORECASE)

COLORS = {"data": "#1565c0", "rtx": "#d32f2f", "lost": "#212121", "ack": "#2e7d32",
          "rwnd": "#f9a825", "sack": "#8e24aa", "event": "#ef6c00", "cwnd": "#1565c0",
          "ssthresh": "#d32f2f", "flight": "#2e7d32", "srtt": "#1565c0", "rto": "#d32f2f",
          "rtt": "#1565c0"}
PHASES = {"slow-start": "#dbeafe", "congestion-avoidance": "#dcfce7", "recovery": "#fee2e2",
          "rto-recovery": "#fbcfe8", "startup": "#ffedd5", "drain": "#f3e8ff",
          "probe-bw": "#cffafe", "probe-rtt": "#fef9c3"}
_OTHER_PHASE = "#e5e7eb"

_STYLE = """
  text { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; font-size: 12px; fill: #222; }
  .title { font-size: 15px; font-weight: bold; }
  .axis { fill: none; stroke: #444; }
  .grid { stroke: #e5e5e5; }
  .tick { fill: #555; font-size: 11px; }
  .panel { font-weight: bold; }
  .note { fill: #555; font-size: 11px; }
  polyline, .line { fill: none; stroke-width: 1.5; }
"""


@dataclass
class FlowData:
    """One direction's transfer, in bytes relative to its first data byte."""

    direction: Direction
    t0: float
    t1: float
    data: list[tuple[float, int, int]] = field(default_factory=list)  # new data: t, start, end
    rtx: list[tuple[float, int, int]] = field(default_factory=list)  # retransmissions
    lost: list[tuple[float, int, int]] = field(default_factory=list)  # noted lost/dropped
    acks: list[tuple[float, int]] = field(default_factory=list)
    rwnd: list[tuple[float, int]] = field(default_factory=list)  # ack + window
    sacks: list[tuple[float, int, int]] = field(default_factory=list)
    events: list[tuple[float, int, str]] = field(default_factory=list)  # RACK/TLP notes
    flight: list[tuple[float, int]] = field(default_factory=list)  # as the sender sees it
    rtt: list[tuple[float, float]] = field(default_factory=list)  # Karn samples, seconds
    window_scale_known: bool = True


def _signed(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def pick_direction(entries: Sequence[TraceEntry]) -> Direction:
    """The direction that carried more payload ("out" on a tie)."""
    sent = {"out": 0, "in": 0}
    for entry in entries:
        if entry.segment is not None:
            sent[entry.direction] += len(entry.segment.payload)
    return "in" if sent["in"] > sent["out"] else "out"


def analyse(entries: Iterable[TraceEntry], direction: Direction | None = None) -> FlowData:
    """What the plots draw, from a trace's entries (a live trace or a capture's)."""
    items = [e for e in entries if e.segment is not None and e.state_change is None]
    way: Direction = direction or pick_direction(items)
    t0 = items[0].time if items else 0.0
    flow = FlowData(way, t0, items[-1].time if items else 0.0)
    base: int | None = None  # the data sender's first data byte
    ws_data: int | None = None  # window scale in the data sender's SYN
    ws_ack: int | None = None  # and in the ACK sender's
    syn_seen = {"data": False, "ack": False}
    for e in items:
        seg = e.segment
        assert seg is not None
        if seg.flags & SYN:
            if e.direction == way:
                base = (seg.seq + 1) & 0xFFFFFFFF
                ws_data, syn_seen["data"] = seg.options.wscale, True
            else:
                ws_ack, syn_seen["ack"] = seg.options.wscale, True
        elif base is None and e.direction == way:
            base = seg.seq
    flow.window_scale_known = syn_seen["data"] and syn_seen["ack"]
    scale = ws_ack if ws_data is not None and ws_ack is not None else 0
    if base is None:
        return flow
    hi: int | None = None  # highest byte sent, just past it
    una: int | None = None  # highest ACK
    pending: deque[tuple[int, float, int]] = deque()  # new segments: end, sent at, start
    rtx_starts: set[int] = set()
    ref = [base, 0]  # a recent (sequence number, offset): offsets go on past 4 GB

    def rel(value: int) -> int:
        return ref[1] + _signed(value - ref[0])
    for e in items:
        seg = e.segment
        assert seg is not None
        t = e.time
        if e.direction == way:
            length = len(seg.payload) + (1 if seg.flags & FIN else 0)
            if seg.flags & SYN or not length:
                continue
            start = rel(seg.seq)
            end = start + length
            mark = (t, start, end)
            if hi is not None and end <= hi:
                flow.rtx.append(mark)
                rtx_starts.add(start)
            else:
                flow.data.append(mark)
                pending.append((end, t, start))
                hi = end
                ref[0], ref[1] = seg.seq, start
            if e.note and ("lost" in e.note or "dropped" in e.note):
                flow.lost.append(mark)
            if e.note and (found := _EVENT.search(e.note)):
                flow.events.append((t, end, found.group(1).upper()))
            if una is not None:
                flow.flight.append((t, max(hi - una, 0)))
            continue
        if not seg.flags & ACK:
            continue
        ack = rel(seg.ack)
        if una is None or ack > una:
            una = ack
            sample = None
            while pending and pending[0][0] <= ack:
                end, sent_at, start = pending.popleft()
                if start not in rtx_starts:
                    sample = t - sent_at
            if sample is not None:
                flow.rtt.append((t, sample))
        flow.acks.append((t, ack))
        window = seg.window if seg.flags & SYN else seg.window << (scale or 0)
        flow.rwnd.append((t, ack + window))
        for left, right in seg.options.sack_blocks:
            flow.sacks.append((t, rel(left), rel(right)))
        if e.note and (found := _EVENT.search(e.note)):
            flow.events.append((t, ack, found.group(1).upper()))
        if hi is not None:
            flow.flight.append((t, max(hi - una, 0)))
    return flow


# --- drawing ---------------------------------------------------------------------------

def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _ticks(lo: float, hi: float, count: int) -> list[float]:
    step = _nice_step(hi - lo, count)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _bytes_label(value: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g}"


def _time_label(value: float, span: float) -> str:
    return f"{value * 1000:g} ms" if span < 2 else f"{value:g} s"


class _Panel:
    """One plot area: maps (time, value) to pixels."""

    def __init__(self, top: int, height: int, t0: float, span: float, y_lo: float,
                 y_hi: float, log: bool = False, origin: float = 0.0) -> None:
        self.top, self.height, self.t0, self.span = top, height, t0, span
        self.origin = origin  # what the time axis reads at t0: a zoomed view keeps its clock
        self.log = log  # a log scale: RTTs of 0.1 ms and RTOs of 1 s in one panel
        if log:
            y_lo, y_hi = math.log10(y_lo), math.log10(y_hi)
        self.y_lo, self.y_hi = y_lo, y_hi if y_hi > y_lo else y_lo + 1

    def col(self, t: float) -> int:
        return min(max(int((t - self.t0) / self.span * (WIDTH - 1)), 0), WIDTH - 1)

    def x(self, t: float) -> float:
        return LEFT + self.col(t) + 0.5

    def y(self, value: float) -> float:
        if self.log:
            value = math.log10(value) if value > 0 else self.y_lo
        frac = (value - self.y_lo) / (self.y_hi - self.y_lo)
        return round(self.top + self.height * (1 - min(max(frac, 0.0), 1.0)), 1)  # kept inside


def _frame(out: list[str], p: _Panel, name: str, y_label: str, y_fmt: str,
           legend: list[tuple[str, str, str]]) -> None:
    """Grid, axes, tick labels, the panel's name and its legend (label, colour, style)."""
    bottom = p.top + p.height
    values = ([10.0 ** e for e in range(math.ceil(p.y_lo - 1e-9), math.floor(p.y_hi + 1e-9) + 1)]
              if p.log else _ticks(p.y_lo, p.y_hi, 6))
    for v in values:
        y = p.y(v)
        text = _bytes_label(v) if y_fmt == "bytes" else f"{v * 1000:g} ms"
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{LEFT + WIDTH}" y2="{y}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
                   f'{escape(text)}</text>')
    for t in _ticks(p.origin, p.origin + p.span, 10):
        x = LEFT + (t - p.origin) / p.span * (WIDTH - 1)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{p.top}" x2="{x:.1f}" y2="{bottom}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">'
                   f'{escape(_time_label(t, p.origin + p.span))}</text>')
    out.append(f'<rect class="axis" x="{LEFT}" y="{p.top}" width="{WIDTH}" '
               f'height="{p.height}"/>')
    out.append(f'<text class="panel" x="{LEFT}" y="{p.top - 26}">{escape(name)}</text>')
    out.append(f'<text class="note" x="{LEFT - 84}" y="{p.top - 8}">{escape(y_label)}</text>')
    x = LEFT
    for label, color, style in legend:
        if style == "box":
            out.append(f'<rect x="{x}" y="{p.top - 14}" width="14" height="10" fill="{color}" '
                       f'stroke="#999"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if style == "dash" else ""
            out.append(f'<line x1="{x}" y1="{p.top - 9}" x2="{x + 18}" y2="{p.top - 9}" '
                       f'stroke="{color}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{x + 22}" y="{p.top - 5}">{escape(label)}</text>')
        x += 30 + 7 * len(label)


def _step_line(p: _Panel, points: Sequence[tuple[float, float]], cls: str,
               dash: bool = False) -> str:
    """A staircase through the last value of each column (values hold until the next)."""
    last: dict[int, float] = {}
    for t, v in points:
        last[p.col(t)] = v
    coords: list[str] = []
    prev: float | None = None
    for c in sorted(last):
        y = p.y(last[c])
        if prev is not None:
            coords.append(f"{LEFT + c + 0.5},{prev}")
        coords.append(f"{LEFT + c + 0.5},{y}")
        prev = y
    style = ' stroke-dasharray="5 3"' if dash else ""
    return (f'<polyline class="{cls}" stroke="{COLORS[cls]}"{style} '
            f'points="{" ".join(coords)}"/>')


def _envelope_line(p: _Panel, points: Sequence[tuple[float, float]], cls: str,
                   dash: bool = False) -> str:
    """A staircase that keeps each column's first, lowest, highest and last value in
    time order, so a short spike or dip survives the thinning."""
    cols: dict[int, list[tuple[float, float]]] = {}
    for t, v in points:
        c = p.col(t)
        kept = cols.get(c)
        if kept is None:
            cols[c] = [(t, v), (t, v), (t, v), (t, v)]  # first, lowest, highest, last
        else:
            if v < kept[1][1]:
                kept[1] = (t, v)
            if v > kept[2][1]:
                kept[2] = (t, v)
            kept[3] = (t, v)
    coords: list[str] = []
    prev: float | None = None
    for c in sorted(cols):
        x = LEFT + c + 0.5
        if prev is not None:
            coords.append(f"{x},{prev}")
        for _, v in sorted(set(cols[c])):
            prev = p.y(v)
            coords.append(f"{x},{prev}")
        prev = p.y(cols[c][3][1])
        coords.append(f"{x},{prev}")
    style = ' stroke-dasharray="5 3"' if dash else ""
    return (f'<polyline class="{cls}" stroke="{COLORS[cls]}"{style} '
            f'points="{" ".join(coords)}"/>')


def _bars(p: _Panel, marks: Sequence[tuple[float, int, int]], cls: str, width: float,
          color: str | None = None) -> str:
    """Vertical bars, merged per column, in one path."""
    cols: dict[int, tuple[int, int]] = {}
    for t, lo, hi in marks:
        c = p.col(t)
        have = cols.get(c)
        cols[c] = (lo, hi) if have is None else (min(have[0], lo), max(have[1], hi))
    d = []
    for c, (lo, hi) in sorted(cols.items()):
        y1, y2 = p.y(lo), p.y(hi)
        if y1 - y2 < 2:  # at least 2 pixels, so a segment is seen
            y2 = y1 - 2
        d.append(f"M{LEFT + c + 0.5},{y1}V{y2}")
    return (f'<path class="{cls}" stroke="{color or COLORS[cls]}" stroke-width="{width}" '
            f'fill="none" d="{"".join(d)}"/>')


def _marks(p: _Panel, marks: Sequence[tuple[float, int, int]], cls: str) -> list[str]:
    """One element per mark (up to MAX_MARKS), else bars merged per column."""
    if len(marks) > MAX_MARKS:
        return [_bars(p, marks, cls + "-merged", 3, COLORS[cls])]
    out = []
    color = COLORS[cls]
    for t, lo, hi in marks:
        x, y1, y2 = p.x(t), p.y(lo), p.y(hi)
        if y1 - y2 < 4:
            y2 = y1 - 4
        if cls == "lost":
            out.append(f'<path class="lost" stroke="{color}" stroke-width="1.5" '
                       f'd="M{x - 4},{y2 - 8}l8,8m0,-8l-8,8"/>')
        else:
            out.append(f'<path class="{cls}" stroke="{color}" stroke-width="2.5" fill="none" '
                       f'd="M{x},{y1}V{y2}M{x - 4},{y1}h8M{x - 4},{y2}h8"/>')
    return out


def _seq_panel(out: list[str], flow: FlowData, p: _Panel, sides: tuple[str, str] | None) -> None:
    legend = [("data sent", COLORS["data"], "line"),
              (f"retransmission ({len(flow.rtx)})", COLORS["rtx"], "line"),
              ("ACK", COLORS["ack"], "line"), ("ACK + window", COLORS["rwnd"], "line")]
    if flow.sacks:
        legend.append(("SACK block", COLORS["sack"], "line"))
    if flow.lost:
        legend.append((f"lost ({len(flow.lost)})", COLORS["lost"], "line"))
    if flow.events:
        legend.append((f"RACK/TLP ({len(flow.events)})", COLORS["event"], "line"))
    if sides is None:
        who = "our data" if flow.direction == "out" else "the peer's data"
    else:
        sender, receiver = sides if flow.direction == "out" else sides[::-1]
        who = f"data from {sender} to {receiver}"
    _frame(out, p, f"Time-sequence graph: {who}", "sequence", "bytes", legend)
    if flow.rwnd:
        out.append(_step_line(p, flow.rwnd, "rwnd"))
    if flow.acks:
        out.append(_step_line(p, flow.acks, "ack"))
    if flow.sacks:
        sack_cols: dict[int, set[tuple[int, int]]] = {}
        for t, lo, hi in flow.sacks:
            blocks = sack_cols.setdefault(p.col(t), set())
            if len(blocks) < 4:
                blocks.add((lo, hi))
        d = "".join(f"M{LEFT + c + 0.5},{p.y(lo)}V{p.y(hi)}"
                    for c, blocks in sorted(sack_cols.items()) for lo, hi in sorted(blocks))
        out.append(f'<path class="sack" stroke="{COLORS["sack"]}" stroke-width="3" '
                   f'stroke-opacity="0.6" fill="none" d="{d}"/>')
    if flow.data:
        out.append(_bars(p, flow.data, "data", 1.5))
    out.extend(_marks(p, flow.rtx, "rtx"))
    out.extend(_marks(p, flow.lost, "lost"))
    for t, y, label in flow.events[:MAX_MARKS]:
        x, yy = p.x(t), p.y(y)
        out.append(f'<path class="event" fill="{COLORS["event"]}" '
                   f'd="M{x},{yy - 6}l-5,-9h10z"><title>{escape(label)}</title></path>')
    if not flow.window_scale_known:
        out.append(f'<text class="note" x="{LEFT + WIDTH}" y="{p.top - 26}" text-anchor="end">'
                   'no SYNs seen: window scale unknown, windows drawn unscaled</text>')


def _phase_rects(p: _Panel, samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
    """Shaded runs of the CC phase (one per run of columns) and the phases seen."""
    by_col: dict[int, str] = {}
    for s in samples:
        by_col[p.col(s.time)] = s.phase
    runs: list[tuple[int, int, str]] = []
    cols = sorted(by_col)
    for i, c in enumerate(cols):
        end = cols[i + 1] if i + 1 < len(cols) else WIDTH
        phase = by_col[c]
        if runs and runs[-1][2] == phase:
            runs[-1] = (runs[-1][0], end, phase)
        else:
            runs.append((c, end, phase))
    out, seen = [], []
    for start, end, phase in runs:
        if not phase:
            continue
        if phase not in seen:
            seen.append(phase)
        out.append(f'<rect class="phase" x="{LEFT + start}" y="{p.top}" width="{end - start}" '
                   f'height="{p.height}" fill="{PHASES.get(phase, _OTHER_PHASE)}">'
                   f'<title>{escape(phase)}</title></rect>')
    return out, seen


def _series(samples: Sequence[Sample], name: str) -> list[tuple[float, float]]:
    return [(s.time, v) for s in samples if (v := getattr(s, name)) is not None]


def _cc_panel(out: list[str], flow: FlowData, samples: Sequence[Sample] | None,
              p_top: int, t0: float, span: float, origin: float) -> None:
    if samples:
        cwnd, ssthresh = _series(samples, "cwnd"), _series(samples, "ssthresh")
        flight = _series(samples, "bytes_in_flight")
        name = "Sender: congestion window, ssthresh, bytes in flight"
    else:
        cwnd, ssthresh, flight = [], [], [(t, float(v)) for t, v in flow.flight]
        name = ("Bytes in flight as the sender sees them (highest byte sent - highest ACK; "
                "cwnd is not visible here)")
    values = [v for _, v in (*cwnd, *ssthresh, *flight)]
    p = _Panel(p_top, CC_HEIGHT, t0, span, 0.0, max(values, default=1.0) * 1.1, origin=origin)
    rects, phases = _phase_rects(p, samples) if samples else ([], [])
    out.extend(rects)
    legend = [(label, COLORS[key], style) for label, key, style, series in (
        ("cwnd", "cwnd", "line", cwnd), ("ssthresh", "ssthresh", "dash", ssthresh),
        ("bytes in flight", "flight", "line", flight)) if series]
    legend += [(phase, PHASES.get(phase, _OTHER_PHASE), "box") for phase in phases]
    _frame(out, p, name, "bytes", "bytes", legend)
    if flight:
        out.append(_envelope_line(p, flight, "flight"))
    if ssthresh:
        out.append(_step_line(p, ssthresh, "ssthresh", dash=True))
    if cwnd:
        out.append(_envelope_line(p, cwnd, "cwnd"))


def _rtt_panel(out: list[str], flow: FlowData, samples: Sequence[Sample] | None,
               p_top: int, t0: float, span: float, origin: float) -> None:
    srtt = _series(samples, "srtt") if samples else []
    rto = _series(samples, "rto") if samples else []
    values = [v for _, v in (*srtt, *rto)] or [v for _, v in flow.rtt]
    positive = [v for v in values if v > 0]
    lo = 10.0 ** math.floor(math.log10(min(positive, default=1e-4)))
    hi = 10.0 ** math.ceil(math.log10(max(positive, default=1e-3) * 1.01))
    p = _Panel(p_top, RTT_HEIGHT, t0, span, lo, max(hi, lo * 10), log=True, origin=origin)
    if srtt or rto:
        legend = [("smoothed RTT", COLORS["srtt"], "line"), ("RTO", COLORS["rto"], "dash")]
        _frame(out, p, "Round-trip time and retransmission timeout (log scale)", "time", "ms",
               legend)
        if rto:
            out.append(_step_line(p, rto, "rto", dash=True))
        if srtt:
            out.append(_envelope_line(p, srtt, "srtt"))
        return
    _frame(out, p, "RTT samples (send to covering ACK, Karn; log scale)", "time", "ms",
           [(f"RTT sample ({len(flow.rtt)})", COLORS["rtt"], "line")])
    cols: dict[int, set[float]] = {}
    for t, v in flow.rtt:
        ys = cols.setdefault(p.col(t), set())
        if len(ys) < 6:
            ys.add(p.y(v))
    d = "".join(f"M{LEFT + c},{y}h1" for c, ys in sorted(cols.items()) for y in sorted(ys))
    out.append(f'<path class="rtt" stroke="{COLORS["rtt"]}" stroke-width="3" '
               f'stroke-linecap="round" fill="none" d="{d}"/>')


def plot_svg(entries: Iterable[TraceEntry], samples: Sequence[Sample] | None = None, *,
             direction: Direction | None = None, title: str | None = None,
             sides: tuple[str, str] | None = None,
             window: tuple[float | None, float | None] | None = None) -> str:
    """The SVG document: time-sequence graph, sender state, RTT.

    `direction` picks whose data to draw ("out": ours, "in": the peer's; default:
    the one that carried more). `samples` (a MetricsRecorder's) describe our
    sending side, so they are used only when our data is drawn. `sides` names
    the "out" and "in" ends (e.g. ("client", "server") for a capture). `window`
    = (start, end) in seconds since the first segment draws only that stretch
    (None: from the beginning, to the end).
    """
    flow = analyse(entries, direction)
    if flow.direction != "out":
        samples = None
    times = [flow.t0, flow.t1, *(s.time for s in (samples or ()))]
    t0 = start = min(times)
    t1 = max(times)
    if window is not None:
        t0 = start + (window[0] or 0.0)
        t1 = min(t1, start + window[1]) if window[1] is not None else t1
        flow = _trimmed(flow, t0, t1)
        samples = [s for s in samples or () if t0 <= s.time <= t1]
    span = max(t1 - t0, 1e-6)
    origin = t0 - start
    ys = [v for _, lo, hi in (*flow.data, *flow.rtx) for v in (lo, hi)]
    # the window line may run far above the data: it is cut at the top, not scaled to
    y_hi = max([*ys, *(v for _, v in flow.acks)], default=1)
    seq_top = TOP + 30
    cc_top = seq_top + SEQ_HEIGHT + GAP
    rtt_top = cc_top + CC_HEIGHT + GAP
    width, height = LEFT + WIDTH + RIGHT, rtt_top + RTT_HEIGHT + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">', f"<style>{_STYLE}</style>",
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text class="title" x="20" y="26">{escape(title)}</text>')
    sent = max((hi for _, _, hi in flow.data), default=0)
    if window is not None:  # the bytes first sent within the window
        sent -= min((lo for _, lo, _ in flow.data), default=0)
    out.append(f'<text class="note" x="20" y="46">{escape(_summary(flow, sent, span))}</text>')
    y_lo = min(ys, default=0) if window is not None else min([0, *ys])
    seq = _Panel(seq_top, SEQ_HEIGHT, t0, span, y_lo, y_hi * 1.05 if not window
                 else y_hi + (y_hi - y_lo) * 0.05, origin=origin)
    _seq_panel(out, flow, seq, sides)
    _cc_panel(out, flow, samples, cc_top, t0, span, origin)
    _rtt_panel(out, flow, samples, rtt_top, t0, span, origin)
    out.append(f'<text class="note" x="{LEFT + WIDTH}" y="{height - 10}" text-anchor="end">'
               f'time since the first segment</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _trimmed(flow: FlowData, t0: float, t1: float) -> FlowData:
    """The flow between t0 and t1 only."""
    def keep(items: list) -> list:  # type: ignore[type-arg]
        return [item for item in items if t0 <= item[0] <= t1]
    return FlowData(flow.direction, t0, t1, keep(flow.data), keep(flow.rtx), keep(flow.lost),
                    keep(flow.acks), keep(flow.rwnd), keep(flow.sacks), keep(flow.events),
                    keep(flow.flight), keep(flow.rtt), flow.window_scale_known)


def _summary(flow: FlowData, sent: int, span: float) -> str:
    words = [f"{_bytes_label(sent)} in {span:.3g} s" if sent else "no data",
             f"{len(flow.data)} data segments", f"{len(flow.rtx)} retransmissions"]
    if flow.lost:
        words.append(f"{len(flow.lost)} lost")
    if flow.rtt:
        rtts = sorted(v for _, v in flow.rtt)
        words.append(f"median RTT {rtts[len(rtts) // 2] * 1000:.3g} ms")
    return ", ".join(words)


def write_plot_svg(entries: Iterable[TraceEntry], path: str | PathLike[str],
                   samples: Sequence[Sample] | None = None, *,
                   direction: Direction | None = None, title: str | None = None,
                   sides: tuple[str, str] | None = None,
                   window: tuple[float | None, float | None] | None = None) -> None:
    Path(path).write_text(plot_svg(entries, samples, direction=direction, title=title,
                                   sides=sides, window=window), encoding="utf-8")
