"""Pictures of a transfer (tcpscapy.plot) and of any capture (`tcpscapy plot`/`ladder`)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcpscapy.capture import connection_trace, connections, read_capture
from tcpscapy.cli import main
from tcpscapy.core import Config
from tcpscapy.core.segment import ACK, FIN, PSH, SYN
from tcpscapy.core.stack import Stack
from tcpscapy.metrics import MetricsRecorder
from tcpscapy.plot import MAX_MARKS, plot_svg
from tcpscapy.sim import Impairment, Network
from tcpscapy.trace import Trace

A, B = "10.0.0.1", "10.0.0.2"


def lossy_upload(size: int = 200_000, loss: float = 0.03,
                 seed: int = 5) -> tuple[Trace, MetricsRecorder, object]:
    """Client A uploads `size` bytes to B over a link losing `loss` of the segments."""
    cfg = Config(secret=b"plot-tests")
    client_stack, server_stack = Stack(cfg), Stack(cfg)
    net = Network({A: client_stack, B: server_stack}, impairment=Impairment(loss=loss, seed=seed))
    listener = server_stack.listen(B, 80)
    conn = client_stack.connect((A, 40000), (B, 80), 0.0)
    trace = net.follow(conn)
    recorder = MetricsRecorder(conn)
    trace.sampler = recorder
    data, sent, received, accepted = bytes(size), 0, 0, []

    def step(_: Network) -> None:
        nonlocal sent, received
        if not accepted and (peer := listener.accept()) is not None:
            accepted.append(peer)
        if sent < size and conn.state.can_send:
            sent += conn.send(data[sent:sent + 65536])
        for peer in accepted:
            while (event := peer.next_event()) is not None:
                received += len(getattr(event, "data", b""))

    net.on_step = step
    assert net.run(lambda: received == size and conn.snd_una == conn.snd_nxt, timeout=600)
    return trace, recorder, conn


def test_plot_of_a_lossy_transfer_marks_each_retransmission() -> None:
    trace, recorder, conn = lossy_upload()
    assert conn.retransmissions > 0  # the seed loses segments: else this proves nothing
    svg = plot_svg(trace, recorder.samples, title="upload")
    assert svg.count('class="rtx"') == conn.retransmissions
    assert f"retransmission ({conn.retransmissions})" in svg
    lost = sum(1 for e in trace if e.note == "lost" and e.segment and e.segment.payload)
    assert svg.count('class="lost"') == lost > 0
    ack_line = re.search(r'<polyline class="ack"[^>]* points="([^"]+)"', svg)
    assert ack_line is not None and len(ack_line.group(1).split()) > 10
    assert '<polyline class="rwnd"' in svg
    for series in ("cwnd", "flight", "srtt", "rto"):
        assert f'<polyline class="{series}"' in svg, series
    assert 'class="phase"' in svg and "slow-start" in svg  # the CC's phases shaded


def test_clean_transfer_has_no_retransmission_marks() -> None:
    trace, recorder, conn = lossy_upload(100_000, loss=0.0)
    svg = plot_svg(trace, recorder.samples)
    assert conn.retransmissions == 0 and 'class="rtx"' not in svg
    assert "retransmission (0)" in svg


def test_notes_naming_rack_or_tlp_are_marked() -> None:
    trace, _, _ = lossy_upload(50_000, loss=0.0)
    entries = list(trace)
    last_data = max(i for i, e in enumerate(entries) if e.segment and e.segment.payload
                    and e.direction == "out")
    e = entries[last_data]
    trace2 = Trace(entries[:last_data])
    trace2.record_segment(e.time + 0.05, "out", e.segment, "TLP probe")
    svg = plot_svg(trace2)
    assert svg.count('class="event"') == 1 and "RACK/TLP (1)" in svg


def test_recorder_memory_is_bounded_and_spans_the_run() -> None:
    class Conn:
        cwnd, ssthresh, bytes_in_flight, srtt, rto, cc_phase = 14480, 1 << 30, 0, 0.01, 0.2, "x"

    recorder = MetricsRecorder(Conn(), capacity=64)
    for i in range(100_000):
        recorder(i * 0.001)
    assert 32 <= len(recorder) <= 64
    assert recorder.samples[0].time == 0.0 and recorder.samples[-1].time > 90
    assert recorder.samples[-1].ssthresh is None  # "infinite" is not drawn
    assert recorder.samples[-1].phase == "x"


# --- captures -------------------------------------------------------------------------

def _tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
         window: int, payload_len: int, options: bytes = b"") -> bytes:
    """IPv4+TCP headers (checksums left 0, as offloaded captures have them) claiming a
    payload of `payload_len` bytes that the snap length cut off."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4,
                      flags, window, 0, 0) + options
    total = 20 + len(tcp) + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return ip + tcp


