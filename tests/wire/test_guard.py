"""The RST guard against the real kernel, inside network namespaces this test creates.

Each scenario runs either on a thread moved into the namespace with setns() (iptables
children inherit the thread's namespace) or in a child process started with
``ip netns exec``. The root namespace's rules are never touched.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from scapy.all import IP, TCP, raw

import tcpscapy.netns
from tcpscapy.io import iptables
from tcpscapy.io.guard import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    GuardError,
    RstGuard,
    cleanup_stale,
    status,
)

pytestmark = pytest.mark.wire

REPO = Path(__file__).resolve().parents[2]
LOOP = "127.0.0.1"
ETH_P_ALL = 0x0003
SO_MARK = 36
WINDOW_S = 0.5  # how long to watch for an RST that must (or must not) appear
BACKENDS = ["nft", "legacy"]

_T = TypeVar("_T")


# -- namespace plumbing ---------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"tsc{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=5)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=5)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=5)


def in_netns(name: str, fn: Callable[[], _T], timeout: float = 15.0) -> _T:
    """Run fn on a fresh thread inside namespace ``name``; return its result."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            with tcpscapy.netns.enter(name):
                outcome["value"] = fn()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"scenario in {name} did not finish in {timeout} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def ns_run(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv],
        capture_output=True, text=True, timeout=20, check=False, cwd=REPO,
    )  # fmt: skip


def ns_rules_text(name: str) -> str:
    """Both backends' rule dumps and every ipset (the guard's port sets) in the namespace."""
    return (ns_run(name, "iptables-nft-save").stdout + ns_run(name, "iptables-legacy-save").stdout
            + ns_run(name, "ipset", "save").stdout)


def set_members(dump: str, pid: int | None = None) -> list[int]:
    """Ports in tcpscapy's ipsets (of owner ``pid`` if given), per ``ipset save``."""
    prefix = "add tcpscapy-" + (f"{pid}-" if pid is not None else "")
    return sorted(int(line.split()[2]) for line in dump.splitlines() if line.startswith(prefix))


# -- packets --------------------------------------------------------------------


class Wire:
    """Raw sender and an AF_PACKET capture on lo, inside the current namespace."""

    def __init__(self) -> None:
        self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.capture.bind(("lo", 0))
        self.capture.setblocking(False)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def close(self) -> None:
        self.capture.close()
        self.sender.close()

    def send(self, sport: int, dport: int, flags: str, *, mark: int = 0) -> None:
        self.sender.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        pkt = IP(src=LOOP, dst=LOOP) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=1)
        self.sender.sendto(raw(pkt), (LOOP, 0))

    def rsts(self, guard: RstGuard | None = None, window: float = WINDOW_S) -> set[tuple[int, int]]:
        """(sport, dport) of every RST seen on lo within ``window``; runs the guard meanwhile."""
        seen: set[tuple[int, int]] = set()
        watch = [self.capture] + ([guard] if guard is not None else [])
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(watch, [], [], left)
            if guard is not None and guard in ready:
                guard.process_pending()
            if self.capture in ready:
                while True:
                    try:
                        frame = self.capture.recv(65535)
                    except BlockingIOError:
                        break
                    ip = frame[14:]
                    ihl = (ip[0] & 0x0F) * 4
                    if ip[9] == 6 and ip[ihl + 13] & 0x04:
                        seen.add(struct.unpack_from("!HH", ip, ihl))
        return seen


def reserve_port() -> socket.socket:
    """A kernel socket bound to a loopback port, neither listening nor connected."""
    sock = socket.socket()
    sock.bind((LOOP, 0))
    return sock


def with_wire(fn: Callable[[Wire, int], _T]) -> Callable[[], _T]:
    def scenario() -> _T:
        wire, reserved = Wire(), reserve_port()
        try:
            return fn(wire, reserved.getsockname()[1])
        finally:
            reserved.close()
            wire.close()

    return scenario


