"""tcpscapy.io.workers without the wire: the shared config, the factories, the process group.

The process-group tests run a small script in a fresh interpreter (WorkerGroup
forks, which it refuses to do beside other threads, such as a test runner's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tcpscapy.cli import main
from tcpscapy.cli.listen import _add_up, _pcap_paths, _tagged
from tcpscapy.core.config import Config
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.core.stack import Stack
from tcpscapy.core.state import State
from tcpscapy.io import workers
from tcpscapy.io.guard import RstGuard
from tcpscapy.io.workers import FanOut
from tests.io.test_driver_unit import FakeReservation
from tests.wire.cli_helpers import still_there_after

ROOT = Path(__file__).resolve().parents[2]
SERVER, CLIENT = "10.9.0.2", "10.9.0.1"


# -- what the workers share ------------------------------------------------------------------


def test_a_fan_out_draws_one_secret_for_all_its_workers() -> None:
    one, two = FanOut(SERVER, 80, 2), FanOut(SERVER, 80, 2)
    assert one.config.secret != bytes(16) and one.config.secret != two.config.secret
    given = Config(secret=b"k" * 16)
    assert FanOut(SERVER, 80, 3, config=given).config is given


@pytest.mark.parametrize("count", [1, 0, workers.MAX_WORKERS + 1])
def test_a_fan_out_needs_two_to_max_workers(count: int) -> None:
    with pytest.raises(ValueError):
        FanOut(SERVER, 80, count)


def _cookie_ack(minting: Stack, config: Config, now: float) -> Segment:
    """The client's ACK of the SYN-cookie SYN-ACK that `minting` answered its SYN with."""
    client = Stack(Config(secret=b"c" * 16))
    client.connect((CLIENT, 40000), (SERVER, 80), now)
    (syn,) = client.segments_to_send(now)
    minting.listen(SERVER, 80, config=config)
    minting.receive(syn, now)
    (synack,) = minting.segments_to_send(now)
    assert synack.flags == SYN | ACK and minting.connections == []  # stateless
    client.receive(synack, now)
    (ack,) = client.segments_to_send(now)
    return ack


def test_a_syn_cookie_one_worker_minted_is_accepted_by_another() -> None:
    config = FanOut(SERVER, 80, 2).config.with_(syncookies="always")
    ack = _cookie_ack(Stack(config), config, 100.0)
    other = Stack(config)
    listener = other.listen(SERVER, 80, config=config)
    other.receive(ack, 100.2)
    conn = listener.accept()
    assert conn is not None and conn.state is State.ESTABLISHED
    assert listener.counters["cookies_validated"] == 1


def test_a_syn_cookie_is_rejected_by_a_stack_with_another_secret() -> None:
    config = FanOut(SERVER, 80, 2).config.with_(syncookies="always")
    ack = _cookie_ack(Stack(config), config, 100.0)
    stranger_config = FanOut(SERVER, 80, 2).config.with_(syncookies="always")
    stranger = Stack(stranger_config)
    listener = stranger.listen(SERVER, 80, config=stranger_config)
    stranger.receive(ack, 100.2)
    assert listener.accept() is None and listener.counters["cookies_rejected"] == 1


# -- the worker's factories -------------------------------------------------------------------


def test_the_listening_port_is_the_parents_other_ports_are_reserved_as_ever() -> None:
    made: list[FakeReservation] = []

    def reserve(ip: str, port: int) -> FakeReservation:
        made.append(FakeReservation(ip, port or 55555))
        return made[-1]

    fan = FanOut(SERVER, 8080, 2, reserve_port=reserve)
    port = fan.factories(1)["reserve_port"]
    shared = port(SERVER, 8080)
    assert (shared.ip, shared.port) == (SERVER, 8080) and made == []
    shared.close()  # a no-op: the parent keeps the port
    other = port(SERVER, 0)
    assert made == [other] and other.port == 55555


def test_each_worker_guard_binds_its_own_queue_and_shares_the_port() -> None:
    fan = FanOut(SERVER, 8080, 3)
    fan.queues = range(20000, 20003)
    guards = [fan.factories(i)["make_guard"]() for i in (1, 2, 3)]
    assert all(isinstance(g, RstGuard) for g in guards)
    assert [g._wanted_queue for g in guards] == [20000, 20001, 20002]  # type: ignore[attr-defined]
    assert all(g.shared_ports == {8080} for g in guards)  # type: ignore[attr-defined]
    for index in (0, 4):
        with pytest.raises(ValueError):
            fan.factories(index)


# -- the CLI's merging --------------------------------------------------------------------------


def test_lines_are_tagged_with_their_worker() -> None:
    assert _tagged(2, "10.0.0.1:4000  in 5 B", "ladder") == "[w2] 10.0.0.1:4000  in 5 B"
    assert json.loads(_tagged(1, '{"type":"connection","peer":"x"}', "json")) == {
        "worker": 1, "type": "connection", "peer": "x"}
    assert json.loads(_tagged(3, "{}", "json")) == {"worker": 3}
    assert json.loads(_tagged(1, "Traceback (most recent call last):", "json")) == {
        "type": "output", "worker": 1, "text": "Traceback (most recent call last):"}