def _pcap(records: list[tuple[float, bytes]], linktype: int = 101) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, linktype)]
    for when, frame in records:
        wire = int.from_bytes(frame[2:4], "big") if linktype == 101 else len(frame)
        out.append(struct.pack("<IIII", int(when), int(when % 1 * 1e6), len(frame), wire))
        out.append(frame)
    return b"".join(out)


def synthetic_transfer(segments: int, mss: int = 1448, rtx_every: int = 1000) -> bytes:
    """A pcap (snap length 96) of a client sending `segments` full segments, every
    `rtx_every`-th sent twice, with an ACK per two segments."""
    c, s = ("10.1.0.1", 50000), ("10.1.0.2", 80)
    ws = b"\x03\x03\x07\x00"  # window scale 7, padded
    recs = [(0.0, _tcp(*c[:1], s[0], c[1], s[1], 1000, 0, SYN, 65535, 0, ws)),
            (0.001, _tcp(s[0], c[0], s[1], c[1], 5000, 1001, SYN | ACK, 65535, 0, ws)),
            (0.002, _tcp(c[0], s[0], c[1], s[1], 1001, 5001, ACK, 512, 0))]
    t = 0.002
    for i in range(segments):
        t += 0.00002
        seq = 1001 + i * mss
        recs.append((t, _tcp(c[0], s[0], c[1], s[1], seq, 5001, ACK, 512, mss)))
        if i % rtx_every == rtx_every - 1:
            recs.append((t + 0.00001, _tcp(c[0], s[0], c[1], s[1], seq, 5001, ACK, 512, mss)))
        if i % 2:
            recs.append((t + 0.0005, _tcp(s[0], c[0], s[1], c[1], 5001, seq + mss, ACK, 3000,
                                          0)))
    end = 1001 + segments * mss
    recs.append((t + 0.001, _tcp(c[0], s[0], c[1], s[1], end, 5001, FIN | ACK | PSH, 512, 0)))
    recs.append((t + 0.002, _tcp(s[0], c[0], s[1], c[1], 5001, end + 1, FIN | ACK, 3000, 0)))
    recs.append((t + 0.003, _tcp(c[0], s[0], c[1], s[1], end + 1, 5002, ACK, 512, 0)))
    return _pcap(recs)


