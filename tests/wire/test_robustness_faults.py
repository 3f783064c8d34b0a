"""Faults on the wire and in the process, against kernel peers in a lab.

Wire faults are made on the lab's switch: its bridge runs iptables (br_netfilter,
per namespace), so `iptables -A FORWARD -s HOST -m statistic --mode random
--probability P -j DROP` loses P of what HOST sends, whoever the endpoints are.
(An INPUT rule in the client host would not do: tcpscapy reads with AF_PACKET,
which sees a frame before netfilter's INPUT hook does.)

- 10 % and 30 % loss in both directions: handshakes complete, and 5 MB go to a
  kernel echo server and come back byte for byte, with short RTOs on both ends;
- a peer that vanishes mid-transfer (everything from it dropped) ends the
  connection after the user timeout, with TimedOut and a reason, not a hang;
- a kernel server killed and restarted on the same port answers our next data
  with RST, and `tcpscapy connect` reports the reset (exit code 6);
- SIGKILL of `tcpscapy connect` leaves a stale guard rule that fails open (the
  kernel's RST still goes out, new connections work), removed by the next run
  or by `tcpscapy guard cleanup`;
- SIGINT/SIGTERM in the middle of a transfer reset the connection (the kernel
  peer sees ECONNRESET), remove the rules, and exit with 130/143 as `--help` says.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tcpscapy
from tcpscapy import errors, netns
from tcpscapy.cli import main
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    CLIENT,
    SERVER,
    assert_clean,
    finish,
    guard_rules,
    json_objects,
    kernel_server,
    lab_processes,
    read_until,
    segments,
    tcp_counters,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsm"
PORT = 7000
BIG = 5_000_000
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"

# A kernel peer on a fixed port (so it can be restarted there). Per connection:
#   echo  echo until EOF;  tick  send b"tick\n" every 50 ms;  sink  read and drop.
# It prints "ready", then one line per connection: "eof", or "reset" if the peer reset it.
PEER = r"""
import socket, sys, threading, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.create_server((host, port))
print("ready", flush=True)
def serve(c):
    with c:
        try:
            if mode == "tick":
                for _ in range(2000):
                    c.sendall(b"tick\n")
                    time.sleep(0.05)
            while data := c.recv(65536):
                if mode == "echo":
                    c.sendall(data)
            print("eof", flush=True)
        except ConnectionError:
            print("reset", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def start_peer(lab: Lab, mode: str, port: int = PORT) -> subprocess.Popen[str]:
    proc = lab.popen("server", [sys.executable, "-c", PEER, SERVER, str(port), mode],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def line_within(proc: subprocess.Popen[str], seconds: float) -> str:
    """The peer's next output line (its stdout), waiting at most `seconds`."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"the kernel peer said nothing within {seconds} s"
    return proc.stdout.readline().strip()


def switch_iptables(lab: Lab, *args: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", lab.switch_ns, "iptables", "-w", "5", *args],
                          capture_output=True, text=True, check=True, timeout=20)
    return done.stdout


def bridge_filters(lab: Lab) -> None:
    """Let the lab's switch run iptables on bridged IPv4 (it is per namespace)."""
    with netns.enter(lab.switch_ns):
        Path(BRIDGE_NF).write_text("1\n")


def tcp_ext(lab: Lab, host: str) -> dict[str, int]:
    """The TcpExt: counters of /proc/net/netstat in `host`'s namespace."""
    text = lab.run(host, ["cat", "/proc/net/netstat"], capture_output=True, text=True,
                   check=True).stdout
    names, values = [line.split()[1:] for line in text.splitlines() if line.startswith("TcpExt:")]
    return dict(zip(names, map(int, values), strict=True))


def stall_report(lab: Lab, conn: tcpscapy.Connection, received: int) -> str:
    """What both ends looked like when the echo stopped coming back."""
    engine = conn.engine
    last_in = [f"{s.seq}:{len(s.payload)}/{s.flags:#x}" for s in conn.trace.segments("in")[-8:]]
    kernel = lab.run("server", ["ss", "-tinoe", "state", "all", f"sport = :{PORT}"],
                     capture_output=True, text=True).stdout
    return (f"the echo stalled after {received} bytes; ours: rcv_nxt={engine.rcv_nxt} "
            f"rcv_adv={engine.rcv_adv} buffered out of order={engine._reassembly.buffered} "
            f"last in: {last_in}; the server's kernel gave up on "
            f"{tcp_ext(lab, 'server')['TCPAbortOnTimeout']} connections; ss:\n{kernel}")


def dropped(lab: Lab) -> dict[str, int]:
    """Packets each DROP rule of the switch's FORWARD chain dropped, by source address."""
    counts: dict[str, int] = {}
    for line in switch_iptables(lab, "-L", "FORWARD", "-v", "-x", "-n").splitlines()[2:]:
        words = line.split()
        counts[words[7]] = counts.get(words[7], 0) + int(words[0])
    return counts


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    try:
        yield lab
    finally:
        close_all(linger=0.5)
    finish(lab)


# -- loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.10, 0.30])
def test_handshakes_and_5mb_both_ways_survive_random_loss(net: Lab, loss: float) -> None:
    bridge_filters(net)
    for host in ("client", "server"):  # both directions
        switch_iptables(net, "-A", "FORWARD", "-s", net.addr(host), "-m", "statistic",
                        "--mode", "random", "--probability", str(loss), "-j", "DROP")
    # The kernel's RTO floor is 200 ms and its ceiling 120 s; this lab's links are fast, so
    # let both ends retransmit sooner, and cap the back-off: at 30 % loss a segment and its
    # ACK fail together half the time, and ten failures in a row would otherwise mean a
    # minute of silence.
    net.run("server", ["ip", "route", "replace", "10.77.0.0/24", "dev", "eth0", "rto_min", "5ms"],
            check=True)
    net.sysctl("server", "net.ipv4.tcp_rto_max_ms", "1000")
    # Since Linux 6.15 the kernel measures tcp_retries2 in units of rto_max: with a 1 s ceiling
    # the default 15 means it gives up after ~14 s of one recovery episode (tcp_model_timeout),
    # which sustained 30 % loss can outlast; the echo then stops without a word (seen in CI).
    net.sysctl("server", "net.ipv4.tcp_retries2", "100")
    start_peer(net, "echo")
    port = PORT
    options = {"rto": 0.05, "rto_min": 0.01, "rto_max": 1.0, "retries": 30, "data_retries": 60}
    started = time.monotonic()
    syns = []
    # Each handshake from its own port: an aborted 4-tuple whose RST was lost is still
    # open on the kernel's side (see test_reconnect_after_a_lost_rst below).
    sports = iter(range(41000, 41100))
    with net.enter("client"):
        for _ in range(20):  # a lost SYN or SYN-ACK is retransmitted until it gets through
            conn = tcpscapy.connect(SERVER, port, timeout=20, sport=next(sports), **options)
            syns.append(sum(1 for s in conn.trace.segments("out") if s.flags == 0x02))
            conn.abort()
        conn = tcpscapy.connect(SERVER, port, timeout=20, sport=next(sports), **options)
    handshakes = time.monotonic() - started

    data = os.urandom(BIG)
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            conn.sendall(data, timeout=120)
            conn.shutdown()
        except BaseException as exc:
            failure.append(exc)

    started = time.monotonic()
    sender = threading.Thread(target=upload)
    sender.start()
    got = bytearray()
    try:
        while chunk := conn.recv(timeout=60):
            got += chunk
    except errors.TimedOut as exc:
        raise AssertionError(stall_report(net, conn, len(got))) from exc
    sender.join(timeout=60)
    took = time.monotonic() - started
    assert not failure, failure
    assert len(got) == BIG and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    lost = dropped(net)
    assert lost[CLIENT] > 100 and lost[SERVER] > 100  # real loss, both ways
    assert conn.engine.retransmissions > 0 and max(syns) > 1
    conn.close()
    print(f"\n  {loss:.0%} loss: 20 handshakes in {handshakes:.2f} s (up to {max(syns)} SYNs), "
          f"5 MB each way in {took:.1f} s; dropped {lost}, "
          f"{conn.engine.retransmissions} retransmissions of ours")


def test_reconnect_after_a_lost_rst(net: Lab) -> None:
    """abort() sends one RST; if it is lost (here: a middlebox drops our RSTs), the kernel
    still holds the connection. The next connect() to that server must not reuse that
    source port (its SYNs would hit the old connection and get only challenge ACKs): the
    driver passes over a warm port whose last connection to this peer ended in a reset,
    as Linux's connect() picks another port (RFC 6056)."""
    bridge_filters(net)
    switch_iptables(net, "-A", "FORWARD", "-s", CLIENT, "-p", "tcp", "--tcp-flags", "RST",
                    "RST", "-j", "DROP")
    port = kernel_server(net, "echo")
    with net.enter("client"):
        tcpscapy.connect(SERVER, port, timeout=5).abort()
        again = tcpscapy.connect(SERVER, port, timeout=3)
    again.sendall(b"ping")
    assert again.recv(timeout=5) == b"ping"


# -- a peer that vanishes ----------------------------------------------------------------


def test_a_vanished_peer_ends_the_connection_after_the_user_timeout(net: Lab) -> None:
    bridge_filters(net)
    port = kernel_server(net, "echo")
    user_timeout = 2.0
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=10, user_timeout=user_timeout, rto=0.2)
    conn.sendall(b"x" * 100_000)
    drain = threading.Thread(target=read_until_gone, args=(conn,), daemon=True)
    drain.start()
    switch_iptables(net, "-A", "FORWARD", "-s", SERVER, "-j", "DROP")  # the server is gone
    gone = time.monotonic()
    with pytest.raises(errors.TimedOut) as info:
        for _ in range(10_000):  # bounded: the send buffer fills within a few calls
            conn.sendall(os.urandom(65536), timeout=user_timeout * 4)
    elapsed = time.monotonic() - gone
    assert "user timeout" in str(info.value) and f"{user_timeout:g} s" in str(info.value)
    assert conn.close_reason.startswith("user timeout")
    assert str(conn.state) == "CLOSED"
    assert user_timeout - 0.5 <= elapsed < user_timeout + 2.0, elapsed
    drain.join(timeout=5)
    assert not drain.is_alive()


def read_until_gone(conn: tcpscapy.Connection) -> None:
    """Keep reading the echo until the connection ends (the test checks how)."""
    try:
        while conn.recv(timeout=30):
            pass
    except errors.TcpscapyError:
        pass


# -- a kernel server killed and restarted -------------------------------------------------


def wait_for_ack_of_echo(stderr: Any, timeout: float = 20.0) -> bytes:
    """Read a --json run's stderr until an outgoing segment acknowledges the last
    4-byte segment that came in; return everything read."""
    got = b""
    deadline = time.monotonic() + timeout
    while True:
        got += read_until(stderr, b"\n", timeout=max(0.1, deadline - time.monotonic()))
        whole = got[: got.rfind(b"\n") + 1]
        objs = json_objects(whole)
        echoes = [s for s in segments(objs, "in") if s["len"] == 4]
        if echoes and any(s["ack"] == echoes[-1]["seq"] + 4 for s in segments(objs, "out")):
            return got  # a partial last line is continued by what is read later


def test_a_restarted_kernel_server_resets_us_and_connect_exits_6(net: Lab) -> None:
    old = start_peer(net, "echo")
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{PORT}", "--json",
                          stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"one\n")
    proc.stdin.flush()
    read_until(proc.stdout, b"one\n")
    # Our (delayed) ACK of the echo must be out before the server goes: sent later, it
    # would meet the restarted server first and draw the RST meant for "two".
    early = wait_for_ack_of_echo(proc.stderr)

    # The server host dies silently: nothing it sends while going down reaches us
    # (no FIN, no RST), and the socket is gone for good (ss -K), as after a reboot.
    silence = ["OUTPUT", "-p", "tcp", "--sport", str(PORT), "-j", "DROP"]
    net.run("server", ["iptables", "-w", "5", "-I", *silence], check=True)
    try:
        old.kill()
        old.wait(timeout=5)
        net.run("server", ["ss", "-K", "-tn", "sport", "=", f":{PORT}"], capture_output=True,
                check=True)
    finally:
        net.run("server", ["iptables", "-w", "5", "-D", *silence], check=True)
    states = net.run("server", ["ss", "-Htan", "sport", "=", f":{PORT}"], capture_output=True,
                     text=True, check=True).stdout
    assert states.strip() == "", states  # nothing left of the old connection
    new = start_peer(net, "echo")  # the restarted server, same port

    proc.stdin.write(b"two\n")  # our next segment
    proc.stdin.flush()
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 6, err
    assert out == b""  # "one" was read above; "two" never came back
    objs = json_objects(early + err)
    two = [s for s in segments(objs, "out") if s["len"] == 4][-1]  # b"two\n"
    answer = segments(objs, "in")[-1]
    assert answer["flags"] == "R" and answer["seq"] == two["ack"]  # the RST answers it
    assert objs[-1]["type"] == "error" and "reset by the peer" in objs[-1]["message"]

    again = tcpscapy_run(net, "client", "connect", f"{SERVER}:{PORT}", "-q", input=b"three")
    assert (again.returncode, again.stdout) == (0, b"three")  # the new server works
    assert new.poll() is None


