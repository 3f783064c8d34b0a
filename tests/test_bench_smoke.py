"""Smoke tests for `make bench`: every figure runs with tiny sizes and gives a number.

No timing is asserted anywhere: the figures depend on the machine. Wire figures
run in the benchmark's own lab (prefix tsj), built once for this module and
always removed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscapy.bench import __main__ as runner
from tcpscapy.bench import cost, engine, memory, syncookies, wire
from tcpscapy.bench.wire import Sizes, Wire
from tcpscapy.lab import Lab, LabNeedsRoot

TINY = Sizes(handshakes=3, scapy_handshakes=1, cycles=20, bulk=300_000)
WIRE_NAMES = [name for name, _, _ in Wire(TINY).figures()]


def _positive(value: float) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0, value


# -- no root needed ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _, _ in engine.FIGURES])
def test_engine_figures_give_positive_numbers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "HANDSHAKES", 20)
    monkeypatch.setattr(engine, "BULK", 100_000)
    (fn,) = [f for n, _, f in engine.FIGURES if n == name]
    _positive(fn())


def test_engine_memory_per_connection_is_plausible() -> None:
    per_conn = memory.engine_bytes_per_connection(50)
    _positive(per_conn)
    # a Connection cannot be smaller than its object header, nor take 100 KB idle
    assert 200 < per_conn < 100_000


def test_engine_memory_counts_only_what_connections_hold() -> None:
    """Per-connection bytes barely move from 50 to 200 connections (no fixed cost / N)."""
    small, large = (memory.engine_bytes_per_connection(n) for n in (50, 200))
    assert abs(small - large) / large < 0.25


def test_targets_and_ratios_are_marked() -> None:
    rows = [runner.Row(wire.CONNECT_TCPSCAPY, "µs", [40.0, 50.0, 60.0]),
            runner.Row(wire.CONNECT_KERNEL, "µs", [10.0]),
            runner.Row(wire.SERVER_TCPSCAPY, "handshakes/s", [6000.0]),
            runner.Row(wire.BULK_SEND, "MB/s", [20.0])]
    figures = runner.figure_table(rows)
    assert "| 6,000 | 6,000 | 6,000 | handshakes/s | 1 | ≥ 5,000/s ✓ |" in figures
    assert "≥ 50 MB/s ✗" in figures
    assert "| 50.0 | 40.0 | 60.0 | µs | 3 |" in figures
    ratios = runner.ratio_table(rows)
    assert "| tcpscapy.connect() / kernel connect() | 5.00x | ≤ 3x ✗ |" in ratios
    assert "tcplink" not in ratios  # a ratio needs both of its figures


def test_write_keeps_the_analysis_around_the_generated_block(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    runner.write(path, "first table")
    text = path.read_text()
    assert "first table" in text
    path.write_text(text.replace(runner.END, runner.END + "\n\n## Where the time goes\n\nnotes"))
    runner.write(path, "second table")
    text = path.read_text()
    assert "second table" in text and "first table" not in text
    assert text.endswith(runner.END + "\n\n## Where the time goes\n\nnotes\n")


def test_only_picks_by_name_and_rejects_unknown_text() -> None:
    figures = Wire(TINY).figures()
    assert [n for n, _, _ in runner.select(figures, ["bulk: kernel"])] == [
        wire.BULK_KERNEL_SEND, wire.BULK_KERNEL_RECV]
    with pytest.raises(SystemExit, match="no figure matches nonsense"):
        runner.select(figures, ["nonsense"])


def test_list_needs_no_lab(capsys: pytest.CaptureFixture[str]) -> None:
    runner.main(["--list", "--only", "engine:"])
    assert capsys.readouterr().out.splitlines() == [n for n, _, _ in engine.FIGURES]


def test_a_lab_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Lab, sysctls: object = ()) -> Lab:
        raise LabNeedsRoot("the lab needs root: network namespaces require CAP_SYS_ADMIN")

    monkeypatch.setattr(Lab, "up", refuse)
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--only", "kernel connect", "--repeat", "1"])
    assert str(exit_.value) == ("tcpscapy bench: LabNeedsRoot: the lab needs root: "
                                "network namespaces require CAP_SYS_ADMIN")


# -- on the wire (root) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_wire() -> Iterator[Wire]:
    with Wire(TINY) as w:
        yield w
        lab = w._lab
    assert lab is None or not lab.exists()


@pytest.mark.wire
@pytest.mark.parametrize("name", WIRE_NAMES)
def test_wire_figures_give_positive_numbers(name: str, bench_wire: Wire) -> None:
    (fn,) = [f for n, _, f in bench_wire.figures() if n == name]
    _positive(fn())


@pytest.mark.wire
@pytest.mark.parametrize(("feed", "sees_others"), [("all", True), ("own-port", False)])
def test_fan_out_stand_in_feeds_each_listener_only_its_port(
        feed: str, sees_others: bool, bench_wire: Wire) -> None:
    servers = bench_wire.tcpscapy_servers(2, feed)
    before = [server.ask() for server in servers]
    bench_wire.client.ask(op="cycles", host=bench_wire.server_addr,
                          ports=bench_wire.tcpscapy_ports(2, feed), count=20, threads=2)
    for server, was in zip(servers, before, strict=True):
        deadline = time.monotonic() + 10  # the last accept and its FIN's ACK may be on the way
        while True:
            now = server.ask()
            seen = {key: now[key] - was[key] for key in ("accepted", "received", "foreign")}
            if (seen["accepted"] >= 10 and seen["received"] >= 30) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert seen["accepted"] == 10 and seen["received"] >= 30, seen  # SYN, ACK, FIN, ACK
        assert (seen["foreign"] > 0) is sees_others, seen


@pytest.mark.wire
@pytest.mark.parametrize("n", [300])
def test_driver_memory_per_connection(n: int, bench_wire: Wire,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "WARMUP", 10)
    _positive(memory.driver_bytes_per_connection(bench_wire, n))


@pytest.mark.wire
def test_syncookie_figures_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncookies, "FLOOD_SECONDS", 0.3)
    monkeypatch.setattr(syncookies, "MEMORY_WARMUP", 200)
    monkeypatch.setattr(syncookies, "MEMORY_SYNS", 1000)
    monkeypatch.setattr(syncookies, "SETTLE", 3.0)
    _positive(syncookies.cookies_per_second_on_the_wire())
    growth = syncookies.memory(1000)
    assert growth[2] > 0  # the listener counted the flood's SYNs


@pytest.mark.wire
def test_the_lab_is_removed_after_a_run() -> None:
    with Wire(TINY) as w:
        lab: Lab = w.lab
        assert lab.exists()
    assert not lab.exists()


@pytest.mark.wire
@pytest.mark.parametrize("name", [name for name, _, _ in cost.figures(Wire(TINY))])
def test_cost_figures_give_positive_numbers(name: str, bench_wire: Wire,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for knob, value in (("ROUNDS", 3), ("WARMUP", 1), ("PORTS", 5), ("SPAWNS", 1),
                        ("REQUESTS", 5)):
        monkeypatch.setattr(cost, knob, value)
    (fn,) = [f for n, _, f in cost.figures(bench_wire) if n == name]
    _positive(fn())
