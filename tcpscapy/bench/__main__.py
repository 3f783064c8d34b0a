"""Run every benchmark figure, print a table, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from tcpscapy.bench import engine

Figure = tuple[str, str, Callable[[], float]]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} vCPU ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def measure(figures: list[Figure], repeat: int) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for name, unit, fn in figures:
        samples = [fn() for _ in range(repeat)]
        rows.append((name, unit, statistics.median(samples), min(samples), max(samples)))
        print(f"  {name}: median {rows[-1][2]:,.1f} {unit}", file=sys.stderr)
    return rows


def table(rows: list[tuple[str, str, float, float, float]]) -> str:
    lines = ["| figure | median | min | max | unit |", "|---|---:|---:|---:|---|"]
    lines += [f"| {n} | {med:,.1f} | {lo:,.1f} | {hi:,.1f} | {u} |" for n, u, med, lo, hi in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tcpscapy.bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="samples per figure (default 5)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file to write")
    args = parser.parse_args()
    print(f"tcpscapy benchmarks on {machine()}, {args.repeat} runs each", file=sys.stderr)
    rows = measure(engine.FIGURES, args.repeat)
    text = table(rows)
    print(text)
    Path(args.output).write_text(
        "# Benchmarks\n\nWritten by `make bench` (`python -m tcpscapy.bench`): medians of "
        f"{args.repeat} runs, with min and max.\n\nMachine: {machine()}\n\n"
        "## The engine alone\n\nTwo stacks over the in-memory network on a fake clock, so "
        "these are CPU costs of the pure core: no sockets, no codec.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