# -- in-process guard -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_owned_tuple_rst_dropped_others_pass(netns: str, backend: str) -> None:
    def scenario(wire: Wire, port: int) -> dict[str, object]:
        wire.send(40001, port, "SA")
        before = wire.rsts()  # no guard yet: the kernel resets
        with RstGuard(backend=backend) as guard:
            guard.own(LOOP, port, LOOP, 40001)
            rules_while_on = ns_rules_text(netns)
            wire.send(40001, port, "SA")  # owned tuple
            wire.send(40002, port, "A")  # same port, tuple not owned
            during = wire.rsts(guard)
            counts = (guard.dropped, guard.accepted)
        return {"before": before, "during": during, "counts": counts, "rules": rules_while_on}

    out = in_netns(netns, with_wire(scenario))
    port_rst = {pair for pair in out["before"] if pair[1] == 40001}  # type: ignore[union-attr]
    assert port_rst, "without the guard the kernel must reset the SYN-ACK"
    (port,) = {sport for sport, _ in port_rst}
    assert (port, 40001) not in out["during"]  # type: ignore[operator]
    assert (port, 40002) in out["during"]  # type: ignore[operator]
    assert out["counts"] == (1, 1)
    assert set_members(out["rules"]) == [port]  # type: ignore[arg-type]
    assert "--match-set tcpscapy-" in out["rules"]  # type: ignore[operator]
    assert "tcpscapy" not in ns_rules_text(netns)


def test_default_backend_is_the_system_iptables(netns: str) -> None:
    def scenario() -> tuple[str | None, str]:
        with RstGuard() as guard:
            guard.own_port(LOOP, 4242)
            name = guard.backend.name if guard.backend else None
            return name, ns_run(netns, "iptables-save").stdout

    name, dump = in_netns(netns, scenario)
    assert name == iptables.default_backend().name
    assert "tcpscapy pid=" in dump and "--queue-bypass" in dump and "--match-set" in dump
    assert set_members(ns_run(netns, "ipset", "save").stdout) == []  # gone with the guard


def test_listener_port_covers_every_remote(netns: str) -> None:
    def scenario(wire: Wire, port: int) -> tuple[set[tuple[int, int]], int]:
        with RstGuard() as guard:
            guard.own_port("0.0.0.0", port)
            for remote in (41001, 41002, 41003):
                wire.send(remote, port, "SA")
            seen = wire.rsts(guard)
            return seen, guard.dropped

    seen, dropped = in_netns(netns, with_wire(scenario))
    assert not [pair for pair in seen if pair[1] in (41001, 41002, 41003)]
    assert dropped == 3


def test_marked_rst_skips_the_queue(netns: str) -> None:
    """Our own RSTs leave through a raw socket with SO_MARK; the rule must not catch them."""

    def scenario(wire: Wire, port: int) -> tuple[set[tuple[int, int]], int, int]:
        with RstGuard() as guard:
            guard.own(LOOP, port, LOOP, 42001)
            guard.own(LOOP, port, LOOP, 42002)
            wire.send(port, 42001, "R", mark=guard.mark)  # ours: passes untouched
            wire.send(port, 42002, "R")  # unmarked: looks like the kernel's, dropped
            seen = wire.rsts(guard)
            return seen, guard.dropped, guard.accepted

    seen, dropped, accepted = in_netns(netns, with_wire(scenario))
    ports = {dport for _, dport in seen}
    assert 42001 in ports and 42002 not in ports
    assert (dropped, accepted) == (1, 0)


def test_set_members_follow_first_own_and_last_disown(netns: str) -> None:
    def scenario() -> list[tuple[list[int], list[int], int]]:
        steps = []

        def snap(guard: RstGuard) -> None:
            dump = ns_rules_text(netns)
            steps.append((guard.ports, set_members(dump), dump.count("tcpscapy pid=")))

        with RstGuard() as guard:
            guard.own(LOOP, 5000, LOOP, 1)
            snap(guard)
            guard.own(LOOP, 5000, LOOP, 2)
            guard.own_port(LOOP, 6000)
            snap(guard)
            guard.disown(LOOP, 5000, LOOP, 1)
            snap(guard)
            guard.disown(LOOP, 5000, LOOP, 2)
            guard.disown_port(LOOP, 6000)
            snap(guard)
        return steps

    # One rule the whole time; the ports come and go as members of the set.
    assert in_netns(netns, scenario) == [([5000], [5000], 1), ([5000, 6000], [5000, 6000], 1),
                                         ([5000, 6000], [5000, 6000], 1), ([], [], 1)]


