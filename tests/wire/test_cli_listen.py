"""`tcpscapy listen` as a user runs it, in the server host of a lab, with kernel clients.

The server is a subprocess (`ip netns exec ... python -m tcpscapy listen`);
clients are curl and python sockets in the client host. Checks: bytes the
clients get, the per-connection lines and the summary, exit codes, the
client kernel's counters, and that nothing is left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    SERVER,
    finish,
    json_objects,
    lab_processes,
    read_until,
    tcp_counters,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsg"
PORT = 8080

# Kernel clients: N threads, each sends its own bytes, half-closes, checks the echo.
CLIENTS = r"""
import os, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = []
def client(i):
    data = os.urandom(10000 + 97 * i)
    try:
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        ok.append(got == data)
    except OSError as exc:
        print(i, exc, file=sys.stderr)
threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(ok), n)
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


def start(lab: Lab, *args: str) -> subprocess.Popen[bytes]:
    """`tcpscapy listen ARGS` on the server host; returns once it listens."""
    proc = tcpscapy_popen(lab, "server", "listen", *args)
    assert proc.stderr is not None
    read_until(proc.stderr, b"listening")
    return proc


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the server; (exit code, everything it wrote to stderr after 'listening')."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err.decode()


def curl(lab: Lab, *args: str) -> subprocess.CompletedProcess[bytes]:
    return lab.run("client", ["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                   timeout=30)


# -- serving --------------------------------------------------------------------------


def test_file_is_fetched_byte_exact(net: Lab, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(400_000))
    server = start(net, f"{SERVER}:{PORT}", "--file", str(blob))
    before = tcp_counters(net, "client")
    # The server sends the file and closes; HTTP/0.9 is curl's name for "raw bytes".
    got = curl(net, "--http0.9", f"http://{SERVER}:{PORT}/")
    assert got.returncode == 0, got.stderr
    assert hashlib.sha256(got.stdout).digest() == hashlib.sha256(blob.read_bytes()).digest()
    code, err = stop(server)
    assert code == 143
    line = next(x for x in err.splitlines() if x.startswith("10.77.0.1:"))
    assert " out 400000 B " in line and "closed" in line
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]


def test_http_serves_files_to_curl(net: Lab, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "docs").mkdir(parents=True)
    page = b"<!doctype html><p>hello</p>\n"
    (site / "index.html").write_bytes(page)
    blob = os.urandom(300_000)
    (site / "docs" / "data.bin").write_bytes(blob)
    (tmp_path / "secret.txt").write_text("not for you")
    server = start(net, f"{SERVER}:{PORT}", "--http", str(site))
    url = f"http://{SERVER}:{PORT}"

    got = curl(net, f"{url}/docs/data.bin")
    assert got.returncode == 0 and got.stdout == blob
    head = curl(net, "-i", f"{url}/")
    assert head.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/html\r\n" in head.stdout
    assert head.stdout.endswith(b"\r\n\r\n" + page)
    codes = curl(net, "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                 "-w", "%{http_code} %{num_connects}\n", f"{url}/docs/data.bin",
                 f"{url}/missing", f"{url}/docs")
    # One connection for three requests (keep-alive); 404; a redirect adding the slash.
    assert codes.stdout.decode().split("\n")[:3] == ["200 1", "404 0", "301 0"]
    traversal = curl(net, "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                     f"{url}/../secret.txt")
    assert traversal.stdout == b"403"
    code, err = stop(server, signal.SIGINT)
    assert code == 130
    assert len([x for x in err.splitlines() if x.startswith("10.77.0.1:")]) == 4


def test_fifty_concurrent_clients_each_get_their_own_echo(net: Lab) -> None:
    server = start(net, f"{SERVER}:{PORT}", "--json")
    before = tcp_counters(net, "client")
    result = net.run("client", [sys.executable, "-c", CLIENTS, SERVER, str(PORT), "50"],
                     capture_output=True, text=True, timeout=90)
    assert result.stdout.split() == ["50", "50"], result.stderr
    assert tcp_counters(net, "client")["EstabResets"] == before["EstabResets"]
    code, err = stop(server)
    assert code == 143
    objs = [json.loads(line) for line in err.splitlines()]
    conns = [o for o in objs if o["type"] == "connection"]
    assert len(conns) == 50
    assert sorted(c["bytes_in"] for c in conns) == [10000 + 97 * i for i in range(50)]
    assert all(c["bytes_in"] == c["bytes_out"] for c in conns)
    summary = next(o for o in objs if o["type"] == "summary")
    assert summary["connections"] == 50 and summary["counters"]["syns_received"] == 50
    assert objs[-1] == {"type": "error", "exit": 143, "message": "stopped by SIGTERM"}


def test_once_serves_one_connection_and_exits(net: Lab) -> None:
    server = start(net, f"{SERVER}:{PORT}", "--once", "-v", "--syncookies", "always")
    result = net.run("client", [sys.executable, "-c", CLIENTS, SERVER, str(PORT), "1"],
                     capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["1", "1"], result.stderr
    _, err = server.communicate(timeout=15)
    assert server.returncode == 0
    text = err.decode()
    # -v: the ladder, which starts at the cookie's ACK: the SYN and SYN-ACK left no state.
    first = next(line for line in text.splitlines() if "◀" in line or "▶" in line)
    assert "◀" in first and " A seq=0 ack=0 " in first
    assert "SYN-RECEIVED → ESTABLISHED" in text and "LAST-ACK → CLOSED" in text
    assert "cookies_sent=1 " in text and "cookies_validated=1 " in text
    assert server.pid not in lab_processes(net)


def test_max_conns_makes_the_next_client_wait(net: Lab) -> None:
    server = start(net, f"{SERVER}:{PORT}", "--max-conns", "1")
    with net.enter("client"):
        first = socket.create_connection((SERVER, PORT), timeout=5)
        second = socket.create_connection((SERVER, PORT), timeout=5)  # handshake: backlog
    with first, second:
        first.sendall(b"one")
        assert first.recv(100) == b"one"
        second.sendall(b"two")
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(100)  # not served while the first is
        first.shutdown(socket.SHUT_WR)
        assert first.recv(100) == b""
        second.settimeout(5)
        assert second.recv(100) == b"two"
    code, _ = stop(server)
    assert code == 143


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_resets_open_connections_and_leaves_nothing(net: Lab, signum: int,
                                                             code: int) -> None:
    server = start(net, str(PORT), "--pcap", "/dev/null")
    with net.enter("client"):
        client = socket.create_connection((SERVER, PORT), timeout=5)
    with client:
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
        status, err = stop(server, signum)
        with pytest.raises(ConnectionResetError):
            client.recv(100)
    assert status == code
    lines = err.splitlines()
    assert any(x.startswith("10.77.0.1:") and x.endswith("reset by us: stopped")
               for x in lines), lines
    assert lines[-2].startswith("counters: syns_received=1 ")
    assert lines[-1] == f"tcpscapy listen: stopped by {signal.Signals(signum).name}"
    assert server.pid not in lab_processes(net)


def test_pcap_and_json_entries(net: Lab, tmp_path: Path) -> None:
    pcap = tmp_path / "server.pcap"
    server = start(net, f"{SERVER}:{PORT}", "--json", "-v", "--once", "--pcap", str(pcap),
                   "--no-timestamps")
    result = net.run("client", [sys.executable, "-c", CLIENTS, SERVER, str(PORT), "1"],
                     capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["1", "1"]
    _, err = server.communicate(timeout=15)
    objs = json_objects(err)
    entries = [o for o in objs if o["type"] in ("segment", "state")]
    assert {o["conn"] for o in entries} == {next(o["peer"] for o in objs
                                                 if o["type"] == "connection")}
    assert [o["flags"] for o in entries if o["type"] == "segment"][:3] == ["S", "SA", "A"]
    from scapy.all import rdpcap

    packets = rdpcap(str(pcap))
    assert len(packets) == len([o for o in entries if o["type"] == "segment"])
    ours = [o for o in entries if o["type"] == "segment" and o["dir"] == "out"]
    assert ours and all("timestamps" not in o["options"] for o in ours)  # --no-timestamps


# -- failing --------------------------------------------------------------------------


def test_port_in_use_gives_exit_9(net: Lab) -> None:
    with net.enter("server"):
        holder = socket.create_server((SERVER, 0))
    with holder:
        port = holder.getsockname()[1]
        result = tcpscapy_run(net, "server", "listen", f"{SERVER}:{port}")
    assert result.returncode == 9
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpscapy listen: ") and "in use" in lines[0]


def test_listen_then_a_client_of_our_own(net: Lab) -> None:
    """Both ends on tcpscapy: connect in the client host, listen --echo in the server host."""
    server = start(net, f"{SERVER}:{PORT}")
    payload = os.urandom(100_000)
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{PORT}", "-q", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    code, err = stop(server)
    assert code == 143
    assert "in 100000 B  out 100000 B" in err


# A kernel client using TCP Fast Open: the first connection fetches a cookie, the second
# carries its data in the SYN.
TFO_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for i in range(2):
    with socket.socket() as s:
        s.sendto(b"fast %d" % i, socket.MSG_FASTOPEN, (host, port))  # blocking: connects
        s.settimeout(10)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
        print(got.decode())
"""


def test_tfo_accepts_data_in_the_syn(net: Lab) -> None:
    net.sysctl("client", "net.ipv4.tcp_fastopen", "1")
    server = start(net, f"{SERVER}:{PORT}", "--tfo", "--json")
    result = net.run("client", [sys.executable, "-c", TFO_CLIENT, SERVER, str(PORT)],
                     capture_output=True, text=True, timeout=30)
    assert result.stdout.split("\n")[:2] == ["fast 0", "fast 1"], result.stderr
    code, err = stop(server)
    assert code == 143
    summary = next(o for o in map(json.loads, err.splitlines()) if o["type"] == "summary")
    assert summary["counters"]["tfo_cookie_requests"] == 1
    assert summary["counters"]["tfo_passive"] == 1
