"""Smoke test for the path-MTU figures of `make bench` (tcpscapy/bench/pmtu.py): both
clients get through the 1280-MTU router and report a time. No timing is asserted."""

from __future__ import annotations

import math

import pytest

from tcpscapy.bench import __main__ as runner
from tcpscapy.bench import pmtu


@pytest.mark.wire
@pytest.mark.parametrize("mode", ["tcpscapy", "kernel"])
def test_a_small_upload_through_the_router_gives_a_time(mode: str) -> None:
    took = pmtu.upload_seconds(mode, size=300_000)
    assert isinstance(took, float) and math.isfinite(took) and took > 0


def test_the_figures_are_listed_with_their_ratio() -> None:
    names = [name for name, _, _ in pmtu.FIGURES]
    assert names == [pmtu.UP_TCPSCAPY, pmtu.UP_KERNEL]
    rows = [runner.Row(pmtu.UP_TCPSCAPY, "s", [3.0]), runner.Row(pmtu.UP_KERNEL, "s", [1.0])]
    assert "| 20 MB through a 1280-MTU router: tcpscapy / kernel (time) | 3.00x | ≤ 1.5x ✗ |" \
        in runner.ratio_table(rows)
