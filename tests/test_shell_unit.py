"""tcpscapy.shell without root: filling hand-made segments, the Scapy -> Segment path,
and injection through a real Driver over the fake network of the driver unit tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw
from scapy.plist import PacketList

from tcpscapy import errors
from tcpscapy.core.segment import ACK, PSH, SYN
from tcpscapy.core.state import State
from tcpscapy.io import codec
from tcpscapy.shell import (
    Filler,
    ShellConnection,
    complete,
    needs_scapy_build,
    parse_target,
)
from tests.io.test_driver_unit import ECHO_PORT, FAST, LOCAL, REMOTE, World, wait_until

FILLER = Filler(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80, seq=1000, ack=5000,
                window=502, timestamps=(77, 99))


# -- filling fields -------------------------------------------------------------------


def test_complete_fills_every_unset_field_from_the_connection() -> None:
    pkt = complete(TCP(flags="PA") / "hi", FILLER)
    ip, tcp = pkt[IP], pkt[TCP]
    assert (ip.src, ip.dst, tcp.sport, tcp.dport) == ("10.0.0.1", "10.0.0.2", 40000, 80)
    assert (tcp.seq, tcp.ack, tcp.window) == (1000, 5000, 502)
    assert str(tcp.flags) == "PA"
    assert dict((k, v) for k, v in tcp.options if k == "Timestamp") == {"Timestamp": (77, 99)}
    assert bytes(pkt[Raw]) == b"hi"


def test_complete_keeps_what_the_user_set() -> None:
    pkt = complete(IP(dst="10.9.9.9") / TCP(seq=7, ack=8, window=1, dport=81, flags="A",
                                            options=[]), FILLER)
    ip, tcp = pkt[IP], pkt[TCP]
    assert (ip.src, ip.dst) == ("10.0.0.1", "10.9.9.9")
    assert (tcp.seq, tcp.ack, tcp.window, tcp.sport, tcp.dport) == (7, 8, 1, 40000, 81)
    assert tcp.options == []


def test_complete_does_not_touch_the_callers_packet() -> None:
    original = TCP(flags="PA") / "hi"
    complete(original, FILLER)
    assert "seq" not in original.fields and "sport" not in original.fields


@pytest.mark.parametrize(("given", "flags"), [(TCP() / "data", "PA"), (TCP(), "A")])
def test_unset_flags_become_an_ack_with_or_without_push(given: TCP, flags: str) -> None:
    assert str(complete(given, FILLER)[TCP].flags) == flags


def test_no_ack_number_without_the_ack_flag_and_no_timestamps_on_rst_or_syn() -> None:
    rst = complete(TCP(flags="R"), FILLER)[TCP]
    assert rst.ack == 0 and rst.seq == 1000 and rst.options == []
    syn = complete(TCP(flags="S"), FILLER)[TCP]
    assert syn.options == []


def test_no_timestamp_option_when_the_connection_has_none() -> None:
    pkt = complete(TCP(flags="A"), FILLER._replace(timestamps=None))
    assert pkt[TCP].options == []


def test_bytes_and_str_become_a_push_ack_payload() -> None:
    for given in (b"xyz", "xyz"):
        pkt = complete(given, FILLER)
        assert str(pkt[TCP].flags) == "PA" and bytes(pkt[Raw]) == b"xyz"


def test_complete_rejects_what_is_not_tcp() -> None:
    with pytest.raises(errors.UsageError, match="needs a TCP segment"):
        complete(IP() / Raw(b"x"), FILLER)
    with pytest.raises(errors.UsageError, match="needs a TCP segment"):
        complete(42, FILLER)  # type: ignore[arg-type]


def test_filled_packet_converts_to_the_same_segment_the_codec_would_send() -> None:
    pkt = complete(TCP(flags="PA", urgptr=0) / "hello", FILLER)
    seg = codec.from_scapy(pkt)
    assert (seg.src, seg.dst, seg.sport, seg.dport) == ("10.0.0.1", "10.0.0.2", 40000, 80)
    assert (seg.seq, seg.ack, seg.window, seg.flags) == (1000, 5000, 502, PSH | ACK)
    assert seg.options.timestamps == (77, 99) and seg.payload == b"hello"
    assert codec.decode(codec.encode(seg)) == seg


@pytest.mark.parametrize(("pkt", "expected"), [
    (IP() / TCP(), False),
    (IP(src="1.1.1.1", dst="2.2.2.2") / TCP(seq=1, options=[("MSS", 1000)]), False),
    (IP(ttl=3) / TCP(), True),
    (IP(flags=0) / TCP(), True),
    (IP() / TCP(chksum=0xDEAD), True),
    (IP() / TCP(dataofs=15), True),
    (IP() / TCP(flags="PAN"), True),
])
def test_fields_the_codec_would_overwrite_force_scapys_build(pkt: IP, expected: bool) -> None:
    assert needs_scapy_build(pkt) is expected


@pytest.mark.parametrize(("text", "port", "expected"), [
    ("10.77.0.2:80", None, ("10.77.0.2", 80)),
    (" host:7 ", None, ("host", 7)),
    ("10.77.0.2", 8080, ("10.77.0.2", 8080)),
])
def test_parse_target(text: str, port: int | None, expected: tuple[str, int]) -> None:
    assert parse_target(text, port) == expected


@pytest.mark.parametrize(("text", "port", "message"), [
    ("10.77.0.2", None, "no port"),
    ("10.77.0.2:0", None, "bad port"),
    ("10.77.0.2:http", None, "bad port"),
    ("10.77.0.2:80", 81, "already names a port"),
    ("", None, "bad address"),
])
def test_parse_target_errors_are_one_line(text: str, port: int | None, message: str) -> None:
    with pytest.raises(errors.BadAddress, match=message) as info:
        parse_target(text, port)
    assert "\n" not in str(info.value)


# -- injection through a driver --------------------------------------------------------


class Recording:
    """Keeps every packet the driver puts on the fake wire; passes the decodable ones on."""

    def __init__(self, world: World) -> None:
        self.packets: list[bytes] = []
        self._forward = world.net.from_driver
        world.net.from_driver = self  # type: ignore[method-assign]

    def __call__(self, link: object, packet: bytes) -> None:
        self.packets.append(packet)
        if codec.decode(packet) is not None:
            self._forward(link, packet)  # type: ignore[arg-type]


@pytest.fixture
def shell_conn() -> Iterator[tuple[World, Recording, ShellConnection]]:
    world = World()
    recording = Recording(world)
    try:
        conn = ShellConnection(world.connect(REMOTE, ECHO_PORT, **FAST))
        yield world, recording, conn
    finally:
        world.driver.close(linger=0.5)


def test_inject_fills_seq_and_ack_and_the_peer_takes_the_bytes(
        shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    world, recording, c = shell_conn
    snd_nxt, rcv_nxt = c.snd_nxt, c.rcv_nxt
    sent = c.inject(TCP(flags="PA") / "hi")
    seg = codec.decode(recording.packets[-1])
    assert seg is not None
    assert (seg.src, seg.dst, seg.sport, seg.dport) == (LOCAL, REMOTE, *c.local[1:], ECHO_PORT)
    assert (seg.seq, seg.ack, seg.payload) == (snd_nxt, rcv_nxt, b"hi")
    assert sent[TCP].seq == snd_nxt and bytes(sent) == recording.packets[-1]
    # The echo peer acknowledges the injected bytes: an ACK beyond what our engine sent.
    assert wait_until(lambda: any(s.ack == (snd_nxt + 2) & 0xFFFFFFFF
                                  for s in c.records.segments("in")))
    entry = [e for e in c.records if e.note.startswith("injected")]
    assert len(entry) == 1 and entry[0].direction == "out" and entry[0].segment == seg
    assert c.snd_nxt == snd_nxt  # the engine never learnt about them


def test_raw_injection_sends_the_bytes_as_crafted(
        shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    _, recording, c = shell_conn
    pkt = c.fill(TCP(flags="PA") / "xy")
    pkt[TCP].chksum = 0xDEAD
    crafted = bytes(pkt)
    c.inject(pkt, raw=True)
    assert recording.packets[-1] == crafted
    assert codec.decode(crafted) is None  # really a bad checksum
    (entry,) = [e for e in c.records if e.note.startswith("injected")]
    assert entry.note == "injected raw, bad TCP checksum"
    assert entry.segment is not None and entry.segment.payload == b"xy"


def test_a_set_checksum_without_raw_still_goes_out_as_scapy_builds_it(
        shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    _, recording, c = shell_conn
    c.inject(TCP(flags="A", chksum=0x1234))
    assert recording.packets[-1][36:38] == b"\x12\x34"  # IP header 20 + checksum at 16


def test_raw_needs_an_ip_layer(shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    _, _, c = shell_conn
    with pytest.raises(errors.UsageError, match="whole packet"):
        c.inject(TCP(flags="A"), raw=True)


def test_trace_is_a_scapy_packet_list_with_wall_clock_times(
        shell_conn: tuple[World, Recording, ShellConnection], tmp_path: Path) -> None:
    _, _, c = shell_conn
    assert c.state is State.ESTABLISHED
    trace = c.trace
    assert isinstance(trace, PacketList)
    assert [p[TCP].flags.value & (SYN | ACK) for p in trace[:3]] == [SYN, SYN | ACK, ACK]
    assert abs(float(trace[0].time) - time.time()) < 60
    pcap, svg = c.wrpcap(tmp_path / "c.pcap"), c.ladder_svg(tmp_path / "c.svg")
    assert pcap.stat().st_size > 24 and svg.read_text().startswith("<svg")


def test_ladder_prints_both_endpoints(shell_conn: tuple[World, Recording, ShellConnection],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, _, c = shell_conn
    c.ladder()
    out = capsys.readouterr().out
    assert f"{LOCAL}:{c.local[1]}" in out and f"{REMOTE}:{ECHO_PORT}" in out
    assert "SYN-SENT → ESTABLISHED" in out


def test_send_takes_str_and_recv_gives_up_quietly(
        shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    _, _, c = shell_conn
    assert c.send("héllo") is None  # nothing for the prompt to echo before the reply
    got = b""
    while len(got) < 6:
        got += c.recv(timeout=2.0)
    assert got == "héllo".encode()
    assert c.recv(timeout=0.05) == b""  # nothing more: b"" instead of an exception


def test_inject_into_a_forgotten_connection_says_so(
        shell_conn: tuple[World, Recording, ShellConnection]) -> None:
    world, _, c = shell_conn
    c.abort()
    assert wait_until(lambda: all(ep.conn is not c.engine for ep in world.driver.connections()))
    with pytest.raises(errors.ConnectionClosed, match="nothing to inject into"):
        c.inject(TCP(flags="A"))


# -- tcpscapy listen --ladder-svg (file names, bad paths) ------------------------------


def test_listen_svg_file_names_carry_the_peer() -> None:
    from tcpscapy.cli.listen import svg_path_for

    assert svg_path_for("out/ladder.svg", ("10.77.0.1", 40000)) == \
        "out/ladder-10.77.0.1-40000.svg"
    assert svg_path_for("pic", ("10.0.0.9", 7)) == "pic-10.0.0.9-7.svg"


@pytest.mark.parametrize("extra", [[], ["--once"]])
def test_listen_rejects_an_unwritable_svg_path_before_listening(extra: list[str]) -> None:
    from click.testing import CliRunner

    from tcpscapy.cli import main

    res = CliRunner().invoke(main, ["listen", "7", "--ladder-svg", "/nonexistent/dir/x.svg",
                                    *extra])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert "cannot write --ladder-svg /nonexistent/dir/x.svg" in line


# -- the tcpscapy shell command --------------------------------------------------------


def test_shell_command_help_and_usage_errors() -> None:
    from click.testing import CliRunner

    from tcpscapy.cli import main

    res = CliRunner().invoke(main, ["shell", "--help"])
    assert res.exit_code == 0 and "from tcpscapy.shell import *" in res.output
    res = CliRunner().invoke(main, ["shell", "--bogus"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("tcpscapy shell: ") and "--bogus" in line


def test_excepthook_prints_our_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tcpscapy.lab import LabUsageError
    from tcpscapy.shell import excepthook

    for exc in (errors.ConnectionRefused("connection to 10.77.0.2:81 refused"),
                LabUsageError("no lab yet: call lab_up() first")):
        excepthook(type(exc), exc, None)
        assert capsys.readouterr().err == f"error: {exc}\n"


def test_plot_draws_the_transfer_with_the_engines_samples(
        shell_conn: tuple[World, Recording, ShellConnection], tmp_path: Path) -> None:
    _, _, c = shell_conn
    c.send(b"x" * 20_000)
    got = b""
    while len(got) < 20_000 and (chunk := c.recv(65536, timeout=10)):
        got += chunk
    assert got == b"x" * 20_000
    samples = c.conn.metrics
    assert samples and samples[-1].cwnd and samples[-1].srtt is not None
    svg = c.plot(tmp_path / "c.svg").read_text()
    assert "Time-sequence graph: our data" in svg and "20 kB in" in svg
    for series in ("data", "ack", "cwnd", "srtt", "rto"):
        assert f'class="{series}"' in svg, series