def test_stop_removes_rules_even_on_exception(netns: str) -> None:
    def scenario() -> tuple[str, str]:
        guard = RstGuard()
        with pytest.raises(RuntimeError), guard:
            guard.own_port(LOOP, 7000)
            inside = ns_rules_text(netns)
            raise RuntimeError("boom")
        guard.stop()  # idempotent
        return inside, ns_rules_text(netns)

    inside, after = in_netns(netns, scenario)
    assert "tcpscapy" in inside
    assert "tcpscapy" not in after


def test_two_guards_get_different_queues(netns: str) -> None:
    def scenario() -> tuple[int | None, int | None]:
        with RstGuard() as first, RstGuard() as second:
            return first.queue_num, second.queue_num

    first, second = in_netns(netns, scenario)
    assert first is not None and second is not None and first != second


def test_taken_queue_number_is_a_clear_error(netns: str) -> None:
    def scenario() -> str:
        with RstGuard() as first:
            with pytest.raises(GuardError) as failed:
                RstGuard(queue_num=first.queue_num).start()
            return str(failed.value)

    assert "in use" in in_netns(netns, scenario)


def test_forked_child_leaves_parent_rules_alone(netns: str) -> None:
    def scenario() -> tuple[int, str]:
        with RstGuard() as guard:
            guard.own_port(LOOP, 7100)
            child = os.fork()
            if child == 0:
                guard.stop()  # inherited object: must not touch the parent's rules
                os._exit(0)
            _, status_word = os.waitpid(child, 0)
            return status_word, ns_rules_text(netns)

    status_word, dump = in_netns(netns, scenario)
    assert status_word == 0 and set_members(dump) == [7100]
    assert "tcpscapy" not in ns_rules_text(netns)


# -- a guard in another process: signals and crashes ---------------------------------

GUARD_SCRIPT = """
import selectors, sys, time
from tcpscapy.io.guard import RstGuard, stop_on_signals
guard = RstGuard(backend=sys.argv[1]).start()
stop_on_signals(guard)
guard.own_port("127.0.0.1", int(sys.argv[2]))
print("ready", flush=True)
sel = selectors.DefaultSelector()
sel.register(guard, selectors.EVENT_READ)
deadline = time.monotonic() + 30  # never outlive a broken test
while time.monotonic() < deadline:
    if sel.select(timeout=0.5):
        guard.process_pending()
"""


@pytest.fixture
def guard_process(netns: str) -> Iterator[Callable[[str, int], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(backend: str, port: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", GUARD_SCRIPT, backend, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        started.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        if not (ready and proc.stdout and proc.stdout.readline().strip() == "ready"):
            proc.kill()
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"guard process did not start: {err.strip()}")
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)]
)
def test_signal_removes_rules_and_exits_with_code(
    netns: str, guard_process: Callable[[str, int], subprocess.Popen[str]], signum: int, code: int
) -> None:
    proc = guard_process("nft", 8000)
    assert set_members(ns_rules_text(netns), proc.pid) == [8000]
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == code
    assert "tcpscapy" not in ns_rules_text(netns)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_fails_open_and_cleanup_removes_stale(
    netns: str, guard_process: Callable[[str, int], subprocess.Popen[str]], backend: str
) -> None:
    reserved = in_netns(netns, reserve_port)
    try:
        port = reserved.getsockname()[1]
        proc = guard_process(backend, port)
        proc.kill()
        proc.wait(timeout=5)

        shown = ns_run(netns, sys.executable, "-m", "tcpscapy", "guard", "status")
        assert shown.returncode == 0
        assert f"pid={proc.pid} (stale)" in shown.stdout and backend in shown.stdout
        assert f"ipset  pid={proc.pid} (stale)" in shown.stdout
        assert set_members(ns_rules_text(netns), proc.pid) == [port]

        def probe(wire: Wire, _unused: int) -> set[tuple[int, int]]:
            wire.send(43001, port, "SA")
            return wire.rsts()

        # Nobody reads the queue: --queue-bypass lets the kernel's RST through.
        assert (port, 43001) in in_netns(netns, with_wire(probe))

        cleaned = ns_run(netns, sys.executable, "-m", "tcpscapy", "guard", "cleanup")
        assert cleaned.returncode == 0
        assert f"removed {backend}" in cleaned.stdout and f"pid={proc.pid}" in cleaned.stdout
        assert "tcpscapy" not in ns_rules_text(netns)
    finally:
        reserved.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanup_stale_spares_live_owners(
    netns: str, guard_process: Callable[[str, int], subprocess.Popen[str]], backend: str
) -> None:
    alive = guard_process("nft", 9002)
    dead = guard_process(backend, 9001)  # started second: its own start-up cleanup must not matter
    dead.kill()
    dead.wait(timeout=5)

    def scenario() -> tuple[int, list[tuple[str, int, bool]]]:
        removed = cleanup_stale()
        return removed, [(r.backend, r.pid, r.alive) for r in status()]

    removed, left = in_netns(netns, scenario)
    assert removed == 1
    assert left == [("nft", alive.pid, True)]
    dump = ns_rules_text(netns)
    assert set_members(dump) == set_members(dump, alive.pid) == [9002]  # the dead one's set went

    swept = ns_run(netns, sys.executable, "-m", "tcpscapy", "guard", "cleanup", "--all")
    assert swept.returncode == 0 and f"pid={alive.pid}" in swept.stdout
    assert "tcpscapy" not in ns_rules_text(netns)


