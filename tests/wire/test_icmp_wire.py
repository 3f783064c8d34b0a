"""ICMP and links without a link layer, on the wire (the flat lab plus a TUN pair).

- connect and listen over TUN devices (bare IP packets, no ARP), joined by
  `python -m tcpscapy.tun`, against kernel peers;
- a firewall's ICMP reject to our SYN ends `tcpscapy connect` with exit 10;
- a spoofed "fragmentation needed" from the attacker host, quoting our flow but
  a sequence number outside the window, changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    CLIENT,
    SERVER,
    finish,
    json_objects,
    kernel_server,
    read_until,
    segments,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "ic"
TUN_CLIENT, TUN_SERVER = "10.79.0.1", "10.79.0.2"

KERNEL_COUNT = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
total = 0
while data := conn.recv(65536):
    total += len(data)
conn.sendall(b"got %d" % total)
conn.close()
"""

KERNEL_CLIENT = r"""
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
print(got == data, len(got))
"""


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    finish(lab)


@pytest.fixture
def tun(net: Lab) -> Iterator[Lab]:
    """tun0 in client (10.79.0.1) and server (10.79.0.2), joined by a relay."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "tcpscapy.tun", net.ns("client"), TUN_CLIENT, net.ns("server"),
         TUN_SERVER, "--lifetime", "300"], stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        yield net
    finally:
        relay.terminate()
        relay.wait(timeout=10)


def test_connect_over_a_tun_link(tun: Lab) -> None:
    proc = tun.popen("server", [sys.executable, "-c", KERNEL_COUNT, TUN_SERVER],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    payload = os.urandom(500_000)
    result = tcpscapy_run(tun, "client", "connect", f"{TUN_SERVER}:{port}", "-q", input=payload)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"got %d" % len(payload)


def test_listen_over_a_tun_link(tun: Lab) -> None:
    port = 6100
    server = tcpscapy_popen(tun, "server", "listen", f"{TUN_SERVER}:{port}", "--once", "--echo")
    read_until(server.stderr, b"listening", timeout=30)
    got = tun.run("client", [sys.executable, "-c", KERNEL_CLIENT, TUN_SERVER, str(port),
                             "300000"], capture_output=True, text=True, timeout=60)
    assert got.stdout.split() == ["True", "300000"], got.stderr
    server.communicate(timeout=30)
    assert server.returncode == 0


@pytest.mark.parametrize(("reject", "words"), [
    ("icmp-port-unreachable", "port unreachable"),
    ("icmp-admin-prohibited", "communication administratively prohibited")])
def test_an_icmp_reject_ends_connect_with_exit_10(net: Lab, reject: str, words: str) -> None:
    port = 7300
    rule = ["-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", reject]
    assert net.run("server", ["iptables", "-A", "INPUT", *rule]).returncode == 0
    result = tcpscapy_run(net, "client", "connect", f"{SERVER}:{port}", "-q", "--send", "x",
                          timeout=30)
    assert result.returncode == 10, result.stderr
    assert result.stderr.decode().strip().endswith(
        f"connect to {SERVER}:{port}: connection failed: {words} from {SERVER}")


def test_a_spoofed_frag_needed_outside_the_window_changes_nothing(net: Lab) -> None:
    """The attacker knows our 4-tuple but not our sequence numbers (RFC 5927)."""
    port = kernel_server(net, "echo")
    sport = 47123
    client = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{port}", "--sport", str(sport),
                            "--json", stdin=subprocess.PIPE)
    time.sleep(1.0)  # established (the kernel server answers at once)
    spoof = f"""
from scapy.all import IP, ICMP, IPerror, TCPerror, send
for seq in range(0, 2**32, 2**28):  # 16 guesses spread over the sequence space
    send(IP(src="{SERVER}", dst="{CLIENT}") / ICMP(type=3, code=4, nexthopmtu=576) /
         IPerror(src="{CLIENT}", dst="{SERVER}", len=1500) /
         TCPerror(sport={sport}, dport={port}, seq=seq), verbose=0)
"""
    assert net.run("attacker", [sys.executable, "-c", spoof], timeout=60).returncode == 0
    payload = os.urandom(200_000)
    out, err = client.communicate(payload, timeout=60)
    assert client.returncode == 0, err[-2000:]
    assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()
    objs = json_objects(err)
    notes = [o["note"] for o in objs if o.get("note")]
    # Nothing was outstanding while they came: no guess can be in SND.UNA..SND.NXT.
    assert sum(n.endswith("dropped (icmp_out_of_window)") for n in notes) == 16, notes
    assert not any(n.startswith("MSS ") for n in notes), "the MSS never changed"
    assert max(s["len"] for s in segments(objs, "out")) == 1448  # 1460 less timestamps
