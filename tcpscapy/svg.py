"""The ladder as an SVG picture, for handouts and slides.

Time runs down the page, one row per event; the local endpoint is the left
rail and the peer the right one. Each segment is an arrow slanting in its
direction of travel, labelled as in the text ladder; state changes sit beside
the rail of the side that changed. Only the standard library is used, so the
file opens in any browser or vector editor.

A long trace keeps its first and last MAX_ROWS/2 rows and draws a marker
saying how many rows were left out in between: a 5 MB transfer would otherwise
be ~190,000 px tall, more than SVG viewers and rsvg-convert will open.
`max_rows=None` draws every row.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from xml.sax.saxutils import escape

from tcpscapy.core.segment import RST
from tcpscapy.trace import TraceEntry, endpoints, handshake_rtt, isn_bases, segment_label

ROW = 34  # vertical space per event
MARGIN_TOP = 70
TIME_COLUMN = 100  # left margin holding the elapsed time
RAIL_GAP = 560  # distance between the two rails
STATE_COLUMN = 250  # room beside each rail for state names
SLANT = 18  # how far an arrow drops while it crosses
COLORS = {"out": "#1565c0", "in": "#2e7d32", "rst": "#c62828", "state": "#6a1b9a"}
MAX_ROWS = 400  # ~14,000 px: every viewer opens that

_STYLE = """
  text { font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; font-size: 12px; }
  .rail { stroke: #444; stroke-width: 2; }
  .time { fill: #666; text-anchor: end; }
  .title { font-size: 15px; font-weight: bold; }
  .endpoint { font-weight: bold; text-anchor: middle; }
  .state { fill: STATE_COLOR; }
  .note { fill: #555; font-size: 11px; }
  .omitted { fill: #555; font-style: italic; text-anchor: middle; }
""".replace("STATE_COLOR", COLORS["state"])


def ladder_svg(trace: Iterable[TraceEntry], *, relative: bool = True,
               title: str | None = None, max_rows: int | None = MAX_ROWS) -> str:
    """An SVG document drawing the trace as a ladder; the middle of a trace longer than
    `max_rows` is left out, with a marker row saying so (None: every row)."""
    entries = list(trace)
    rows = _rows(entries, max_rows)
    left = TIME_COLUMN + STATE_COLUMN
    right = left + RAIL_GAP
    width = right + STATE_COLUMN + 20
    height = MARGIN_TOP + ROW * (len(rows) + 2) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f"<style>{_STYLE}</style>",
             '<defs>' + "".join(
                 f'<marker id="head-{name}" markerWidth="10" markerHeight="8" refX="9" '
                 f'refY="4" orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="{color}"/></marker>'
                 for name, color in COLORS.items()) + '</defs>',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text class="title" x="20" y="24">{escape(title)}</text>')
    ends = endpoints(entries)
    if ends is not None:
        parts.append(_text(left, 52, ends[0], "endpoint"))
        parts.append(_text(right, 52, ends[1], "endpoint"))
    bottom = MARGIN_TOP + ROW * (len(rows) + 1)
    for x in (left, right):
        parts.append(f'<line class="rail" x1="{x}" y1="{MARGIN_TOP - 8}" x2="{x}" y2="{bottom}"/>')
    bases = isn_bases(entries) if relative else {}
    t0 = entries[0].time if entries else 0.0
    for row, entry in enumerate(rows):
        y = MARGIN_TOP + ROW * row + ROW // 2
        if isinstance(entry, int):
            parts.append(f'<rect x="{left}" y="{y - ROW // 2 + 4}" width="{right - left}" '
                         f'height="{ROW - 8}" fill="#eeeeee"/>')
            parts.append(_text((left + right) // 2, y + 4, f"… {entry:,} rows omitted …",
                               "omitted"))
            continue
        parts.append(_text(TIME_COLUMN - 8, y + 4, f"{(entry.time - t0) * 1000:.3f} ms",
                           "time"))
        parts.extend(_event(entry, y, left, right, bases))
    rtt = handshake_rtt(entries)
    if rtt is not None:
        parts.append(_text(20, bottom + 28, f"handshake RTT {rtt * 1000:.3f} ms", "note"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_ladder_svg(trace: Iterable[TraceEntry], path: str | PathLike[str], *,
                     relative: bool = True, title: str | None = None,
                     max_rows: int | None = MAX_ROWS) -> None:
    Path(path).write_text(ladder_svg(trace, relative=relative, title=title,
                                     max_rows=max_rows), encoding="utf-8")


def _rows(entries: list[TraceEntry], max_rows: int | None) -> list[TraceEntry | int]:
    """The entries to draw: all, or the first and last halves of `max_rows` with the
    number left out between them."""
    if max_rows is None or len(entries) <= max_rows:
        return list(entries)
    head = max(max_rows // 2, 1)
    tail = max(max_rows - head - 1, 1)
    return [*entries[:head], len(entries) - head - tail, *entries[-tail:]]


def _event(entry: TraceEntry, y: int, left: int, right: int,
           bases: dict[str, int]) -> list[str]:
    if entry.state_change is not None:
        old, new = entry.state_change
        text = f"{old} → {new}"
        if entry.direction == "out":  # our side: left of the left rail
            return [_text(left - 10, y + 4, text, "state", anchor="end")]
        return [_text(right + 10, y + 4, text, "state")]
    seg = entry.segment
    kind = "rst" if seg is not None and seg.flags & RST else entry.direction
    color = COLORS[kind]
    x1, x2 = (left, right) if entry.direction == "out" else (right, left)
    dash = ' stroke-dasharray="6 4"' if entry.note else ""  # lost, dropped, undecodable
    label = segment_label(entry, bases)
    mid = (left + right) // 2
    return [f'<line x1="{x1}" y1="{y - SLANT // 2}" x2="{x2}" y2="{y + SLANT // 2}" '
            f'stroke="{color}" stroke-width="1.6"{dash} marker-end="url(#head-{kind})"/>',
            _text(mid, y - SLANT // 2 - 3, label, None, anchor="middle", fill=color)]


def _text(x: int, y: int, text: str, cls: str | None, *, anchor: str | None = None,
          fill: str | None = None) -> str:
    attrs = f' class="{cls}"' if cls else ""
    if anchor:
        attrs += f' text-anchor="{anchor}"'
    if fill:
        attrs += f' fill="{fill}"'
    return f'<text x="{x}" y="{y}"{attrs}>{escape(text)}</text>'
