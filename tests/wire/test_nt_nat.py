"""NAT both ways: tcpscapy behind and in front of the routed lab's MASQUERADE.

The router rewrites the client's 10.78.1.2 to its own 10.78.2.1 toward the
server (and maybe the port). So: a kernel server sees the router as the peer of
`tcpscapy connect`; `tcpscapy listen` reports the router as its client's
address; and "fragmentation needed" still reaches tcpscapy through the NAT,
whichever side it is on. When tcpscapy listens behind the server side, the
ICMP quotes the packet as the router saw it after undoing the NAT (to
10.78.1.2); only because the router translates the quoted header back (to
10.78.2.1) does it match the listener's connection. Byte-exact by SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tcpscapy.routed import RoutedLab
from tests.wire.cli_helpers import finish, json_objects, read_until, tcpscapy_popen, tcpscapy_run

pytestmark = pytest.mark.wire
LAB_PREFIX = "nt"
SIZE = 1_500_000
MTU = 1280

# A kernel sink: prints its port, then the peer it accepted ("ADDR PORT"), then
# answers "N SHA256" for what it read until EOF.
SINK = r"""
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, peer = srv.accept()
print(*peer, flush=True)
digest, total = hashlib.sha256(), 0
while data := conn.recv(1 << 20):
    digest.update(data)
    total += len(data)
conn.sendall(b"%d %s" % (total, digest.hexdigest().encode()))
conn.close()
"""


@contextmanager
def nat_lab(prefix: str, **mtus: int) -> Iterator[RoutedLab]:
    lab = RoutedLab(prefix, nat=True, **mtus)
    try:
        lab.up()
        yield lab
        finish(lab)
    finally:
        lab.down()


def sink(lab: RoutedLab) -> tuple[subprocess.Popen[str], int]:
    proc = lab.popen("server", [sys.executable, "-c", SINK, lab.addr("server")],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def upload(lab: RoutedLab, *options: str) -> tuple[list[dict[str, Any]], str]:
    """`tcpscapy connect --json` sends SIZE random bytes into the sink, byte-exact;
    returns its JSON objects and the peer ("ADDR PORT") the sink saw."""
    proc, port = sink(lab)
    payload = os.urandom(SIZE)
    result = tcpscapy_run(lab, "client", "connect", f"{lab.addr('server')}:{port}", "--json",
                          *options, input=payload, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == b"%d %s" % (SIZE, hashlib.sha256(payload).hexdigest().encode())
    assert proc.stdout is not None
    return json_objects(result.stderr), proc.stdout.readline().strip()


def download(lab: RoutedLab, tmp_path: Path) -> list[dict[str, Any]]:
    """curl on the client fetches SIZE random bytes from `tcpscapy listen --http --json -v`
    on the server, byte-exact; returns the listener's JSON objects."""
    body = os.urandom(SIZE)
    (tmp_path / "blob").write_bytes(body)
    server, port = lab.addr("server"), 8080
    listener = tcpscapy_popen(lab, "server", "listen", f"{server}:{port}", "--http",
                              str(tmp_path), "--once", "--json", "-v")
    head = read_until(listener.stderr, b'"listening"', timeout=30)
    out = tmp_path / "got"
    curl = lab.run("client", ["curl", "-sS", "--max-time", "60", "-o", str(out),
                              f"http://{server}:{port}/blob"],
                   capture_output=True, text=True, timeout=90)
    assert curl.returncode == 0, curl.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()
    _, err = listener.communicate(timeout=30)
    assert listener.returncode == 0, err[-2000:]
    return json_objects(head + err)


def of_type(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("type") == kind]


def notes(objs: list[dict[str, Any]], start: str) -> list[str]:
    return [str(o["note"]) for o in objs if str(o.get("note", "")).startswith(start)]


def test_connect_uploads_through_nat_and_the_server_sees_the_router(
        unique_prefix: str) -> None:
    with nat_lab(unique_prefix) as lab:
        objs, peer = upload(lab)
    router = lab.gateway("server")
    assert peer.split()[0] == router, f"the server saw {peer}, not the router {router}"
    assert of_type(objs, "summary")[-1]["exit"] == 0


def test_curl_downloads_from_listen_through_nat_and_listen_names_the_router(
        unique_prefix: str, tmp_path: Path) -> None:
    with nat_lab(unique_prefix) as lab:
        objs = download(lab, tmp_path)
    router = lab.gateway("server")
    [conn] = of_type(objs, "connection")
    assert conn["peer"].split(":")[0] == router, conn
    assert conn["bytes_out"] > SIZE  # the body and the HTTP header
    assert {o["conn"].split(":")[0] for o in objs if "conn" in o} == {router}


def test_frag_needed_from_beyond_the_nat_lowers_connects_mss(unique_prefix: str) -> None:
    """The server-side link takes 1280: the router's ICMP goes back to the client."""
    with nat_lab(unique_prefix, mtu_server_side=MTU) as lab:
        objs, peer = upload(lab)
    assert peer.split()[0] == lab.gateway("server")
    icmp = notes(objs, "ICMP fragmentation needed")
    assert icmp and icmp[0] == f"ICMP fragmentation needed from {lab.gateway('client')} (mtu {MTU})"
    assert notes(objs, "MSS ")[:1] == [f"MSS 1460 -> {MTU - 40}: path MTU {MTU} (ICMP)"]
    assert of_type(objs, "summary")[-1]["icmp"]["icmp_accepted"] >= 1


def test_frag_needed_for_the_translated_flow_reaches_listen(
        unique_prefix: str, tmp_path: Path) -> None:
    """The client-side link takes 1280: the ICMP to the listener quotes its reply to the
    router's address only because the router translated the quoted header."""
    with nat_lab(unique_prefix, mtu_client_side=MTU) as lab:
        objs = download(lab, tmp_path)
    router = lab.gateway("server")
    assert of_type(objs, "connection")[0]["peer"].split(":")[0] == router
    icmp = notes(objs, "ICMP fragmentation needed")
    assert icmp and icmp[0] == f"ICMP fragmentation needed from {router} (mtu {MTU})"
    assert notes(objs, "MSS ")[:1] == [f"MSS 1460 -> {MTU - 40}: path MTU {MTU} (ICMP)"]
    counters = of_type(objs, "summary")[-1]["counters"]
    assert counters["icmp_accepted"] >= 1
    assert counters.get("icmp_no_connection", 0) == counters.get("icmp_out_of_window", 0) == 0
