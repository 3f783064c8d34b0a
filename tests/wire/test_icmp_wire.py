"""Links without a link layer on the wire: connect and listen over TUN devices (bare IP
packets, no ARP) in the flat lab's client and server, joined by `python -m tcpscapy.tun`,
against kernel peers. (ICMP on the wire: test_icmp_routed.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    finish,
    read_until,
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
