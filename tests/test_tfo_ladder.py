"""TCP Fast Open in the ladder and on `tcpscapy connect`'s command line; no root needed.

The ladder tags the SYN and SYN-ACK with their part in Fast Open and its footer
says what happened (cookie requested, cookie received, data in the SYN and
whether the SYN-ACK acknowledged it), from either side's trace.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcpscapy import errors
from tcpscapy.cli import main
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.svg import ladder_svg
from tcpscapy.trace import Trace, fast_open_lines, ladder

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
C_ISN, S_ISN = 4_000_000_000, 123_456  # the client's sequence numbers wrap
COOKIE, FRESH = bytes.fromhex("00abaaabe8e954c2"), bytes.fromhex("f49d797fc5285533")
DATA = b"x" * 120


def syn(cookie: bytes | None, data: bytes = b"", *, experimental: bool = False) -> Segment:
    opts = Options(mss=1460, tfo_cookie=cookie, tfo_experimental=experimental)
    return Segment(CLIENT, SERVER, 40000, 80, C_ISN, 0, SYN, 65535, options=opts,
                   payload=data)


def synack(acked: int, cookie: bytes | None = None) -> Segment:
    opts = Options(mss=1460, tfo_cookie=cookie)
    return Segment(SERVER, CLIENT, 80, 40000, S_ISN, (C_ISN + 1 + acked) % 2**32, SYN | ACK,
                   65535, options=opts)


def client_trace(*segments: Segment) -> Trace:
    """The client's view: its SYNs go out, the SYN-ACK comes in."""
    trace = Trace()
    for i, seg in enumerate(segments):
        trace.record_segment(i * 0.01, "out" if seg.src == CLIENT else "in", seg)
    return trace


def server_trace(*segments: Segment) -> Trace:
    trace = Trace()
    for i, seg in enumerate(segments):
        trace.record_segment(i * 0.01, "in" if seg.src == CLIENT else "out", seg)
    return trace


@pytest.mark.parametrize(("segments", "expected"), [
    ((syn(b""), synack(0, COOKIE)),
     f"Fast Open: cookie requested; the SYN-ACK carried cookie {COOKIE.hex()}"),
    ((syn(b""), synack(0)),
     "Fast Open: cookie requested; no cookie came back (the server ignored Fast Open)"),
    ((syn(COOKIE, DATA), synack(120)),
     "Fast Open: 120 bytes rode in the SYN and were acknowledged by the SYN-ACK (1 RTT saved)"),
    ((syn(COOKIE, DATA), synack(0, FRESH)),
     "Fast Open: 120 bytes rode in the SYN; the SYN-ACK acknowledged only the SYN, so they "
     "went again after the handshake (no RTT saved); the SYN-ACK carried a new cookie "
     f"{FRESH.hex()}"),
    ((syn(COOKIE, DATA), syn(None), synack(0)),
     "Fast Open: 120 bytes rode in the SYN, which was retransmitted without them; the SYN-ACK "
     "acknowledged only the SYN, so they went again after the handshake (no RTT saved)"),
    ((syn(b"", experimental=True), synack(0, COOKIE)),
     f"Fast Open (experimental option 254): cookie requested; the SYN-ACK carried cookie "
     f"{COOKIE.hex()}"),
    ((syn(None, DATA), synack(120)),  # a no-cookie server (Linux 0x200)
     "Fast Open: 120 bytes rode in the SYN and were acknowledged by the SYN-ACK (1 RTT saved)"),
    ((syn(COOKIE),), f"Fast Open: cookie {COOKIE.hex()} sent without data; no SYN-ACK"),
    ((syn(COOKIE), synack(0)), f"Fast Open: cookie {COOKIE.hex()} sent without data"),
    ((syn(b""),), "Fast Open: cookie requested; no SYN-ACK"),
])
def test_the_footer_says_what_fast_open_did(segments: tuple[Segment, ...],
                                            expected: str) -> None:
    assert fast_open_lines(client_trace(*segments)) == [expected]
    assert fast_open_lines(server_trace(*segments)) == [expected]  # the same from the server
    assert expected.split(";")[0] in ladder(client_trace(*segments))


def test_no_fast_open_no_footer_line() -> None:
    trace = client_trace(syn(None), synack(0))
    assert fast_open_lines(trace) == []
    assert "Fast Open" not in ladder(trace) and "TFO" not in ladder(trace)


def test_the_arrows_carry_tags() -> None:
    text = ladder(client_trace(syn(COOKIE, DATA), synack(120)), width=200)
    assert f"len=120 <mss 1460,tfo {COOKIE.hex()}> [TFO: data in the SYN]" in text
    assert "ack=121 win=65535 <mss 1460> [acks 120 bytes of SYN data]" in text
    text = ladder(client_trace(syn(b""), synack(0, COOKIE)), width=200)
    assert "<mss 1460,tfo> [TFO cookie request]" in text
    assert f"<mss 1460,tfo {COOKIE.hex()}> [TFO cookie]" in text
    svg = ladder_svg(client_trace(syn(COOKIE, DATA), synack(120)))
    assert "[TFO: data in the SYN]" in svg and "[acks 120 bytes of SYN data]" in svg


def test_a_narrow_ladder_wraps_the_footer_whole() -> None:
    trace = client_trace(syn(COOKIE, DATA), syn(None), synack(0, FRESH))
    text = ladder(trace, width=60)
    assert all(len(line) <= 60 for line in text.splitlines()), text
    assert " ".join(fast_open_lines(trace)) in " ".join(text.splitlines())


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise errors.NeedsRoot("stub: no network in this test")

    monkeypatch.setattr(importlib.import_module("tcpscapy.cli.connect"), "require_net_admin",
                        refuse)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(("args", "message"), [
    (["--tfo-cache", "/tmp/x.json"], "--tfo-cache needs --tfo"),
    (["--ladder-svg", "/nonexistent/dir/x.svg"],
     "cannot write --ladder-svg /nonexistent/dir/x.svg: No such file or directory"),
])
def test_connect_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["connect", "10.77.0.2:80", *args])
    assert result.exit_code == 2
    assert result.stderr == f"tcpscapy connect: {message}\n"


@pytest.mark.usefixtures("no_network")
def test_connect_takes_the_fast_open_flags(tmp_path: Path) -> None:
    svg = tmp_path / "ladder.svg"
    result = CliRunner().invoke(main, ["connect", "192.0.2.1:80", "--tfo", "--tfo-cache",
                                       str(tmp_path / "c.json"), "--ladder-svg", str(svg)])
    assert result.exit_code == 4  # parsed; stopped at the (stubbed) privilege check
    assert svg.exists()  # checked writable before any traffic
