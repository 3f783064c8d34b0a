"""`listen --pcap`: the file is closed only after a report in progress has written it.

Under load a connection's report (its ladder and its pcap packets) can still be
running on the reporter thread when SIGTERM stops the listener (stop() waits for it
only so long); the pcap must not be
closed under it (a file ending in half a record), and a report after the close
writes nothing. No network: a stand-in connection and pcap writer.
"""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace
from typing import Any

from tcpscapy.cli._common import Output, Recorder
from tcpscapy.cli._server import Server, Session, _Report
from tcpscapy.core.state import State


class SlowPcap:
    """Records the calls; write() waits until released, as a slow disk would."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, packets: list[Any]) -> None:
        self.writing.set()
        assert self.release.wait(30)
        self.calls.append("write")

    def flush(self) -> None:
        self.calls.append("flush")

    def close(self) -> None:
        self.calls.append("close")


def report() -> _Report:
    conn = SimpleNamespace(remote=("10.77.0.1", 40000), state=State.CLOSED, close_reason=None)
    session = Session(conn, iter(()), Recorder(maxlen=None), bytes_in=5,  # type: ignore[arg-type]
                      bytes_out=5)
    return _Report(session, None, False, time.monotonic())


def write_report(server: Server) -> None:
    """What the reporter thread does with one report."""
    lines = server._report_lines(report())
    with server.out.lock:
        server.out.lines(lines)


def test_the_pcap_closes_after_a_report_in_progress_and_later_reports_skip_it() -> None:
    pcap = SlowPcap()
    out = Output("listen", stream=io.StringIO())
    server = Server(SimpleNamespace(), lambda conn: None, out, verbose=False,  # type: ignore[arg-type]
                    max_conns=None, once=False, pcap=pcap)
    reporting = threading.Thread(target=write_report, args=(server,))
    reporting.start()
    assert pcap.writing.wait(30)
    closing = threading.Thread(target=server.close_pcap)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive(), "closed the pcap under a report still writing it"
    pcap.release.set()
    reporting.join(30)
    closing.join(30)
    assert pcap.calls == ["write", "flush", "close"]

    write_report(server)  # a connection reported after the close
    assert pcap.calls == ["write", "flush", "close"]
    assert out.stream.getvalue().count("10.77.0.1:40000") == 2
