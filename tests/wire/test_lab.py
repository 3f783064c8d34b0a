"""The lab topology, netns.enter and the `tcpscapy lab` CLI, against the real kernel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tcpscapy import netns
from tcpscapy.cli import main
from tcpscapy.lab import HOSTS, Lab, LabError, LabUsageError

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsa"
# Capabilities dropped, uid still 0: the venv under /root stays readable, privileges go.
UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(f"{prefix}-")]


def tcp_exchange(lab: Lab, client: str, server: str) -> bytes:
    """Kernel TCP from `client` to `server` over the lab link; returns what the server got."""
    with lab.enter(server):
        listener = socket.create_server((lab.addr(server), 0))
    with listener:
        with lab.enter(client):
            conn = socket.create_connection(listener.getsockname(), timeout=2)
        with conn:
            conn.sendall(f"hello from {client}".encode())
            peer, (peer_ip, _) = listener.accept()
            with peer:
                peer.settimeout(2)
                assert peer_ip == lab.addr(client)
                return peer.recv(100)


# -- Lab ---------------------------------------------------------------------------


def test_up_builds_the_topology_and_down_removes_it(unique_prefix: str) -> None:
    lab = Lab(unique_prefix)
    assert not lab.exists() and lab.status()["state"] == "down"
    lab.up()
    status = lab.status()
    assert status["state"] == "up" and lab.exists()
    assert sorted(lab_namespaces(unique_prefix)) == sorted(
        f"{unique_prefix}-{h}" for h in ("sw", *HOSTS)
    )
    assert {h: s["address"] for h, s in status["hosts"].items()} == {
        "client": "10.77.0.1/24", "server": "10.77.0.2/24", "attacker": "10.77.0.3/24",
    }
    lab.down()
    assert lab_namespaces(unique_prefix) == []
    assert not lab.exists() and lab.status()["state"] == "down"


def test_kernel_tcp_works_between_every_pair_of_hosts(lab: Lab) -> None:
    for client, server in [("client", "server"), ("attacker", "server"), ("server", "client")]:
        assert tcp_exchange(lab, client, server) == f"hello from {client}".encode()


def test_offloads_are_off_on_every_veth_and_ipv6_is_off(lab: Lab) -> None:
    wanted = {
        "tcp-segmentation-offload", "generic-segmentation-offload",
        "generic-receive-offload", "rx-checksumming", "tx-checksumming",
    }
    ends = [(h, lab.ns(h), "eth0") for h in HOSTS] + [(h, lab.switch_ns, h) for h in HOSTS]
    for _, ns, dev in ends:
        with netns.enter(ns):
            out = subprocess.run(["ethtool", "-k", dev], capture_output=True, text=True,
                                 check=True).stdout
        features = dict(line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)
        assert {k: features[k].split()[0] for k in wanted} == dict.fromkeys(wanted, "off"), dev
    for host in HOSTS:
        assert lab.sysctl(host, "net.ipv6.conf.all.disable_ipv6") == "1"


def test_up_is_idempotent_and_repairs_a_damaged_lab(lab: Lab) -> None:
    lab.up()
    assert lab.status()["state"] == "up"
    subprocess.run(["ip", "-n", lab.ns("server"), "link", "set", "eth0", "down"], check=True)
    subprocess.run(["ip", "-n", lab.switch_ns, "link", "del", "attacker"], check=True)
    subprocess.run(["ip", "netns", "del", lab.ns("client")], check=True)
    damaged = lab.status()
    assert damaged["state"] == "partial"
    assert not damaged["hosts"]["server"]["link_up"]
    assert not damaged["hosts"]["client"]["present"]
    lab.up()
    assert lab.status()["state"] == "up"
    assert tcp_exchange(lab, "client", "server") == b"hello from client"
    assert tcp_exchange(lab, "attacker", "server") == b"hello from attacker"


def test_down_is_idempotent(unique_prefix: str) -> None:
    lab = Lab(unique_prefix)
    lab.down()  # never built
    lab.up()
    lab.down()
    lab.down()
    assert lab_namespaces(unique_prefix) == []


def test_failed_up_leaves_nothing_it_created(unique_prefix: str) -> None:
    lab = Lab(unique_prefix)
    with pytest.raises(LabError, match=r"unknown sysctl net\.ipv4\.no_such_knob"):
        lab.up([("server", "net.ipv4.no_such_knob", "1")])
    assert lab_namespaces(unique_prefix) == []


def test_failed_up_on_an_existing_lab_keeps_it_and_down_still_cleans(unique_prefix: str) -> None:
    lab = Lab(unique_prefix).up()
    with pytest.raises(LabError):
        lab.up([("client", "net.ipv4.tcp_syncookies", "not-a-number")])
    assert lab.status()["state"] == "up"
    lab.down()
    assert lab_namespaces(unique_prefix) == []


def test_context_manager_tears_down_on_error(unique_prefix: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(unique_prefix) as lab:
        assert lab.status()["state"] == "up"
        raise RuntimeError("boom")
    assert lab_namespaces(unique_prefix) == []


def test_sysctl_is_per_host(lab: Lab) -> None:
    root_value = Path("/proc/sys/net/ipv4/tcp_syncookies").read_text()
    assert lab.sysctl("server", "net.ipv4.tcp_syncookies", "2") == "2"
    assert lab.sysctl("client", "net.ipv4.tcp_fastopen", "1") == "1"
    assert lab.sysctl("server", "net.ipv4.tcp_fastopen", "0x202") == "514"

    def read(host: str, key: str) -> str:
        res = lab.run(host, ["sysctl", "-n", key], capture_output=True, text=True, check=True)
        return str(res.stdout).strip()

    assert read("server", "net.ipv4.tcp_syncookies") == "2"
    assert read("client", "net.ipv4.tcp_syncookies") != "2"
    assert read("client", "net.ipv4.tcp_fastopen") == "1"
    assert read("server", "net.ipv4.tcp_fastopen") == "514"
    assert Path("/proc/sys/net/ipv4/tcp_syncookies").read_text() == root_value


def test_bad_input_is_refused(lab: Lab) -> None:
    with pytest.raises(LabUsageError, match="only net"):
        lab.sysctl("server", "kernel.panic", "1")
    with pytest.raises(LabUsageError, match="unknown host 'router'"):
        lab.ns("router")
    with pytest.raises(LabUsageError, match="not a shell string"):
        lab.run("client", "ip addr")
    with pytest.raises(LabUsageError, match="bad lab prefix"):
        Lab("../etc")
    with pytest.raises(LabError, match="is not up"):
        Lab(lab.prefix + "x").run("client", ["true"])


def test_run_and_popen_execute_inside_the_host(lab: Lab) -> None:
    out = lab.run("attacker", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                  capture_output=True, text=True, check=True).stdout
    assert "10.77.0.3/24" in out
    proc = lab.popen("server", ["sleep", "30"])
    assert proc.poll() is None
    lab.down()  # stops what popen started, then removes the namespaces
    assert proc.poll() is not None


# -- netns.enter ---------------------------------------------------------------------


def test_enter_switches_the_thread_and_restores_it(lab: Lab) -> None:
    original = netns.current_id()
    client_id = os.stat(netns.path(lab.ns("client"))).st_ino
    with lab.enter("client"):
        assert netns.current_id() == client_id
        with lab.enter("server"):
            assert netns.current_id() not in (original, client_id)
        assert netns.current_id() == client_id
        sock = socket.socket()
    assert netns.current_id() == original
    with sock:  # created inside: it stays in the client namespace
        sock.bind((lab.addr("client"), 0))
    with pytest.raises(OSError):
        socket.socket().bind((lab.addr("client"), 0))  # not an address out here
    with pytest.raises(ValueError, match="inside"), lab.enter("server"):
        raise ValueError("inside")
    assert netns.current_id() == original


def test_enter_moves_only_the_calling_thread(lab: Lab) -> None:
    original = netns.current_id()
    inside, seen = threading.Event(), []

    def worker() -> None:
        with lab.enter("server"):
            seen.append(netns.current_id())
            inside.set()
            release.wait(2)

    release = threading.Event()
    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(2)
    assert netns.current_id() == original and seen[0] != original
    release.set()
    thread.join(2)


def test_subprocess_started_inside_inherits_the_namespace(lab: Lab) -> None:
    with lab.enter("server"):
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                             check=True).stdout
    assert "10.77.0.2/24" in out


def test_enter_a_missing_namespace_is_a_clear_error(unique_prefix: str) -> None:
    with pytest.raises(netns.NamespaceNotFound, match="does not exist"), \
            netns.enter(f"{unique_prefix}-none"):
        pass


def test_unprivileged_callers_get_one_line_errors(lab: Lab) -> None:
    code = (
        "from tcpscapy import netns\n"
        "from tcpscapy.lab import Lab, LabNeedsRoot\n"
        f"try:\n    Lab({lab.prefix!r}).up()\nexcept LabNeedsRoot as e:\n    print(e)\n"
        f"try:\n    netns.enter({lab.ns('client')!r}).__enter__()\n"
        "except netns.NeedsRoot as e:\n    print(e)\n"
    )
    res = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "the lab needs root: network namespaces require CAP_SYS_ADMIN",
        f"entering network namespace {lab.ns('client')!r} needs root",
    ]


# -- CLI -----------------------------------------------------------------------------


def tcpscapy(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tcpscapy", *args]
    return subprocess.run([*UNPRIVILEGED, *argv] if unprivileged else argv,
                          capture_output=True, text=True, timeout=30)


def test_cli_up_status_down(unique_prefix: str) -> None:
    runner = CliRunner()
    up = runner.invoke(main, ["lab", "up", "--prefix", unique_prefix,
                              "--sysctl", "server:net.ipv4.tcp_syncookies=2"])
    assert up.exit_code == 0, up.output
    assert up.output.splitlines()[0] == f"lab {unique_prefix}: up"
    assert Lab(unique_prefix).sysctl("server", "net.ipv4.tcp_syncookies") == "2"

    shown = runner.invoke(main, ["lab", "status", "--prefix", unique_prefix])
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert lines[0] == f"lab {unique_prefix}: up"
    assert lines[2].split() == ["client", f"{unique_prefix}-client", "eth0", "10.77.0.1/24", "up"]

    as_json = runner.invoke(main, ["lab", "status", "--prefix", unique_prefix, "--json"])
    attacker = json.loads(as_json.output)["hosts"]["attacker"]
    assert attacker["namespace"] == f"{unique_prefix}-attacker" and attacker["link_up"]

    down = runner.invoke(main, ["lab", "down", "--prefix", unique_prefix])
    assert (down.exit_code, down.output) == (0, f"lab {unique_prefix}: removed\n")
    again = runner.invoke(main, ["lab", "down", "--prefix", unique_prefix])
    assert (again.exit_code, again.output) == (0, f"lab {unique_prefix}: nothing to remove\n")
    assert lab_namespaces(unique_prefix) == []


def test_cli_exec_runs_in_the_host_and_passes_the_exit_code(lab: Lab) -> None:
    res = tcpscapy("lab", "exec", "--prefix", lab.prefix, "server", "--",
                   "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert res.returncode == 0 and "10.77.0.2/24" in res.stdout
    res = tcpscapy("lab", "exec", "--prefix", lab.prefix, "client", "--", "sh", "-c", "exit 7")
    assert res.returncode == 7


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["exec", "router", "--", "true"], 2, "unknown host 'router'"),
        (["up", "--sysctl", "server:kernel.panic=1"], 2, "only net.* keys"),
        (["up", "--sysctl", "nonsense"], 2, "expected HOST:KEY=VALUE"),
        (["exec", "client", "--", "true"], 1, "is not up"),
    ],
)
def test_cli_errors_are_one_line_with_exit_codes(
    unique_prefix: str, args: list[str], code: int, message: str
) -> None:
    res = tcpscapy("lab", args[0], "--prefix", unique_prefix, *args[1:])
    assert res.returncode == code
    assert len(res.stderr.splitlines()) == 1 and message in res.stderr
    assert lab_namespaces(unique_prefix) == []


def test_cli_bad_prefix_is_a_usage_error() -> None:
    res = tcpscapy("lab", "status", "--prefix", "a/b")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "bad lab prefix" in res.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["up"], ["down"], ["exec", "client", "--", "true"]]
)
def test_cli_without_root_exits_4(unique_prefix: str, command: list[str]) -> None:
    res = tcpscapy("lab", command[0], "--prefix", unique_prefix, *command[1:], unprivileged=True)
    assert res.returncode == 4
    assert res.stderr == (f"tcpscapy lab {command[0]}: the lab needs root: "
                          "network namespaces require CAP_SYS_ADMIN\n")
    assert lab_namespaces(unique_prefix) == []
