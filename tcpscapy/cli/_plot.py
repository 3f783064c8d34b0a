"""`--plot FILE` of connect and listen: the transfer's picture written at the end."""

from __future__ import annotations

from collections.abc import Iterable

from tcpscapy import errors
from tcpscapy.api import Connection
from tcpscapy.cli._common import Output
from tcpscapy.trace import TraceEntry


def check_plot_path(path: str) -> None:
    """Fail before any traffic if --plot FILE cannot be written."""
    try:
        with open(path, "w"):
            pass
    except OSError as exc:
        raise errors.UsageError(f"cannot write --plot {path}: {exc.strerror}") from None


def write_plot(out: Output, conn: Connection | None, trace: Iterable[TraceEntry],
               path: str, title: str) -> bool:
    """The SVG of `trace` (the complete record) with the connection's metric samples;
    False (and a one-line error) when the file cannot be written."""
    from tcpscapy.plot import write_plot_svg  # only when a picture is asked for

    samples = conn.metrics if conn is not None else None
    try:
        write_plot_svg(trace, path, samples, title=title)
    except OSError as exc:
        out.error(f"cannot write --plot {path}: {exc.strerror}", 1)
        return False
    return True