def test_two_processes_own_ports_side_by_side(
    netns: str, guard_process: Callable[[str, int], subprocess.Popen[str]]
) -> None:
    """Each process has its own rule, set and queue: each drops the kernel's RSTs for its
    own port only, and one of them dying leaves the other's guard working."""
    held = [in_netns(netns, reserve_port) for _ in range(3)]
    try:
        first_port, second_port, free_port = (sock.getsockname()[1] for sock in held)
        first = guard_process("nft", first_port)
        second = guard_process("legacy", second_port)
        dump = ns_rules_text(netns)
        assert set_members(dump, first.pid) == [first_port]
        assert set_members(dump, second.pid) == [second_port]

        def probe(wire: Wire, _unused: int) -> set[tuple[int, int]]:
            for port in (first_port, second_port, free_port):
                wire.send(44001, port, "SA")
            return wire.rsts()

        seen = in_netns(netns, with_wire(probe))
        assert (free_port, 44001) in seen  # owned by nobody: the kernel's RST goes out
        assert (first_port, 44001) not in seen and (second_port, 44001) not in seen

        first.kill()
        first.wait(timeout=5)
        seen = in_netns(netns, with_wire(probe))
        assert (first_port, 44001) in seen  # its owner is gone: fails open
        assert (second_port, 44001) not in seen  # the other process still guards its port
    finally:
        for sock in held:
            sock.close()


CRASH_SCRIPT = """
from tcpscapy.io.guard import RstGuard
guard = RstGuard().start()
guard.own_port("127.0.0.1", 8100)
print("rules on ports", guard.ports, flush=True)
raise RuntimeError("uncaught: only atexit is left to clean up")
"""


def test_atexit_removes_rules_after_uncaught_exception(netns: str) -> None:
    done = ns_run(netns, sys.executable, "-c", CRASH_SCRIPT)
    assert done.returncode == 1 and "[8100]" in done.stdout and "RuntimeError" in done.stderr
    assert "tcpscapy" not in ns_rules_text(netns)


def test_cli_unprivileged_exits_4() -> None:
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-m", "tcpscapy", "guard", "status"],
        capture_output=True, text=True, timeout=20, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 4
    assert done.stderr.strip().count("\n") == 0 and "root" in done.stderr


def test_start_removes_stale_rules(
    netns: str, guard_process: Callable[[str, int], subprocess.Popen[str]]
) -> None:
    dead = guard_process("legacy", 9101)
    dead.kill()
    dead.wait(timeout=5)

    def scenario() -> tuple[list[int], list[int]]:
        before = [rule.pid for rule in status()]
        with RstGuard():
            return before, [rule.pid for rule in status()]

    before, during = in_netns(netns, scenario)
    assert dead.pid in before
    assert dead.pid not in during
