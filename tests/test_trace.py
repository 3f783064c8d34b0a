"""Trace recording, the ladder, JSON lines and pcap export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, FIN, PSH, RST, SYN, Segment
from tcpscapy.core.state import State
from tcpscapy.io.codec import decode
from tcpscapy.trace import Trace, TraceEntry, handshake_rtt, ladder, to_json_lines

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
LOCAL_ISN = 1_000_000
PEER_ISN = 2**32 - 5  # the peer's sequence numbers wrap during the exchange
T0 = 1_700_000_000.25
SYN_OPTS = Options(mss=1460, sack_permitted=True, timestamps=(7, 0), wscale=7)


def out(seq: int, ack: int, flags: int, payload: bytes = b"", **kw: object) -> Segment:
    return Segment(CLIENT, SERVER, 40000, 80, LOCAL_ISN + seq, (PEER_ISN + ack) % 2**32,
                   flags, 502, payload=payload, **kw)  # type: ignore[arg-type]


def inbound(seq: int, ack: int, flags: int, payload: bytes = b"", **kw: object) -> Segment:
    return Segment(SERVER, CLIENT, 80, 40000, (PEER_ISN + seq) % 2**32, LOCAL_ISN + ack,
                   flags, 509, payload=payload, **kw)  # type: ignore[arg-type]


@pytest.fixture
def client_trace() -> Trace:
    """A client's connection: handshake, 5 bytes each way, our FIN, the peer's FIN."""
    trace = Trace()
    trace.record_state(T0, State.CLOSED, State.SYN_SENT)
    trace.record_segment(T0, "out", out(0, 0, SYN, options=SYN_OPTS).replace(ack=0))
    trace.record_segment(T0 + 0.0015, "in", inbound(0, 1, SYN | ACK, options=SYN_OPTS))
    trace.record_state(T0 + 0.0016, State.SYN_SENT, State.ESTABLISHED)
    trace.record_segment(T0 + 0.0016, "out", out(1, 1, ACK))
    trace.record_segment(T0 + 0.002, "out", out(1, 1, PSH | ACK, b"hello"))
    trace.record_segment(T0 + 0.0035, "in", inbound(1, 6, PSH | ACK, b"world"))
    trace.record_segment(T0 + 0.004, "out", out(6, 6, FIN | ACK))
    trace.record_state(T0 + 0.004, State.ESTABLISHED, State.FIN_WAIT_1)
    trace.record_segment(T0 + 0.0055, "in", inbound(6, 7, FIN | ACK))
    trace.record_state(T0 + 0.0056, State.FIN_WAIT_1, State.TIME_WAIT, note="simultaneous")
    trace.record_segment(T0 + 0.0056, "out", out(7, 7, ACK))
    return trace


def line_with(text: str, needle: str) -> str:
    matches = [line for line in text.splitlines() if needle in line]
    assert len(matches) == 1, (needle, text)
    return matches[0]


def test_ladder_relative_seq_and_ack(client_trace: Trace) -> None:
    text = ladder(client_trace)
    assert "S seq=0 win=502 <mss 1460,sack,ts,ws 7>" in line_with(text, " S seq")
    assert "SA seq=0 ack=1 win=509" in line_with(text, " SA ")
    assert "A seq=1 ack=1 win=502 " in line_with(text, " A seq=1 ")
    assert "PA seq=1 ack=1 win=502 len=5" in line_with(text, "PA seq=1 ack=1")
    assert "PA seq=1 ack=6 win=509 len=5" in line_with(text, "PA seq=1 ack=6")
    assert "FA seq=6 ack=6 win=502" in line_with(text, "FA seq=6 ack=6")
    assert "FA seq=6 ack=7" in line_with(text, "FA seq=6 ack=7")
    assert "A seq=7 ack=7" in text
    assert f"local {LOCAL_ISN}, peer {PEER_ISN}" in text


def test_ladder_absolute_when_asked(client_trace: Trace) -> None:
    text = ladder(client_trace, relative=False)
    assert f"SA seq={PEER_ISN} ack={LOCAL_ISN + 1} " in text
    assert f"FA seq={(PEER_ISN + 6) % 2**32} ack={LOCAL_ISN + 7} " in text
    assert "seq=0 " not in text


def test_ladder_arrows_point_the_right_way(client_trace: Trace) -> None:
    text = ladder(client_trace)
    assert line_with(text, " S seq").rstrip().endswith("▶")
    assert "◀" in line_with(text, " SA ") and "▶" not in line_with(text, " SA ")
    assert text.splitlines()[0].split() == ["10.0.0.1:40000", "10.0.0.2:80"]


def test_ladder_state_lines_and_state_column(client_trace: Trace) -> None:
    lines = ladder(client_trace).splitlines()
    changes = [line.split("ms", 1)[1].strip() for line in lines
               if "→" in line and "seq" not in line]
    assert changes[:4] == ["CLOSED → SYN-SENT", "SYN-SENT → ESTABLISHED",
                           "ESTABLISHED → FIN-WAIT-1", "FIN-WAIT-1 → TIME-WAIT (simultaneous)"]
    assert re.search(r"SYN-SENT\s+──", line_with("\n".join(lines), " S seq"))
    assert re.search(r"ESTABLISHED\s+──", line_with("\n".join(lines), "PA seq=1 ack=1"))
    assert re.search(r"FIN-WAIT-1\s+◀", line_with("\n".join(lines), "FA seq=6 ack=7"))
    assert [line.split()[0] for line in lines[1:4]] == ["0.000", "0.000", "1.500"]


def test_ladder_peer_state_changes_sit_on_the_right() -> None:
    trace = Trace()
    trace.record_segment(0.0, "out", out(0, 0, SYN))
    trace.record_state(0.001, State.LISTEN, State.SYN_RECEIVED, side="peer")
    text = ladder(trace)
    line = line_with(text, "peer:")
    assert line.endswith("peer: LISTEN → SYN-RECEIVED")
    assert len(line) == len(line_with(text, " S seq"))  # ends where the arrow heads are
    assert line.index("peer:") > line_with(text, " S seq").index("──")


def test_handshake_rtt_client_uses_the_last_syn(client_trace: Trace) -> None:
    assert handshake_rtt(client_trace) == pytest.approx(0.0015, abs=1e-6)
    assert "handshake RTT 1.500 ms (SYN → SYN-ACK)" in ladder(client_trace)
    retried = Trace([TraceEntry(T0 - 1.0, "out", out(0, 0, SYN)), *client_trace])
    assert handshake_rtt(retried) == pytest.approx(0.0015, abs=1e-6)


def test_handshake_rtt_server() -> None:
    trace = Trace()
    trace.record_segment(5.0, "in", inbound(0, 0, SYN))
    trace.record_segment(5.001, "out", out(0, 1, SYN | ACK))
    trace.record_segment(5.0032, "in", inbound(1, 1, ACK))
    assert handshake_rtt(trace) == pytest.approx(0.0022, abs=1e-6)
    assert "handshake RTT 2.200 ms (SYN-ACK → ACK)" in ladder(trace)


def test_no_rtt_without_a_handshake() -> None:
    trace = Trace()
    trace.record_segment(0.0, "out", out(0, 0, SYN))
    trace.record_segment(0.5, "in", inbound(0, 1, RST | ACK))
    assert handshake_rtt(trace) is None
    assert "RTT" not in ladder(trace)
    assert "RA seq=0 ack=1" in ladder(trace)


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_ladder_fits_the_width_and_loses_nothing(client_trace: Trace, width: int) -> None:
    client_trace.record_segment(T0 + 0.007, "in", inbound(7, 7, ACK, options=Options(
        timestamps=(1, 2), sack_blocks=((LOCAL_ISN + 1, LOCAL_ISN + 3),), tfo_cookie=bytes(8))))
    text = ladder(client_trace, width=width)
    assert all(len(line) <= width for line in text.splitlines()), text
    flat = "".join(text.split())  # wrapped pieces joined again
    assert "<mss1460,sack,ts,ws7>" in flat
    assert "<ts,tfo0000000000000000,sack1-3>" in flat
    assert "FIN-WAIT-1→TIME-WAIT" in flat


def test_ladder_colour_only_when_asked(client_trace: Trace) -> None:
    plain = ladder(client_trace)
    coloured = ladder(client_trace, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[36m" in coloured and "\x1b[32m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_ladder_ascii_only(client_trace: Trace) -> None:
    client_trace.record_segment(T0 + 0.01, "in", None, "dropped: bad TCP checksum")
    text = ladder(client_trace, ascii_only=True, width=70)
    assert text.isascii()
    assert line_with(text, " S seq").rstrip().endswith(">")
    assert line_with(text, "dropped").rstrip().startswith(line_with(text, "dropped").split("<")[0])
    assert "(SYN -> SYN-ACK)" in text


def test_ladder_shows_notes_and_undecodable_packets() -> None:
    trace = Trace()
    trace.record_segment(0.0, "out", out(1, 1, PSH | ACK, b"abc"), note="retransmission")
    trace.record_segment(0.1, "in", None, note="dropped: bad TCP checksum")
    text = ladder(trace)
    assert "len=3 (retransmission)" in text
    assert "╌ dropped: bad TCP checksum ╌" in text
    assert ladder(Trace()) == "(empty trace)"


def test_json_lines(client_trace: Trace) -> None:
    client_trace.record_segment(T0 + 0.01, "in", None, "dropped: bad TCP checksum")
    client_trace.time_offset = 10.0
    objects = [json.loads(line) for line in to_json_lines(client_trace)]
    assert len(objects) == len(client_trace)
    first, syn, synack = objects[:3]
    assert first == {"t": T0 + 10.0, "type": "state", "dir": "out", "side": "local",
                     "old": "CLOSED", "new": "SYN-SENT", "note": ""}
    assert syn == {
        "t": T0 + 10.0, "type": "segment", "dir": "out", "src": CLIENT, "dst": SERVER,
        "sport": 40000, "dport": 80, "flags": "S", "seq": LOCAL_ISN, "ack": 0, "win": 502,
        "urg": 0, "len": 0, "note": "",
        "options": {"mss": 1460, "sack_permitted": True, "timestamps": [7, 0], "wscale": 7},
    }
    assert (synack["flags"], synack["seq"], synack["ack"]) == ("SA", PEER_ISN, LOCAL_ISN + 1)
    data = [obj for obj in objects if obj.get("len")]
    assert [(obj["dir"], obj["len"]) for obj in data] == [("out", 5), ("in", 5)]
    assert objects[-1] == {"t": T0 + 0.01 + 10.0, "type": "segment", "dir": "in",
                           "note": "dropped: bad TCP checksum"}
    assert objects[-3]["note"] == "simultaneous"


def test_json_options_in_full() -> None:
    opts = Options(sack_blocks=((1, 2),), tfo_cookie=b"\xab\xcd", tfo_experimental=True,
                   unknown=((30, b"\x01"),), malformed=True)
    trace = Trace()
    trace.record_segment(0.0, "out", out(0, 0, ACK, options=opts))
    (line,) = to_json_lines(trace)
    assert json.loads(line)["options"] == {
        "sack_blocks": [[1, 2]], "tfo_cookie": "abcd", "tfo_experimental": True,
        "unknown": [{"kind": 30, "data": "01"}], "malformed": True}


def test_pcap_round_trip(client_trace: Trace, tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    client_trace.record_segment(T0 + 0.01, "in", None, "dropped: bad TCP checksum")
    path = tmp_path / "trace.pcap"
    client_trace.write_pcap(path)
    packets = rdpcap(str(path))
    entries = [entry for entry in client_trace if entry.segment is not None]
    assert len(packets) == len(entries) == 8
    for packet, entry in zip(packets, entries, strict=True):
        assert decode(bytes(packet)) == entry.segment
        assert float(packet.time) == pytest.approx(entry.time, abs=1e-6)


def test_scapy_list_applies_the_time_offset(client_trace: Trace) -> None:
    client_trace.time_offset = 100.0
    packets = client_trace.to_scapy()
    assert len(packets) == 8
    assert float(packets[0].time) == pytest.approx(T0 + 100.0, abs=1e-6)
    assert packets[1].sprintf("%TCP.flags%") == "SA"


def test_trace_is_list_like() -> None:
    trace = Trace()
    syn = out(0, 0, SYN)
    trace.record_segment(1.0, "out", syn)
    trace.record_state(1.0, State.CLOSED, State.SYN_SENT)
    trace.record_state(2.0, State.LISTEN, State.SYN_RECEIVED, side="peer")
    assert len(trace) == 3
    assert trace[0] == TraceEntry(1.0, "out", syn)
    assert trace[-1].side == "peer" and trace[-1].state_change == (State.LISTEN,
                                                                   State.SYN_RECEIVED)
    assert [entry.time for entry in trace[1:]] == [1.0, 2.0]
    assert Trace(trace)[0] == trace[0]
    assert trace.segments("out") == [syn] and trace.segments("in") == []
    with pytest.raises(ValueError, match="direction"):
        trace.record_segment(1.0, "sideways", syn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="side"):
        trace.record_state(1.0, State.CLOSED, State.LISTEN, side="both")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        trace[0].note = "x"  # type: ignore[misc]


def test_maxlen_keeps_the_newest() -> None:
    trace = Trace(maxlen=3)
    for i in range(10):
        trace.record_segment(float(i), "out", out(i, 0, ACK))
    assert [entry.time for entry in trace] == [7.0, 8.0, 9.0]
    assert trace[0].time == 7.0 and [e.time for e in trace[-2:]] == [8.0, 9.0]


def test_recording_and_rendering_do_not_import_scapy() -> None:
    code = (
        "import sys\n"
        "from tcpscapy.core import Segment, SYN, State\n"
        "from tcpscapy.trace import Trace, ladder, to_json_lines\n"
        "from tcpscapy.io.codec import encode, decode\n"
        "t = Trace()\n"
        "s = Segment('10.0.0.1', '10.0.0.2', 1, 2, 3, 0, SYN, 100)\n"
        "t.record_segment(0.0, 'out', decode(encode(s)))\n"
        "t.record_state(0.0, State.CLOSED, State.SYN_SENT)\n"
        "ladder(t); list(to_json_lines(t))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"