def test_fifty_megabytes_give_a_bounded_svg_that_rsvg_converts(tmp_path: Path) -> None:
    segments = 50_000_000 // 1448 + 1
    pcap = tmp_path / "big.pcap"
    pcap.write_bytes(synthetic_transfer(segments, rtx_every=50))
    out = tmp_path / "big.svg"
    result = CliRunner().invoke(main, ["plot", str(pcap), "-o", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert svg.count("<") < 5000 and len(svg) < 2_000_000  # bounded, whatever the size
    assert f"retransmission ({segments // 50})" in svg and 'class="rtx-merged"' in svg
    assert segments // 50 > MAX_MARKS  # so the marks had to be merged
    assert "50 MB" in svg  # the summary reads the snapped segments' real lengths
    rsvg = shutil.which("rsvg-convert")
    assert rsvg is not None, "rsvg-convert is missing: make deps installs librsvg2-bin"
    subprocess.run([rsvg, "-o", str(tmp_path / "big.png"), str(out)], check=True, timeout=120)
    assert (tmp_path / "big.png").read_bytes()[:4] == b"\x89PNG"


def test_capture_ladder_infers_both_sides_states(tmp_path: Path) -> None:
    pcap = tmp_path / "small.pcap"
    pcap.write_bytes(synthetic_transfer(6, rtx_every=4))
    result = CliRunner().invoke(main, ["ladder", str(pcap), "--svg", str(tmp_path / "l.svg")])
    assert result.exit_code == 0, result.output
    text = result.output
    for change in ("CLOSED → SYN-SENT", "peer: LISTEN → SYN-RECEIVED",
                   "SYN-SENT → ESTABLISHED", "peer: SYN-RECEIVED → ESTABLISHED",
                   "ESTABLISHED → FIN-WAIT-1", "peer: ESTABLISHED → CLOSE-WAIT",
                   "peer: CLOSE-WAIT → LAST-ACK", "FIN-WAIT-2 → TIME-WAIT",
                   "peer: LAST-ACK → CLOSED"):
        assert change in text, change
    assert " S seq=0 " in text and " SA seq=0 ack=1 " in text
    assert (tmp_path / "l.svg").read_text().startswith("<svg")


def test_pcapng_and_ethernet_read_like_pcap(tmp_path: Path) -> None:
    frames = [(t, b"\x00" * 12 + b"\x08\x00" + ip) for t, ip in _records(synthetic_transfer(8))]
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb_opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # nanoseconds
    idb_body = struct.pack("<HHI", 1, 0, 0) + idb_opts
    blocks = [shb, struct.pack("<II", 1, 12 + len(idb_body)) + idb_body
              + struct.pack("<I", 12 + len(idb_body))]
    for t, frame in frames:
        ns = int(t * 1e9)
        pad = b"\x00" * (-len(frame) % 4)
        body = struct.pack("<IIIII", 0, ns >> 32, ns & 0xFFFFFFFF, len(frame), len(frame))
        body += frame + pad
        blocks.append(struct.pack("<II", 6, 12 + len(body)) + body
                      + struct.pack("<I", 12 + len(body)))
    ng = tmp_path / "eth.pcapng"
    ng.write_bytes(b"".join(blocks))
    plain = tmp_path / "raw.pcap"
    plain.write_bytes(synthetic_transfer(8))
    a, b = read_capture(ng), read_capture(plain)
    assert [seg for _, seg in a] == [seg for _, seg in b]
    assert [round(t, 6) for t, _ in a] == [round(t, 6) for t, _ in b]
    conn = connections(a)[0]
    assert conn.client == ("10.1.0.1", 50000) and len(connection_trace(conn).segments()) == len(a)


def _records(pcap: bytes) -> list[tuple[float, bytes]]:
    out, pos = [], 24
    while pos < len(pcap):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", pcap, pos)
        out.append((sec + usec / 1e6, pcap[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def _udp_pcap() -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, b"\n\0\0\1", b"\n\0\0\2")
    return _pcap([(0.0, ip + bytes(8)), (0.1, ip + bytes(8))])


@pytest.mark.parametrize("name, content, words", [
    ("truncated", synthetic_transfer(4)[:-30], "truncated"),
    ("cut-header", synthetic_transfer(4)[:20], "truncated pcap header"),
    ("not-tcp", _udp_pcap(), "no TCP segments"),
    ("corrupt", synthetic_transfer(4)[:40] + b"\xff" * 64, "corrupt record"),
    ("text", b"hello, this is not a capture\n", "not a pcap or pcapng"),
    ("empty", b"", "not a pcap or pcapng"),
    ("pcapng-cut", bytes.fromhex("0a0d0d0a1c0000004d3c2b1a") + bytes(8), "truncated"),
    ("missing", None, "No such file"),
])
@pytest.mark.parametrize("command", ["plot", "ladder"])
def test_bad_captures_give_one_line_and_exit_2(tmp_path: Path, command: str, name: str,
                                               content: bytes | None, words: str) -> None:
    path = tmp_path / f"{name}.pcap"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(main, [command, str(path), "-o" if command == "plot" else
                                       "--absolute", *([str(tmp_path / "x.svg")]
                                                       if command == "plot" else [])])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tcpscapy {command}: "), lines
    assert words in lines[0]
    assert not (tmp_path / "x.svg").exists()


def test_flow_picks_a_connection_and_an_unknown_one_is_a_usage_error(tmp_path: Path) -> None:
    pcap = tmp_path / "two.pcap"
    one = _records(synthetic_transfer(4))
    other = [(t + 1, ip.replace(struct.pack("!H", 50000), struct.pack("!H", 50001), 1))
             for t, ip in one]
    pcap.write_bytes(_pcap(one + other))
    listing = CliRunner().invoke(main, ["plot", str(pcap), "--list"])
    assert listing.exit_code == 0 and len(listing.output.splitlines()) == 2, listing.output
    assert ":50001" in listing.output.splitlines()[1]
    second = CliRunner().invoke(main, ["ladder", str(pcap), "--flow", "50001"])
    assert second.exit_code == 0 and "10.1.0.1:50001" in second.output
    missing = CliRunner().invoke(main, ["ladder", str(pcap), "--flow", "9999"])
    assert missing.exit_code == 2 and "no connection matches" in missing.output


def test_ipv6_segments_are_read(tmp_path: Path) -> None:
    def v6(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
           payload: bytes = b"") -> bytes:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1000, 0, 0)
        head = struct.pack("!IHBB", 6 << 28, len(tcp) + len(payload), 6, 64)
        return head + bytes(15) + bytes([src]) + bytes(15) + bytes([dst]) + tcp + payload

    pcap = tmp_path / "v6.pcap"
    pcap.write_bytes(_pcap([(0.0, v6(1, 2, 40000, 80, 10, 0, SYN)),
                            (0.1, v6(2, 1, 80, 40000, 50, 11, SYN | ACK)),
                            (0.2, v6(1, 2, 40000, 80, 11, 51, ACK | PSH, b"hello"))]))
    result = CliRunner().invoke(main, ["ladder", str(pcap)])
    assert result.exit_code == 0, result.output
    assert "::1" in result.output and "::2" in result.output
    assert "PA seq=1 ack=1 win=1000 len=5" in result.output


def test_start_and_end_zoom_into_a_stretch_of_the_capture(tmp_path: Path) -> None:
    pcap = tmp_path / "zoom.pcap"
    pcap.write_bytes(synthetic_transfer(2000, rtx_every=100))  # a segment each 20 µs
    whole, part = tmp_path / "whole.svg", tmp_path / "part.svg"
    assert CliRunner().invoke(main, ["plot", str(pcap), "-o", str(whole)]).exit_code == 0
    result = CliRunner().invoke(main, ["plot", str(pcap), "-o", str(part), "--start", "0.01",
                                       "--end", "0.0215"])
    assert result.exit_code == 0, result.output
    assert "retransmission (20)" in whole.read_text()
    text = part.read_text()
    assert "retransmission (6)" in text  # of segments 399, 499, … 899 (sent at 10…20 ms)
    assert ">10 ms<" in text and ">20 ms<" in text and ">0 ms<" not in text  # its own clock
    bad = CliRunner().invoke(main, ["plot", str(pcap), "--start", "2", "--end", "1"])
    assert bad.exit_code == 2 and len(bad.output.splitlines()) == 1
