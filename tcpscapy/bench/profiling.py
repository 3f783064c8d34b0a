"""`--profile`: where a figure's time goes, by layer and by function (cProfile, stdlib).

Only code running in the benchmark's own process is seen: tcpscapy's client
side (connect, bulk) and the engine figures, not the listener processes.
cProfile adds a fixed cost to every Python call, so layers made of many small
calls (the engine) look bigger than they are; the ranking is what it is for.
Builtins (len, int.from_bytes, struct) count in the layer of their caller;
socket and epoll methods count as syscalls.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import Counter

Func = tuple[str, int, str]  # (file, line, name), as pstats keys them

# First match wins: (substring of the file name, layer).
LAYERS: list[tuple[str, str]] = [
    ("tcpscapy/core/", "engine (tcpscapy/core)"),
    ("tcpscapy/io/codec.py", "codec"),
    ("tcpscapy/io/guard.py", "RST guard (NFQUEUE verdicts)"),
    ("netfilterqueue", "RST guard (NFQUEUE verdicts)"),
    ("tcpscapy/io/rawsock.py", "raw sockets"),
    ("tcpscapy/io/plumbing.py", "raw sockets"),
    ("tcpscapy/io/driver.py", "driver"),
    ("tcpscapy/api.py", "API"),
    ("tcpscapy/trace.py", "trace"),
    ("tcpscapy/netns.py", "driver"),
    ("threading.py", "locks and waits"),
    ("selectors.py", "locks and waits"),
]
SYSCALL_HINTS = ("_socket.socket", "select.epoll", "posix.", "recv", "send")


def layer(func: Func) -> str | None:
    """The layer of a profiled function; None for a builtin (its caller decides)."""
    filename, _, name = func
    if filename == "~":
        if any(h in name for h in SYSCALL_HINTS):
            return "syscalls (socket, epoll, os)"
        if "lock" in name:
            return "locks and waits"
        return None
    return next((lay for part, lay in LAYERS if part in filename), "other Python")


def by_layer(stats: pstats.Stats) -> Counter[str]:
    """Self seconds per layer; a builtin's time goes to each caller's layer."""
    out: Counter[str] = Counter()
    raw = stats.stats  # type: ignore[attr-defined]
    for func, (_, _, self_s, _, callers) in raw.items():
        own = layer(func)
        if own is not None:
            out[own] += self_s
            continue
        for caller, (_, _, caller_self_s, _) in callers.items():
            out[layer(caller) or "other Python"] += caller_self_s
    return out


def _short(func: Func) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    return f"{name} ({filename.split('tcpscapy/')[-1].split('/')[-1]}:{line})"


def report(profile: cProfile.Profile, top: int = 15) -> str:
    """A text summary: the layers' shares, then the top functions by self time."""
    stats = pstats.Stats(profile)
    layers = by_layer(stats)
    total = sum(layers.values()) or 1.0
    lines = ["  by layer (share of profiled self time):"]
    lines += [f"    {secs / total:6.1%}  {name}" for name, secs in layers.most_common()]
    lines.append("  top functions by self time (µs per call, self and cumulative; calls):")
    raw = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for func, (_, calls, self_s, cum_s, _) in ranked:
        lines.append(f"    {self_s / total:6.1%} {self_s / calls * 1e6:8.2f} "
                     f"{cum_s / calls * 1e6:9.2f} {calls:9,}  {_short(func)}")
    return "\n".join(lines)