# -- SIGKILL: the rule fails open and is cleaned up ------------------------------------------


@pytest.mark.parametrize("cleaner", ["next-run", "guard-cleanup"])
def test_sigkill_fails_open_and_the_stale_rule_goes(net: Lab, cleaner: str) -> None:
    peer = start_peer(net, "tick")
    sport = 46000
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{PORT}", "--sport", str(sport),
                          "-q", stdin=subprocess.PIPE)
    assert proc.stdout is not None
    read_until(proc.stdout, b"tick\n")
    shown = tcpscapy_run(net, "client", "guard", "status").stdout.decode()
    assert f"pid={proc.pid} (alive)" in shown and f"sport={sport}" in shown
    resets_before = tcp_counters(net, "client")["OutRsts"]

    proc.kill()  # no handler runs: the rule stays behind
    proc.wait(timeout=5)
    shown = tcpscapy_run(net, "client", "guard", "status").stdout.decode()
    assert f"pid={proc.pid} (stale)" in shown
    # The peer's next tick reaches a port with no socket: the kernel's RST passes the
    # stale rule (--queue-bypass, nobody on the queue), and the peer learns at once.
    assert line_within(peer, 3.0) == "reset"
    assert tcp_counters(net, "client")["OutRsts"] > resets_before

    # New connections work while the stale rule is there, even from that very port.
    kernel = net.run("client", [sys.executable, "-c", KERNEL_CLIENT, SERVER, str(PORT),
                                str(sport)], capture_output=True, text=True, timeout=20)
    assert kernel.stdout.strip() == "tick", kernel.stderr
    assert guard_rules(net)  # still there

    if cleaner == "next-run":  # the next run removes stale rules as it starts
        ticks = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{PORT}", "-q",
                               stdin=subprocess.PIPE)
        assert ticks.stdout is not None
        read_until(ticks.stdout, b"tick\n")
        left = tcpscapy_run(net, "client", "guard", "status").stdout.decode()
        assert f"pid={proc.pid}" not in left and f"pid={ticks.pid} (alive)" in left
        ticks.terminate()
        assert ticks.wait(timeout=10) == 143
    else:
        cleaned = tcpscapy_run(net, "client", "guard", "cleanup")
        assert cleaned.returncode == 0
        assert f"pid={proc.pid}" in cleaned.stdout.decode() and b"removed" in cleaned.stdout
    assert_clean(net)


