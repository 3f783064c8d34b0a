"""`tcpscapy listen --workers 2` in the server host of a lab, with kernel clients.

Checks that the kernel's fan-out really spreads connections over both workers,
that every client gets its own bytes back, that the workers share the listener's
secrets (a Fast Open cookie one worker issued is honoured by the other; SYN
cookies in always mode), and that SIGINT, a killed worker or a killed parent
leave no worker process and no guard rule behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tcpscapy.io import iptables
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    SERVER,
    assert_clean,
    finish,
    guard_rules,
    lab_processes,
    read_until,
    still_there_after,
    tcp_counters,
    tcpscapy_popen,
    tcpscapy_run,
)
from tests.wire.test_cli_listen import CLIENTS

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsw"
PORT = 8080


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


def start(lab: Lab, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`tcpscapy listen --workers 2 --json ARGS`; returns once listening, with that object."""
    proc = tcpscapy_popen(lab, "server", "listen", f"{SERVER}:{PORT}", "--workers", "2",
                          "--json", *args)
    assert proc.stderr is not None
    got = read_until(proc.stderr, b'"type":"listening"', timeout=30)
    line = next(x for x in got.decode().splitlines() if '"listening"' in x)
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[bytes], signum: int) -> tuple[int, list[dict[str, Any]]]:
    """Signal the parent; (exit code, the JSON objects it wrote after 'listening')."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, [json.loads(line) for line in err.decode().splitlines()]


def clients(lab: Lab, n: int) -> None:
    result = lab.run("client", [sys.executable, "-c", CLIENTS, SERVER, str(PORT), str(n)],
                     capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(n), str(n)], result.stderr


def summary_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["type"] == "summary")


def pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if iptables.pid_alive(pid)]


def test_two_workers_share_the_clients_and_each_gets_its_echo(net: Lab) -> None:
    proc, listening = start(net)
    assert listening["workers"] == 2 and len(set(listening["pids"])) == 2
    before = tcp_counters(net, "client")
    clients(net, 60)
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]
    code, objs = stop(proc, signal.SIGINT)
    assert code == 130
    conns = [o for o in objs if o["type"] == "connection"]
    assert sorted(c["bytes_in"] for c in conns) == [10000 + 97 * i for i in range(60)]
    assert all(c["bytes_in"] == c["bytes_out"] for c in conns)
    summary = summary_of(objs)
    assert summary["connections"] == 60 and summary["counters"]["syns_received"] == 60
    per_worker = {w["worker"]: w for w in summary["workers"]}
    assert set(per_worker) == {1, 2}
    assert [w["pid"] for w in summary["workers"]] == listening["pids"]
    # Both served some: 60 flows all hashed to one worker would be a 1 in 2**59 event.
    served = {i: sum(1 for c in conns if c["worker"] == i) for i in (1, 2)}
    assert served[1] > 0 and served[2] > 0
    assert {i: w["connections"] for i, w in per_worker.items()} == served
    assert {i: w["counters"]["syns_received"] for i, w in per_worker.items()} == served
    assert objs[-1] == {"type": "error", "exit": 130, "message": "stopped by SIGINT"}
    assert pids_alive(listening["pids"]) == []
    assert guard_rules(net) == {} and lab_processes(net) == []


def test_text_lines_are_tagged_with_their_worker(net: Lab) -> None:
    proc = tcpscapy_popen(net, "server", "listen", f"{SERVER}:{PORT}", "--workers", "2", "-v")
    assert proc.stderr is not None
    head = read_until(proc.stderr, b"listening", timeout=30).decode()
    assert "(echo, 2 workers: pids " in head
    clients(net, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = err.decode().splitlines()
    served = [x for x in lines if x.startswith(("[w1] 10.77.0.1:", "[w2] 10.77.0.1:"))]
    assert len(served) == 20
    # -v: each worker's ladders come through whole lines, each one tagged.
    body = [x for x in lines if x and not x.startswith(("10.77.0.2:", "workers:",
                                                        "counters:", "tcpscapy listen:"))]
    assert all(x.startswith(("[w1] ", "[w2] ")) for x in body)
    assert lines[-4].startswith("10.77.0.2:8080: 20 connections")
    counts = dict(part.split() for part in lines[-3].removeprefix("workers: ")
                  .removesuffix(" connections").split(", "))
    assert sorted(counts) == ["w1", "w2"] and sum(map(int, counts.values())) == 20
    assert lines[-2].startswith("counters: syns_received=20 ")
    assert lines[-1] == "tcpscapy listen: stopped by SIGTERM"


def test_syn_cookies_in_always_mode_on_both_workers(net: Lab) -> None:
    proc, _ = start(net, "--syncookies", "always")
    clients(net, 40)
    code, objs = stop(proc, signal.SIGTERM)
    assert code == 143
    workers = summary_of(objs)["workers"]
    for w in workers:
        counters = w["counters"]
        # Stateless: every connection a worker served came from a cookie it validated.
        assert counters["cookies_sent"] >= w["connections"] > 0
        assert counters["cookies_validated"] == w["connections"]
        assert counters["cookies_rejected"] == 0
    assert sum(w["connections"] for w in workers) == 40


# The first connection asks for a Fast Open cookie; the next ones carry data in the SYN.
# Each waits for its echo before it half-closes, as a request/response client would.
TFO_CLIENTS = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = 0
for i in range(n):
    with socket.socket() as s:
        data = b"fast %d" % i
        s.sendto(data, socket.MSG_FASTOPEN, (host, port))  # blocking: connects
        s.settimeout(10)
        got = s.recv(100)
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(100):
            got += chunk
        ok += got == data
print(ok, n)
"""