def test_pcap_files_are_one_per_worker() -> None:
    assert _pcap_paths(None, 3) == []
    assert _pcap_paths("cap.pcap", 1) == ["cap.pcap"]
    assert _pcap_paths("/tmp/cap.pcap", 2) == ["/tmp/cap-w1.pcap", "/tmp/cap-w2.pcap"]
    assert _pcap_paths("cap", 2) == ["cap-w1.pcap", "cap-w2.pcap"]


def test_the_summary_adds_up_the_workers() -> None:
    reports = [{"worker": 1, "connections": 2, "bytes_in": 10, "bytes_out": 20,
                "counters": {"syns_received": 2, "cookies_sent": 0}},
               {"worker": 2, "connections": 3, "bytes_in": 1, "bytes_out": 2,
                "counters": {"syns_received": 4, "cookies_sent": 1}}]
    assert _add_up("1.2.3.4:80", reports) == {
        "listen": "1.2.3.4:80", "connections": 5, "bytes_in": 11, "bytes_out": 22,
        "counters": {"syns_received": 6, "cookies_sent": 1}}


@pytest.mark.parametrize("value", ["0", "65", "two", "-1"])
def test_workers_out_of_range_is_a_usage_error(value: str) -> None:
    result = CliRunner().invoke(main, ["listen", "80", "--workers", value])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0] and lines[0].startswith("tcpscapy listen")


def test_help_says_what_workers_do() -> None:
    text = CliRunner().invoke(main, ["listen", "--help"]).output
    assert "--workers N" in text and "PACKET_FANOUT" in text and "[w1]" in text


# -- the process group ----------------------------------------------------------------------------

GROUP = r"""
import json, os, signal, sys, threading
from tcpscapy.io.workers import Exited, Line, Message, StopSignals, WorkerGroup

mode = sys.argv[1]

def main(index, channel):
    stop = StopSignals()
    if mode == "crash" and index == 2:
        raise RuntimeError("boom")
    print(f"hello from {index}", file=sys.stderr, flush=True)
    channel.send(ready=index)
    signum = stop.wait(threading.Event())
    sys.stderr.write(f"bye {index}")  # no newline: the parent still gets the line
    channel.send(stopped=signum)
    return 128 + signum

seen = []
def note(event):
    if isinstance(event, Line):
        seen.append(["line", event.worker.index, event.text])
    elif isinstance(event, Message):
        seen.append(["message", event.worker.index, event.obj])
    elif isinstance(event, Exited):
        seen.append(["exited", event.worker.index, os.waitstatus_to_exitcode(event.status)])

with WorkerGroup(2, main) as group:
    pids = [w.pid for w in group.workers]
    ready = 0
    while ready < 2 and not any(e[0] == "exited" for e in seen):
        for event in group.events(10):
            note(event)
            ready += isinstance(event, Message) and "ready" in event.obj
    if mode == "orphan":
        print(json.dumps(pids), flush=True)
        os._exit(0)  # no cleanup: the workers must notice their parent is gone
    group.signal_all(signal.SIGTERM)
    for event in group.until_all_exited(10):
        note(event)
print(json.dumps({"pids": pids, "events": seen}))
"""


def run_group(mode: str) -> Any:
    done = subprocess.run([sys.executable, "-c", GROUP, mode], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_workers_report_lines_and_messages_and_stop_on_a_signal() -> None:
    result = run_group("signal")
    events = result["events"]
    for i in (1, 2):
        mine = [e for e in events if e[1] == i]
        # Each pipe keeps its order; the two pipes interleave as they were read.
        assert [e[2] for e in mine if e[0] == "line"] == [f"hello from {i}", f"bye {i}"]
        assert [e[2] for e in mine if e[0] == "message"] == [{"ready": i}, {"stopped": 15}]
        assert mine[-1] == ["exited", i, 143]
    assert [pid for pid in result["pids"] if _alive(pid)] == []


def test_a_crashing_worker_is_seen_with_its_traceback() -> None:
    events = run_group("crash")["events"]
    crashed = [e for e in events if e[1] == 2]
    assert crashed[-1] == ["exited", 2, 1]
    assert any(e[0] == "line" and e[2] == "RuntimeError: boom" for e in crashed)
    assert ["exited", 1, 143] in events  # the other one was stopped


def test_workers_die_with_their_parent() -> None:
    done = subprocess.run([sys.executable, "-c", GROUP, "orphan"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    pids = json.loads(done.stdout.splitlines()[-1])
    assert len(pids) == 2
    for pid in pids:
        assert not still_there_after(pid, 20.0), f"worker {pid} outlived its parent"


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
