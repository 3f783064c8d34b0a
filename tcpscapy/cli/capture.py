"""`tcpscapy plot CAPTURE` and `tcpscapy ladder CAPTURE`: pictures of any TCP connection
in a tcpdump or Wireshark capture (pcap or pcapng), kernel or not. No root needed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tcpscapy.capture import CaptureError, Connection, connection_trace, connections, pick
from tcpscapy.capture import read_capture as _read
from tcpscapy.cli._common import Command
from tcpscapy.svg import write_ladder_svg
from tcpscapy.trace import ladder as text_ladder

EXIT_BAD_INPUT = 2

_FLOW_HELP = ("Which connection: its number in --list (1 is the first), a port, or HOST:PORT "
              "of either end. Default: the first that starts with a SYN.")


def _fail(command: str, message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"tcpscapy {command}: {message}", err=True)
    sys.exit(code)


def _connection(command: str, capture: str, flow: str | None, listing: bool) -> Connection:
    try:
        conns = connections(_read(capture))
        if listing:
            for number, conn in enumerate(conns, 1):
                click.echo(f"{number:3}  {conn.name}  {len(conn.segments)} segments, "
                           f"{conn.payload_bytes} payload bytes")
            if not conns:
                raise CaptureError(f"{capture}: no TCP segments in the capture")
            sys.exit(0)
        try:
            return pick(conns, flow)
        except CaptureError as exc:
            raise CaptureError(f"{capture}: {exc}") from None
    except CaptureError as exc:
        _fail(command, str(exc))
    raise AssertionError("not reached")


def _title(conn: Connection, capture: str) -> str:
    return f"{conn.name} (client > server), from {Path(capture).name}"


@click.command(cls=Command)
@click.argument("capture", metavar="CAPTURE")
@click.option("-o", "--output", "out_path", metavar="FILE",
              help="The SVG to write (default: CAPTURE with .svg instead of its suffix).")
@click.option("--flow", metavar="N|PORT|HOST:PORT", help=_FLOW_HELP)
@click.option("--direction", type=click.Choice(["client", "server"]),
              help="Whose data to draw (default: the side that sent more).")
@click.option("--start", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Draw from SECONDS after the connection's first segment.")
@click.option("--end", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Draw up to SECONDS after the connection's first segment.")
@click.option("--list", "listing", is_flag=True, help="List the capture's connections.")
def plot(capture: str, out_path: str | None, flow: str | None, direction: str | None,
         start: float | None, end: float | None, listing: bool) -> None:
    """Draw one connection of a capture: time-sequence graph (data, ACK line, window,
    SACK blocks, retransmissions), bytes in flight as the sender sees them, RTT samples.

    \b
      tcpdump -i eth0 -w cap.pcap port 80     (or a Wireshark .pcapng)
      tcpscapy plot cap.pcap -o transfer.svg
      tcpscapy plot cap.pcap --list
      tcpscapy plot cap.pcap --flow 2 --direction client
      tcpscapy plot cap.pcap --start 1.5 --end 2      (a zoom, in seconds)
    """
    from tcpscapy.plot import write_plot_svg

    if start is not None and end is not None and end <= start:
        _fail("plot", f"--end {end:g} is not after --start {start:g} (see --help)")
    conn = _connection("plot", capture, flow, listing)
    path = Path(out_path) if out_path else Path(capture).with_suffix(".svg")
    way = None if direction is None else "out" if direction == "client" else "in"
    try:
        write_plot_svg(connection_trace(conn, states=False), path, direction=way,
                       title=_title(conn, capture), sides=("client", "server"),
                       window=None if start is None and end is None else (start, end))
    except OSError as exc:
        _fail("plot", f"cannot write {path}: {exc.strerror or exc}", 1)
    click.echo(f"wrote {path} ({conn.name}, {len(conn.segments)} segments)", err=True)


@click.command(cls=Command)
@click.argument("capture", metavar="CAPTURE")
@click.option("--flow", metavar="N|PORT|HOST:PORT", help=_FLOW_HELP)
@click.option("--svg", "svg_path", metavar="FILE", help="Also draw the ladder as an SVG picture.")
@click.option("-n", "--count", type=click.IntRange(min=1), metavar="N",
              help="Only the first N segments.")
@click.option("--absolute", is_flag=True, help="Absolute seq/ack.")
@click.option("--width", type=click.IntRange(min=40), help="Cut lines at this width.")
@click.option("--list", "listing", is_flag=True, help="List the capture's connections.")
def ladder(capture: str, flow: str | None, svg_path: str | None, count: int | None,
           absolute: bool, width: int | None, listing: bool) -> None:
    """Print one connection of a capture as a segment ladder: the client (the SYN's
    sender) on the left, the server on the right, each side's state as the capture
    shows it (a SYN puts its sender in SYN-SENT, a FIN in FIN-WAIT-1, ...).

    \b
      tcpscapy ladder cap.pcap
      tcpscapy ladder cap.pcap --flow 8080 -n 40 --svg handshake.svg
    """
    conn = _connection("ladder", capture, flow, listing)
    trace = connection_trace(conn, limit=count)
    color = sys.stdout.isatty()
    click.echo(text_ladder(trace, relative=not absolute, width=width, color=color))
    if svg_path:
        try:
            write_ladder_svg(trace, svg_path, relative=not absolute, title=_title(conn, capture))
        except OSError as exc:
            _fail("ladder", f"cannot write {svg_path}: {exc.strerror or exc}", 1)
