"""The impairment model (tcpscapy.impair.model), in memory: no root, no clock."""

from __future__ import annotations

import itertools

import pytest

from tcpscapy.impair.model import (
    NEUTRAL,
    PathError,
    PathParams,
    Shaper,
    parse_fraction,
    parse_rate,
    parse_time,
)


def run(params: PathParams, n: int, gap: float = 1e-4, size: int = 1000,
        ect: bool = False, direction: str = "to-server") -> list:
    shaper = Shaper(params, direction)
    return [shaper.fate(i * gap, size, ect) for i in range(n)]


def drops(fates: list) -> list[int]:
    return [i for i, f in enumerate(fates) if f.drop]


def test_neutral_sends_everything_at_once() -> None:
    fates = run(NEUTRAL, 1000)
    assert all(f.drop is None and f.depart == i * 1e-4 and not f.duplicate and not f.mark_ce
               for i, f in enumerate(fates))
    assert NEUTRAL.neutral and PathParams(seed=9).neutral and not PathParams(loss=0.1).neutral


def test_random_loss_is_near_the_rate_and_reproducible() -> None:
    fates = run(PathParams(loss=0.05, seed=3), 20_000)
    assert 800 < len(drops(fates)) < 1200
    assert drops(run(PathParams(loss=0.05, seed=3), 20_000)) == drops(fates)
    assert drops(run(PathParams(loss=0.05, seed=4), 20_000)) != drops(fates)
    # The loss stream is its own: adding a delay or jitter keeps the very same pattern.
    same = run(PathParams(loss=0.05, seed=3, delay=0.02, jitter=0.005), 20_000)
    assert drops(same) == drops(fates)
    # Directions draw from different streams.
    assert drops(run(PathParams(loss=0.05, seed=3), 20_000, direction="to-client")) != drops(
        fates)


def test_bursty_loss_keeps_the_average_and_makes_bursts() -> None:
    fates = run(PathParams(loss=0.05, burst=5, seed=1), 50_000)
    lost = drops(fates)
    assert 0.03 < len(lost) / 50_000 < 0.07
    bursts, run_len = [], 1
    for a, b in itertools.pairwise(lost):
        if b == a + 1:
            run_len += 1
        else:
            bursts.append(run_len)
            run_len = 1
    assert 3.5 < sum(bursts) / len(bursts) < 6.5  # mean burst ≈ 5; random loss gives ≈ 1.05
    with pytest.raises(PathError, match="impossible"):
        PathParams(loss=0.9, burst=2)


def test_delay_and_jitter_keep_order() -> None:
    fates = run(PathParams(delay=0.02, jitter=0.015), 2000)
    departs = [f.depart for f in fates]
    assert departs == sorted(departs)
    assert all(f.depart >= i * 1e-4 + 0.005 - 1e-9 for i, f in enumerate(fates))
    assert len(set(round(d - i * 1e-4, 6) for i, d in enumerate(departs))) > 100  # it varies


def test_reorder_holds_some_packets_back_so_others_overtake() -> None:
    fates = run(PathParams(reorder=0.1, reorder_gap=0.001), 5000)
    departs = [f.depart for f in fates]
    overtaken = sum(1 for i in range(len(departs) - 1) if departs[i] > departs[i + 1])
    assert 300 < overtaken < 700


def test_duplicate_fraction() -> None:
    fates = run(PathParams(duplicate=0.02), 20_000)
    assert 250 < sum(f.duplicate for f in fates) < 550


def test_rate_limit_serialises_and_tail_drops() -> None:
    # 1000-byte packets at 8 Mbit/s take 1 ms each; they arrive every 0.1 ms.
    fates = run(PathParams(rate=8e6, queue=10), 100)
    sent = [f for f in fates if f.drop is None]
    assert [round(f.depart, 6) for f in sent[:3]] == [0.001, 0.002, 0.003]
    assert all(f.drop == "queue" for f in fates if f.drop)
    assert 10 <= len(sent) <= 20  # the queue of 10 plus what drains during 10 ms


def test_ce_marks_ect_packets_above_the_queue_threshold() -> None:
    params = PathParams(rate=8e6, queue=100, ce_threshold=0.002)
    fates = run(params, 50, ect=True)
    assert not fates[0].mark_ce and not fates[1].mark_ce  # waited < 2 ms
    assert all(f.mark_ce for f in fates[30:] if f.drop is None)
    assert not any(f.mark_ce for f in run(params, 50, ect=False))  # Not-ECT: never CE
    assert 150 < sum(f.mark_ce for f in run(PathParams(ce=0.2), 1000, ect=True)) < 250


@pytest.mark.parametrize("text, seconds", [("25ms", 0.025), ("1.5s", 1.5), ("500us", 5e-4),
                                           ("40", 0.04), (".5ms", 5e-4)])
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


def test_parse_units_and_bad_input() -> None:
    assert parse_fraction("1%") == pytest.approx(0.01) and parse_fraction("0.2") == 0.2
    assert parse_rate("10mbit") == 1e7 and parse_rate("500kbit") == 5e5
    for bad in ("", "-1ms", "1 day", "ms"):
        with pytest.raises(PathError, match="bad time"):
            parse_time(bad)
    for bad in ("150%", "2", "x"):
        with pytest.raises(PathError, match="bad fraction"):
            parse_fraction(bad)
    with pytest.raises(PathError, match="bad rate"):
        parse_rate("10 mbps")
    for kwargs in ({"delay": 11.0}, {"loss": -0.1}, {"rate": 100.0}, {"queue": 0},
                   {"seed": 1.5}, {"delay": float("nan")}):
        with pytest.raises(PathError):
            PathParams(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(PathError, match="unknown path parameter"):
        NEUTRAL.changed(latency=1)


def test_describe() -> None:
    assert NEUTRAL.describe() == "no impairment"
    text = PathParams(delay=0.025, jitter=0.005, loss=0.01, burst=3, rate=1e7).describe()
    assert text == "delay 25ms ±5ms loss 1% (bursts of 3) rate 10mbit queue 1000 seed 1"
