"""`tcpscapy connect` as a user runs it, in the client host of a lab, against kernel peers.

Each run is a subprocess (`ip netns exec ... python -m tcpscapy connect`); the
kernel peers run in the server host. Checks: bytes on stdout, the --json
record, exit codes and messages, the kernel side's counters, and that nothing
(guard rule, process) is left behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpscapy
from tcpscapy import errors
from tcpscapy.core.segment import RST, SYN
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    CLIENT,
    SERVER,
    assert_clean,
    finish,
    json_objects,
    kernel_server,
    lab_processes,
    read_until,
    segments,
    states,
    tcp_counters,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsg"
HTTP_PORT = 8080


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


def http_server(lab: Lab, site: Path) -> None:
    """python3 -m http.server on the server host, serving `site`; returns once it listens."""
    lab.popen("server", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", SERVER,
                         "--directory", str(site)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not lab.run("server", ["ss", "-Hltn", f"sport = :{HTTP_PORT}"], capture_output=True,
                      text=True).stdout.strip():
        assert time.monotonic() < deadline, "http.server did not start"
        time.sleep(0.05)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- talking to kernel servers --------------------------------------------------------


def test_http_get_response_is_on_stdout_byte_for_byte(net: Lab, tmp_path: Path) -> None:
    body = os.urandom(150_000)  # many segments
    (tmp_path / "blob.bin").write_bytes(body)
    http_server(net, tmp_path)
    pcap = tmp_path / "get.pcap"
    request = r"GET /blob.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{HTTP_PORT}", "--pcap", str(pcap),
                          "--send", request)
    assert result.returncode == 0, result.stderr
    head, _, got = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert got == body
    ladder = result.stderr.decode()
    assert f"{CLIENT}:" in ladder and f"{SERVER}:{HTTP_PORT}" in ladder
    assert " S seq=0 " in ladder and " SA seq=0 ack=1 " in ladder  # relative seq/ack
    assert "SYN-SENT → ESTABLISHED" in ladder and "TIME-WAIT" in ladder
    assert "handshake RTT" in ladder
    from scapy.all import rdpcap

    packets = rdpcap(str(pcap))
    flags = [str(p["TCP"].flags) for p in packets]
    assert flags[:2] == ["S", "SA"] and sum("F" in f for f in flags) == 2
    assert sum(len(p["TCP"].payload) for p in packets if p["IP"].src == SERVER) > len(body)


def test_options_follow_the_kernels_synack(net: Lab) -> None:
    port = kernel_server(net)
    default = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--json",
                           "--send", "hi")
    assert default.returncode == 0, default.stderr
    objs = json_objects(default.stderr)
    syn, synack = segments(objs, "out")[0], segments(objs, "in")[0]
    assert (syn["flags"], synack["flags"]) == ("S", "SA")
    assert set(syn["options"]) == {"mss", "wscale", "sack_permitted", "timestamps"}
    assert set(synack["options"]) == {"mss", "wscale", "sack_permitted", "timestamps"}
    assert synack["options"]["timestamps"][1] == syn["options"]["timestamps"][0]
    # Every later segment of ours carries timestamps, as negotiated.
    assert all("timestamps" in s["options"] for s in segments(objs, "out")[1:])
    assert objs[-1]["type"] == "summary" and objs[-1]["exit"] == 0
    assert objs[-1]["handshake_rtt"] > 0

    lean = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--json", "--no-sack",
                        "--no-timestamps", "--wscale", "off", "--mss", "1000",
                        input=os.urandom(20_000))
    assert lean.returncode == 0, lean.stderr
    objs = json_objects(lean.stderr)
    syn, synack = segments(objs, "out")[0], segments(objs, "in")[0]
    assert syn["options"] == {"mss": 1000}
    assert set(synack["options"]) == {"mss"}  # the kernel leaves out what we left out
    assert max(s["len"] for s in segments(objs, "in")) == 1000  # and honours our MSS
    assert len(lean.stdout) == 20_000


def test_a_megabyte_through_stdin_comes_back_intact(net: Lab) -> None:
    port = kernel_server(net)
    payload = os.urandom(1 << 20)
    before = tcp_counters(net, "server")
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "-q", input=payload)
    assert (result.returncode, result.stderr) == (0, b"")
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


def test_active_close_is_clean_on_the_kernel_side(net: Lab) -> None:
    port = kernel_server(net)
    before = tcp_counters(net, "server")
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--json",
                          input=b"ping" * 5000)
    assert result.returncode == 0 and result.stdout == b"ping" * 5000
    objs = json_objects(result.stderr)
    seen = states(objs)
    assert seen.index("FIN-WAIT-1") < seen.index("FIN-WAIT-2") < seen.index("TIME-WAIT")
    assert not any("R" in s["flags"] for s in segments(objs, "out"))
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


def test_half_close_keeps_receiving_after_our_fin(net: Lab) -> None:
    port = kernel_server(net, "count")
    before = tcp_counters(net, "server")
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--json",
                          input=b"x" * 50_000)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got 50000"  # the answer came after our FIN
    objs = json_objects(result.stderr)
    ours = segments(objs, "out")
    fin_at = next(i for i, s in enumerate(ours) if "F" in s["flags"])
    assert "FIN-WAIT-2" in states(objs) and "TIME-WAIT" in states(objs)
    assert any(s["len"] for s in segments(objs, "in"))
    assert sum(s["len"] for s in ours[:fin_at + 1]) == 50_000
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


def test_passive_close_waits_for_stdin_then_closes_cleanly(net: Lab) -> None:
    port = kernel_server(net, "greet")
    before = tcp_counters(net, "server")
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{port}", "--json",
                          stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    read_until(proc.stderr, b'"new":"CLOSE-WAIT"')  # the peer closed its side
    time.sleep(0.2)
    assert proc.poll() is None  # netcat: our side is still open until stdin ends
    out, err = proc.communicate(timeout=10)  # closes stdin: EOF
    assert proc.returncode == 0 and out == b"hello"
    assert b'"new":"LAST-ACK"' in err and b'"new":"CLOSED"' in err
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


# -- failing ----------------------------------------------------------------------------


def test_closed_port_is_refused_with_exit_3(net: Lab) -> None:
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:9")
    assert result.returncode == 3
    lines = result.stderr.decode().splitlines()
    assert lines[-1] == f"tcpscapy connect: connection to {SERVER}:9 refused"
    assert any(" S seq=0 " in line for line in lines)  # the ladder shows SYN and RST
    assert any(" RA seq=0 ack=1 " in line for line in lines)
    quiet = tcpscapy_run(net, "client", "connect", f"{SERVER}:9", "-q")
    assert quiet.returncode == 3
    assert one_line(quiet.stderr) == f"tcpscapy connect: connection to {SERVER}:9 refused"


def test_silent_host_times_out_with_exit_5_after_the_retries(net: Lab) -> None:
    port = kernel_server(net)
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP",
            "-m", "comment", "--comment", f"{net.prefix}-test"]
    net.run("server", ["iptables", "-I", *rule], check=True)
    try:
        result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--retries", "2",
                              "--rto", "0.2", "--json")
    finally:
        net.run("server", ["iptables", "-D", *rule], check=True)
    assert result.returncode == 5
    objs = json_objects(result.stderr)
    syns = segments(objs)
    assert [s["flags"] for s in syns] == ["S", "S", "S"]  # 1 + 2 retransmissions
    assert objs[-1]["type"] == "error"
    assert "no answer to the SYN after 2 retransmissions" in objs[-1]["message"]
    # --rto 0.2 took effect: the first retransmission came after ~0.2 s, not the default
    # 1 s (the engine's own times: the process start-up, seconds under load, is not in it).
    # The trace stamps a segment as it goes out, a little after the timer was armed, so the
    # gap can read a hair under 0.2 s (0.19988 s seen under a CPU hog).
    assert 0.15 <= syns[1]["t"] - syns[0]["t"] < 1.0


def test_user_timeout_ends_a_connection_whose_peer_went_silent(net: Lab) -> None:
    port = kernel_server(net)
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "!", "--syn", "-j", "DROP",
            "-m", "comment", "--comment", f"{net.prefix}-test"]  # the handshake, then silence
    net.run("server", ["iptables", "-I", *rule], check=True)
    try:
        started = time.monotonic()
        result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--send", "hello",
                              "--rto", "0.2", "--user-timeout", "1.5", "--json")
        elapsed = time.monotonic() - started
    finally:
        net.run("server", ["iptables", "-D", *rule], check=True)
    assert result.returncode == 5
    objs = json_objects(result.stderr)
    assert objs[-1]["type"] == "error" and "user timeout" in objs[-1]["message"]
    assert 1.4 < elapsed < 10


def test_connect_timeout_option_gives_up_early(net: Lab) -> None:
    port = kernel_server(net)
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP",
            "-m", "comment", "--comment", f"{net.prefix}-test"]
    net.run("server", ["iptables", "-I", *rule], check=True)
    try:
        result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--timeout", "0.5",
                              "-q")
    finally:
        net.run("server", ["iptables", "-D", *rule], check=True)
    assert result.returncode == 5
    assert one_line(result.stderr) == \
        f"tcpscapy connect: connect to {SERVER}:{port} timed out after 0.5 s"


def test_a_reset_from_the_peer_gives_exit_6(net: Lab) -> None:
    port = kernel_server(net, "reset")
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{port}", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"provoke", timeout=10)  # stdin EOF may race the RST: fine
    assert proc.returncode == 6
    lines = err.decode().splitlines()
    assert lines[-1].startswith("tcpscapy connect: ") and "reset by the peer" in lines[-1]
    assert any("◀" in line and " R" in line for line in lines)  # the peer's RST


@pytest.mark.parametrize(("target", "code", "message"), [
    ("no-such-host.invalid:80", 7, "cannot resolve 'no-such-host.invalid'"),
    ("192.0.2.1:80", 8, "no route to 192.0.2.1"),  # the lab has no default route
    ("10.77.0.9:80", 8, "no ARP reply"),  # on the link, but nobody there
])
def test_unknown_and_unreachable_hosts(net: Lab, target: str, code: int, message: str) -> None:
    result = tcpscapy_run(net, "client", "connect", target, "-q")
    assert result.returncode == code
    line = one_line(result.stderr)
    assert line.startswith("tcpscapy connect: ") and message in line


def test_local_port_in_use_gives_exit_9(net: Lab) -> None:
    port = kernel_server(net)
    held = kernel_server(net, host="client")  # a kernel listener holds this client port
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "--sport", str(held),
                          "-q")
    assert result.returncode == 9
    assert "in use" in one_line(result.stderr)


# -- stopping -------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_resets_the_connection_and_leaves_nothing(net: Lab, signum: int,
                                                            code: int) -> None:
    port = kernel_server(net)
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{port}", stdin=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdin is not None
    read_until(proc.stderr, "→ ESTABLISHED".encode())
    proc.stdin.write(b"still here\n")
    proc.stdin.flush()
    assert proc.stdout is not None
    read_until(proc.stdout, b"still here\n")
    proc.send_signal(signum)
    proc.wait(timeout=10)  # stdin stays open: the signal, not EOF, ends it
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == code
    lines = err.decode().splitlines()
    name = signal.Signals(signum).name
    assert lines[-1] == f"tcpscapy connect: stopped by {name} (connection reset)"
    assert any(" R seq=" in line for line in lines), lines  # our RST, in the ladder
    assert proc.pid not in lab_processes(net)
    assert_clean(net)


# -- the API pieces the CLI is built on -----------------------------------------------


def test_on_record_sees_everything_and_a_failed_connect_carries_its_trace(net: Lab) -> None:
    seen: list[tcpscapy.trace.TraceEntry] = []
    try:
        with net.enter("client"), pytest.raises(errors.ConnectionRefused) as info:
            tcpscapy.connect(SERVER, 9, timeout=5, on_record=seen.append)
        trace = info.value.trace  # type: ignore[attr-defined]
        flags = [s.flags for s in trace.segments()]
        assert flags[0] == SYN and flags[-1] & RST
        assert [(e.direction, e.segment, e.state_change) for e in seen] == \
            [(e.direction, e.segment, e.state_change) for e in trace]
    finally:
        close_all(linger=0.5)