# A kernel client bound to a given source port: reads one line, then closes.
KERNEL_CLIENT = r"""
import socket, sys
s = socket.socket()
s.bind(("", int(sys.argv[3])))
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
print(s.makefile().readline().strip(), flush=True)
s.close()
"""


# -- SIGINT / SIGTERM mid-transfer ------------------------------------------------------------


def test_connect_help_documents_the_reset_and_the_codes() -> None:
    text = " ".join(CliRunner().invoke(main, ["connect", "--help"]).output.split())
    assert "SIGINT (Ctrl-C) or SIGTERM resets the connection (RST)" in text
    assert "exits with 130 or 143" in text


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_transfer_resets_removes_the_rules_and_exits_documented(
        net: Lab, signum: int, code: int) -> None:
    peer = start_peer(net, "sink")
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{PORT}", "-q",
                          stdin=subprocess.PIPE)
    assert proc.stdin is not None
    stdin = proc.stdin
    written = [0]

    def feed() -> None:  # stream until the process stops reading (bounded)
        try:
            for _ in range(2000):
                stdin.write(os.urandom(65536))
                stdin.flush()
                written[0] += 65536
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    deadline = time.monotonic() + 10
    while written[0] < 2_000_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert written[0] >= 2_000_000, "the transfer did not get going"
    assert guard_rules(net)  # the rule is in place while it runs
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == code
    _, err = proc.communicate(timeout=5)
    name = signal.Signals(signum).name
    assert err.decode().splitlines() == [f"tcpscapy connect: stopped by {name} (connection reset)"]
    assert line_within(peer, 3.0) == "reset"  # the peer forgot the connection at once
    assert proc.pid not in lab_processes(net)
    assert_clean(net)
    feeder.join(timeout=5)
