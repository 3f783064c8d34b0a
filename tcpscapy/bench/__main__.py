"""Run the benchmark figures, print a table with targets and ratios, write BENCHMARKS.md.

    python -m tcpscapy.bench [--repeat N] [--quick] [--only TEXT ...] [--profile] [--output FILE]

Wire figures run in a lab of their own (namespaces tsj*), removed at the end
whatever happens. A full run writes BENCHMARKS.md; a run with --only, --quick
or --profile writes only when --output is given. Targets are goals, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tcpscapy.bench import (
    cost,
    engine,
    floor,
    impair,
    memory,
    pmtu,
    profiling,
    syncookies,
    wire,
)
from tcpscapy.bench.peers import PeerError
from tcpscapy.bench.wire import Figure, Wire
from tcpscapy.errors import TcpscapyError
from tcpscapy.lab import LabError
from tcpscapy.netns import NeedsRoot

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# What a run can meet that is no bug of the benchmark: told in one line, no traceback.
FAILURES = (LabError, NeedsRoot, PeerError, TcpscapyError, RuntimeError, OSError)


@dataclass(frozen=True)
class Target:
    op: str  # "<=" or ">="
    value: float
    text: str

    def met(self, x: float) -> bool:
        return x <= self.value if self.op == "<=" else x >= self.value


def _name_of(fn: object, figures: list[Figure]) -> str:
    return next(name for name, _, f in figures if f is fn)


COOKIES = _name_of(syncookies.cookies_per_second_on_the_wire, syncookies.FIGURES)
COOKIE_RSS = _name_of(syncookies.memory_growth_kb, syncookies.FIGURES)

# The goals, by figure name; ratios are (label, numerator, denominator, target).
# "No memory growth" under a flood: under 1 MB over 100,000 SYNs, ~10 bytes a SYN.
TARGETS: dict[str, Target] = {
    COOKIES: Target(">=", 30_000, "≥ 30,000/s"),
    COOKIE_RSS: Target("<=", 1024, "≤ 1 MB"),
    wire.SERVER_TCPSCAPY: Target(">=", 5000, "≥ 5,000/s"),
    wire.BULK_SEND: Target(">=", 50, "≥ 50 MB/s"),
    wire.BULK_RECV: Target(">=", 50, "≥ 50 MB/s"),
    memory.ENGINE_1K: Target("<=", 4096, "≤ 4 KB"),
    memory.ENGINE_10K: Target("<=", 4096, "≤ 4 KB"),
    memory.DRIVER_1K: Target("<=", 4096, "≤ 4 KB"),
    memory.DRIVER_10K: Target("<=", 4096, "≤ 4 KB"),
    memory.DRIVER_NO_TRACE_10K: Target("<=", 4096, "≤ 4 KB"),
    cost.KEEPALIVE_TCPSCAPY: Target("<=", 1000, "≤ 1 ms"),
    impair.RATE: Target(">=", 20_000, "≥ 20,000/s"),
    impair.ADDED: Target("<=", 1000, "< 1 ms"),
    impair.OWN_P99: Target("<=", 1000, "< 1 ms"),
}
RATIOS: list[tuple[str, str, str, Target | None]] = [
    ("tcpscapy.connect() / kernel connect()", wire.CONNECT_TCPSCAPY, wire.CONNECT_KERNEL,
     Target("<=", 3, "≤ 3x")),
    ("TCP_client.tcplink() / tcpscapy.connect()", wire.CONNECT_TCPLINK, wire.CONNECT_TCPSCAPY,
     Target(">=", 100, "≥ 100x")),
    ("sr1(SYN) / tcpscapy.connect()", wire.CONNECT_SR1, wire.CONNECT_TCPSCAPY, None),
    ("bare AF_PACKET floor / kernel connect() (floor lab)", floor.FLOOR, floor.FLOOR_KERNEL,
     None),
    ("tcpscapy.connect() / bare AF_PACKET floor", wire.CONNECT_TCPSCAPY, floor.FLOOR, None),
    ("tcpscapy listener / kernel listener", wire.SERVER_TCPSCAPY, wire.SERVER_KERNEL, None),
    ("2 tcpscapy listener processes / 1", wire.SERVER_TCPSCAPY_2, wire.SERVER_TCPSCAPY, None),
    ("2 processes fed only their port / 1", wire.SERVER_TCPSCAPY_2_OWN, wire.SERVER_TCPSCAPY,
     None),
    ("tcpscapy listen --workers 2 / tcpscapy listen", wire.SERVER_CLI_WORKERS_2, wire.SERVER_CLI,
     Target(">=", 1.6, "≥ 1.6x")),
    ("tcpscapy listen (the command) / tcpscapy.listen() loop", wire.SERVER_CLI,
     wire.SERVER_TCPSCAPY, Target(">=", 0.8, "≥ 0.8x")),
    ("client loop: connect+abort / connect+close", cost.LOOP_ABORT, cost.LOOP_CLOSE,
     Target("<=", 1.5, "≤ 1.5x")),
    ("client loop: connect+close / bare AF_PACKET floor", cost.LOOP_CLOSE, floor.FLOOR,
     Target("<=", 2, "≤ 2x")),
    ("client loop: connect+abort / bare AF_PACKET floor", cost.LOOP_ABORT, floor.FLOOR,
     Target("<=", 2, "≤ 2x")),
    ("owning a port: iptables rule / ipset member", cost.PORT_IPTABLES, cost.PORT_SET, None),
    ("keep-alive per request: tcpscapy listen --http / kernel server", cost.KEEPALIVE_TCPSCAPY,
     cost.KEEPALIVE_KERNEL, None),
    ("bulk send: tcpscapy / kernel", wire.BULK_SEND, wire.BULK_KERNEL_SEND, None),
    ("bulk receive: tcpscapy / kernel", wire.BULK_RECV, wire.BULK_KERNEL_RECV, None),
    ("impairment router: delivered / sent at 20k/s (1% lost on purpose)", impair.PACED,
     impair.OFFERED, Target(">=", 0.98, "≥ 0.98x")),
    ("20 MB through a 1280-MTU router: tcpscapy / kernel (time)", pmtu.UP_TCPSCAPY,
     pmtu.UP_KERNEL, Target("<=", 1.5, "≤ 1.5x")),
]


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def machine() -> str:
    cpu = "unknown CPU"
    mem_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    from scapy import VERSION as scapy_version

    return (f"{os.cpu_count()} vCPU ({cpu}), {mem_kb / 2**20:.0f} GiB, Linux "
            f"{platform.release()}, Python {platform.python_version()}, Scapy {scapy_version}")


def select(figures: list[Figure], only: list[str]) -> list[Figure]:
    if not only:
        return figures
    picked = [f for f in figures if any(o.lower() in f[0].lower() for o in only)]
    if not picked:
        raise SystemExit(f"no figure matches {', '.join(only)}: see --list")
    return picked


def measure(figures: list[Figure], repeat: int, once: set[str], *,
            profile: bool = False) -> list[Row]:
    rows = []
    for name, unit, fn in figures:
        began = time.monotonic()
        runs = 1 if name in once else repeat
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            fn()  # untimed: lazy set-up (the lab, its peers) stays out of the profile
        samples = []
        for _ in range(runs):
            if prof is not None:
                prof.enable()
            try:
                samples.append(fn())
            finally:
                if prof is not None:
                    prof.disable()
        rows.append(Row(name, unit, samples))
        print(f"  {name}: {statistics.median(samples):,.1f} {unit} "
              f"({runs} run{'s' * (runs > 1)}, {time.monotonic() - began:.1f} s)",
              file=sys.stderr, flush=True)
        if prof is not None:
            print(profiling.report(prof), file=sys.stderr, flush=True)
    return rows


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}" if abs(x) >= 10 else f"{x:,.2f}"


def _verdict(target: Target | None, x: float) -> str:
    if target is None:
        return ""
    return f"{target.text} {'✓' if target.met(x) else '✗'}"


def figure_table(rows: list[Row]) -> str:
    lines = ["| figure | median | min | max | unit | runs | target |",
             "|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {_num(r.median)} | {_num(min(r.samples))} | "
                     f"{_num(max(r.samples))} | {r.unit} | {len(r.samples)} | "
                     f"{_verdict(TARGETS.get(r.name), r.median)} |")
    return "\n".join(lines)


def ratio_table(rows: list[Row]) -> str:
    medians = {r.name: r.median for r in rows}
    lines = ["| ratio of medians | value | target |", "|---|---:|---|"]
    for label, num, den, target in RATIOS:
        if num in medians and den in medians and medians[den]:
            value = medians[num] / medians[den]
            lines.append(f"| {label} | {_num(value)}x | {_verdict(target, value)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def report(rows: list[Row], repeat: int, quick: bool, notes: dict[str, str]) -> str:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        f"Measured {when} on {machine()}.",
        f"Medians of {repeat} runs{' (--quick sizes)' if quick else ''}, with min and max; "
        "deterministic figures run once. Targets are the issue's goals, not assertions.",
        figure_table(rows),
    ]
    if ratios := ratio_table(rows):
        parts += ["Ratios, from the medians of this same run:", ratios]
    if notes:
        parts.append("\n".join(f"- {k}: {v}" for k, v in notes.items()))
    return "\n\n".join(parts)


def write(path: Path, generated: str) -> None:
    """Replace the generated block of `path`, keeping the written analysis around it."""
    block = f"{BEGIN}\n{generated}\n{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = f"# Benchmarks\n\nWritten by `make bench` (`python -m tcpscapy.bench`).\n\n{block}\n"
    path.write_text(text)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so the lab is removed on the way out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tcpscapy.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="runs per figure (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only figures whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile each figure in this process: time by layer, top "
                             "functions (slows the figures: use with --only)")
    parser.add_argument("--output", type=Path,
                        help="markdown file to write (default BENCHMARKS.md on a full run)")
    args = parser.parse_args(argv)
    if args.repeat is not None and not 1 <= args.repeat <= 100:
        parser.error("--repeat takes 1 to 100")
    return args


def all_figures(w: Wire, quick: bool) -> list[Figure]:
    return [*w.figures(), *cost.figures(w), *floor.FIGURES, *syncookies.FIGURES,
            *memory.figures(w, quick=quick), *engine.FIGURES, *impair.FIGURES,
            *pmtu.FIGURES]


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    repeat = args.repeat or (2 if args.quick else 5)
    partial = args.only or args.quick or args.profile
    output = args.output or (None if partial else Path("BENCHMARKS.md"))
    signal.signal(signal.SIGTERM, _stop)
    with Wire(wire.QUICK if args.quick else wire.FULL) as w:
        figures = select(all_figures(w, args.quick), args.only)
        if args.list:
            print("\n".join(name for name, _, _ in figures))
            return
        print(f"tcpscapy benchmarks: {len(figures)} figures, {repeat} runs each",
              file=sys.stderr)
        try:
            rows = measure(figures, repeat, memory.DETERMINISTIC, profile=args.profile)
        except FAILURES as exc:  # the lab cannot be built, a peer died, a transfer fell short
            raise SystemExit(f"tcpscapy bench: {type(exc).__name__}: {exc}") from None
        notes = dict(w.notes)
    text = report(rows, repeat, args.quick, notes)
    print(text)
    if output is not None:
        write(output, text)
        print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