def test_a_fast_open_cookie_from_one_worker_is_accepted_by_the_other(net: Lab) -> None:
    net.sysctl("client", "net.ipv4.tcp_fastopen", "1")
    # Sequential connections, each served on its own thread while the accept thread
    # waits in the driver: the race where one thread's wait() reads the segment the
    # leader (asleep in select()) needs, which once stalled 1 run in 3 here.
    proc, _ = start(net, "--tfo")
    result = net.run("client", [sys.executable, "-c", TFO_CLIENTS, SERVER, str(PORT), "31"],
                     capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["31", "31"], result.stderr
    code, objs = stop(proc, signal.SIGTERM)
    assert code == 143
    summary = summary_of(objs)
    assert summary["counters"]["tfo_cookie_requests"] == 1
    assert summary["counters"]["tfo_passive"] == 30
    assert summary["counters"]["tfo_passive_fail"] == 0
    # The cookie is per address, not per flow: the worker that did not issue it
    # (it got no cookie request) still took data in the SYN with it.
    other = next(w for w in summary["workers"] if w["counters"]["tfo_cookie_requests"] == 0)
    assert other["counters"]["tfo_passive"] > 0


def test_a_killed_worker_stops_the_others_and_leaves_nothing(net: Lab) -> None:
    proc, listening = start(net)
    clients(net, 10)
    victim = listening["pids"][1]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    objs = [json.loads(line) for line in err.decode().splitlines()]
    assert objs[-1] == {"type": "error", "exit": 1,
                        "message": f"worker 2 (pid {victim}) killed by SIGKILL: "
                                   "stopped them all"}
    summary = summary_of(objs)
    assert [w["worker"] for w in summary["workers"]] == [1]  # the dead one sent none
    assert pids_alive(listening["pids"]) == []
    assert guard_rules(net) == {} and lab_processes(net) == []
    # The port is the kernel's again: nothing listens there.
    with net.enter("client"), pytest.raises(ConnectionRefusedError):
        socket.create_connection((SERVER, PORT), timeout=5).close()


def test_a_killed_parent_takes_its_workers_along_and_its_rule_is_stale(net: Lab) -> None:
    proc, listening = start(net)
    proc.kill()
    proc.communicate(timeout=30)
    # PR_SET_PDEATHSIG: each worker gets SIGTERM and stops; wait for them (bounded).
    for pid in listening["pids"]:
        assert not still_there_after(pid, 30.0), f"worker {pid} outlived its parent"
    with net.enter("server"):
        (rule,) = iptables.status()
    assert (rule.pid, rule.alive, rule.port) == (proc.pid, False, PORT)
    assert rule.queue_last == rule.queue_num + 1  # --queue-balance over two queues
    cleaned = tcpscapy_run(net, "server", "guard", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert_clean(net)



def test_once_with_workers_is_a_usage_error(net: Lab) -> None:
    result = tcpscapy_run(net, "server", "listen", str(PORT), "--workers", "2", "--once")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "tcpscapy listen: --once serves one connection: it takes no --workers"]


def test_a_port_in_use_is_exit_9_before_any_worker_starts(net: Lab) -> None:
    with net.enter("server"):
        holder = socket.create_server((SERVER, 0))
    with holder:
        port = holder.getsockname()[1]
        result = tcpscapy_run(net, "server", "listen", f"{SERVER}:{port}", "--workers", "2")
    assert result.returncode == 9
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpscapy listen: ") and "in use" in lines[0]
    assert guard_rules(net) == {} and lab_processes(net) == []
