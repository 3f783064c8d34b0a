"""Path impairment on the routed lab's router (tcpscapy.impair): real packets, counted.

Datagrams carry their sequence number; the impairment process's counters say when it has
seen them all, so no test waits on a clock for its verdict. Bounds on random outcomes are
wide (the seeds make them exact, but the bounds do not depend on that).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcpscapy.cli import main
from tcpscapy.impair.daemon import MODULE
from tcpscapy.lab import LabError, LabUsageError
from tcpscapy.routed import RoutedLab

pytestmark = pytest.mark.wire
LAB_PREFIX = "rt"
PORT = 9000
IP_RECVTOS = 13
WAIT = 30.0  # bound on waiting for the process to have seen what we sent


@pytest.fixture
def routed(unique_prefix: str) -> Iterator[RoutedLab]:
    lab = RoutedLab(unique_prefix)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    assert daemons(lab) == [], "lab down left the impairment process running"
    assert not lab.exists() and not lab.runtime_dir.exists()


def daemons(lab: RoutedLab) -> list[int]:
    """Live impairment processes of this lab, found by their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if MODULE.encode() in argv and str(lab.runtime_dir).encode() in argv:
                found.append(int(entry.name))
    return found


def counters(lab: RoutedLab, direction: str = "to-server") -> dict[str, int]:
    status = lab.path_status()
    assert status is not None
    return dict(status["directions"][direction]["counters"])


def wait_seen(lab: RoutedLab, packets: int, direction: str = "to-server") -> dict[str, int]:
    """Wait until the process has seen `packets` in total and holds none; its counters."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status = lab.path_status()
        assert status is not None
        c = status["directions"][direction]["counters"]
        if c["packets"] >= packets and status["held"] == 0:
            return dict(c)
        time.sleep(0.05)
    raise AssertionError(f"the process saw {c['packets']} of {packets} packets in {WAIT} s")


class Flow:
    """Numbered UDP datagrams from the client to the server."""

    def __init__(self, lab: RoutedLab, tos: int = 0) -> None:
        self.lab = lab
        with lab.enter("server"):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with lab.enter("client"):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.rx.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
        self.rx.bind((lab.addr("server"), PORT))
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        self.tx.connect((lab.addr("server"), PORT))
        self.next = 0

    def send(self, n: int, size: int = 64) -> None:
        for _ in range(n):
            self.tx.send(struct.pack("!I", self.next) + bytes(size - 4))
            self.next += 1

    def receive(self, seen_total: int) -> list[tuple[int, int]]:
        """(sequence number, TOS) of each datagram that arrived, in arrival order."""
        wait_seen(self.lab, seen_total)
        got = []
        self.rx.settimeout(1.0)
        while True:
            try:
                data, anc, _, _ = self.rx.recvmsg(2048, socket.CMSG_SPACE(1))
            except TimeoutError:
                return got
            tos = anc[0][2][0] if anc else 0
            got.append((struct.unpack_from("!I", data)[0], tos))

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def handshake_seconds(lab: RoutedLab) -> float:
    with lab.enter("server"):
        listener = socket.create_server((lab.addr("server"), PORT + 1))
    with listener, lab.enter("client"):
        began = time.monotonic()
        with socket.create_connection((lab.addr("server"), PORT + 1), timeout=10):
            return time.monotonic() - began


# -- loss ----------------------------------------------------------------------------


def test_random_loss_near_the_rate_and_the_same_pattern_for_the_same_seed(
        routed: RoutedLab) -> None:
    flow = Flow(routed)
    try:
        routed.path("to-server", loss=0.2, seed=7)
        flow.send(2000)
        first = flow.receive(2000)
        c = counters(routed)
        assert c["packets"] == 2000 and c["lost"] + c["sent"] == 2000
        assert len(first) == c["sent"] and 250 < c["lost"] < 550  # 20 % of 2000 = 400
        pattern = [seq for seq, _ in first]
        assert pattern == sorted(pattern)  # loss alone keeps the order

        routed.path("to-server", loss=0.2, seed=7)  # the same setting: the streams restart
        flow.send(2000)
        again = [seq - 2000 for seq, _ in flow.receive(4000)]
        assert again == pattern

        routed.path("to-server", loss=0.2, seed=8)
        flow.send(2000)
        other = [seq - 4000 for seq, _ in flow.receive(6000)]
        assert other != pattern and 250 < 2000 - len(other) < 550
    finally:
        flow.close()


def test_bursty_loss_loses_runs_of_packets(routed: RoutedLab) -> None:
    flow = Flow(routed)
    try:
        routed.path("to-server", loss=0.1, burst=6)
        flow.send(4000)
        arrived = {seq for seq, _ in flow.receive(4000)}
        lost = [seq for seq in range(4000) if seq not in arrived]
        assert 150 < len(lost) < 700
        runs = 1 + sum(1 for a, b in itertools.pairwise(lost) if b != a + 1)
        assert len(lost) / runs > 2.5  # mean burst ≈ 6; independent 10 % loss gives ≈ 1.1
    finally:
        flow.close()


# -- delay, change while up, reorder, duplicate ---------------------------------------


def test_delay_shows_in_the_handshake_and_changes_while_up(routed: RoutedLab) -> None:
    routed.path(delay=0.03)
    assert handshake_seconds(routed) >= 0.06  # SYN and SYN-ACK each held 30 ms
    status = routed.path_status()
    assert status is not None
    assert status["directions"]["to-client"]["describe"] == "delay 30ms seed 1"
    routed.path("to-client", delay=0.15)  # while up; to-server keeps its 30 ms
    assert handshake_seconds(routed) >= 0.18
    status = routed.path_status()
    assert status is not None
    assert status["directions"]["to-server"]["params"]["delay"] == 0.03
    assert status["directions"]["to-client"]["params"]["delay"] == 0.15
    assert status["own_delay_us"]["samples"] > 0


def test_reorder_and_duplicate(routed: RoutedLab) -> None:
    flow = Flow(routed)
    try:
        routed.path("to-server", reorder=0.1, reorder_gap=0.01, duplicate=0.05, seed=3)
        flow.send(1000)
        got = [seq for seq, _ in flow.receive(1000)]
        c = counters(routed)
        assert c["duplicated"] > 10 and len(got) == 1000 + c["duplicated"]
        assert set(got) == set(range(1000))
        first = {}
        for i, seq in enumerate(got):
            first.setdefault(seq, i)
        order = sorted(first, key=first.__getitem__)
        assert order != sorted(order) and c["reordered"] > 20
    finally:
        flow.close()


# -- rate limit and ECN ---------------------------------------------------------------


def test_rate_limit_tail_drops_and_marks_ect_packets_ce_above_the_threshold(
        routed: RoutedLab) -> None:
    flow = Flow(routed, tos=0x02)  # ECT(0)
    try:
        routed.path("to-server", rate=1e6, queue=30, ce_threshold=0.005)
        flow.send(200, size=1000)  # ~8 ms each at 1 Mbit/s: the queue fills at once
        got = flow.receive(200)
        c = counters(routed)
        assert c["queue_drops"] > 100 and len(got) == c["sent"] == 200 - c["queue_drops"]
        tos = [t for _, t in got]
        assert tos[0] & 3 == 2  # the first did not queue: still ECT(0)
        assert sum(t & 3 == 3 for t in tos) == c["ce_marked"] > len(got) // 2
    finally:
        flow.close()


# -- lifecycle -------------------------------------------------------------------------


def test_off_and_down_leave_no_process_and_no_rule(routed: RoutedLab) -> None:
    assert routed.path_status() is None and daemons(routed) == []
    routed.path(delay=0.001)
    (pid,) = daemons(routed)
    rules = routed.run("router", ["iptables", "-t", "mangle", "-S", "FORWARD"],
                       capture_output=True, text=True).stdout
    assert rules.count("tcpscapy-path") == 2
    os.kill(pid, signal.SIGKILL)  # a crash: the rules stay behind, fail-open
    deadline = time.monotonic() + WAIT
    while daemons(routed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handshake_seconds(routed) >= 0  # --queue-bypass: still forwarding
    routed.path_off()
    rules = routed.run("router", ["iptables", "-t", "mangle", "-S", "FORWARD"],
                       capture_output=True, text=True).stdout
    assert "tcpscapy-path" not in rules and routed.path_status() is None
    routed.path(loss=0.0)
    assert len(daemons(routed)) == 1
    # `ip netns del` behind the lab's back: the process notices and leaves by itself.
    subprocess.run(["ip", "netns", "del", routed.router_ns], check=True)
    deadline = time.monotonic() + WAIT
    while daemons(routed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons(routed) == []


def test_bad_settings_are_refused_before_anything_starts(routed: RoutedLab) -> None:
    for params in ({"loss": 1.5}, {"delay": -1.0}, {"queue": 0}, {"latency": 1.0},
                   {"loss": 0.9, "burst": 2.0}):
        with pytest.raises(LabUsageError):
            routed.path(**params)
    with pytest.raises(LabUsageError, match="direction"):
        routed.path("sideways", loss=0.1)
    assert daemons(routed) == [] and routed.path_status() is None


def test_cli_path(routed: RoutedLab) -> None:
    runner = CliRunner()
    p = ["--prefix", routed.prefix]
    res = runner.invoke(main, ["lab", "path", *p])
    assert res.exit_code == 0 and "no impairment process" in res.output
    res = runner.invoke(main, ["lab", "path", *p, "--delay", "20ms", "--loss", "1%",
                               "--direction", "to-client", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "delay 20ms loss 1% seed 5" in res.output and "own delay" in res.output
    res = runner.invoke(main, ["lab", "status", *p])
    assert "to-client  delay 20ms loss 1% seed 5" in res.output
    assert "to-server  no impairment" in res.output
    info = json.loads(runner.invoke(main, ["lab", "path", *p, "--json"]).output)
    assert info["directions"]["to-client"]["params"]["loss"] == 0.01
    res = runner.invoke(main, ["lab", "path", *p, "--clear", "--rate", "10mbit"])
    assert "to-client  rate 10mbit queue 1000 seed 1" in res.output
    for bad in (["--loss", "150%"], ["--delay", "soon"], ["--rate", "fast"],
                ["--off", "--loss", "1%"]):
        res = runner.invoke(main, ["lab", "path", *p, *bad])
        assert res.exit_code == 2, (bad, res.output)
    res = runner.invoke(main, ["lab", "path", *p, "--off"])
    assert res.exit_code == 0 and daemons(routed) == []
    res = runner.invoke(main, ["lab", "path", "--prefix", routed.prefix + "x", "--loss", "1%"])
    assert res.exit_code == 1 and "not a routed lab" in res.output


def test_path_needs_a_routed_lab_that_is_up(unique_prefix: str) -> None:
    lab = RoutedLab(unique_prefix)
    with pytest.raises(LabError, match="not up"):
        lab.path(loss=0.1)
    assert daemons(lab) == []


def test_bad_control_requests_get_an_error_and_change_nothing(routed: RoutedLab) -> None:
    routed.path(loss=0.1)
    path = str(routed.runtime_dir / "path.sock")

    def ask(raw: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            data = b""
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:  # it answered and closed before reading it all
                assert len(raw) > 65536
                return {"ok": False, "error": "reset"}
        return dict(json.loads(data)) if data else {}

    assert ask(b"") == {}  # connect, say nothing, leave
    for raw in (b"not json\n", b"[1, 2]\n", b'{"op": "reboot"}\n',
                b'{"op": "set", "direction": "sideways", "params": {}}\n',
                b'{"op": "set", "params": {"loss": 5}}\n',
                b'{"op": "set", "params": {"loss": 0.5, "nonsense": 1}}\n',
                b'{"op": "set", "params": [1]}\n', b"\xff" * 70_000):
        answer = ask(raw)
        assert answer["ok"] is False and answer["error"], raw[:40]
    status = routed.path_status()
    assert status is not None and len(daemons(routed)) == 1
    assert {d["params"]["loss"] for d in status["directions"].values()} == {0.1}


def test_two_starts_at_once_make_one_process(routed: RoutedLab) -> None:
    errors: list[BaseException] = []

    def start(loss: float) -> None:
        try:
            RoutedLab(routed.prefix).path(loss=loss)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(x,)) for x in (0.1, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(daemons(routed)) == 1
    rules = routed.run("router", ["iptables", "-t", "mangle", "-S", "FORWARD"],
                       capture_output=True, text=True).stdout
    assert rules.count("tcpscapy-path") == 2
