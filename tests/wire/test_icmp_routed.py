"""Path MTU through the routed lab: client — router — server, the router's links at MTU 1280.

The hosts keep MTU 1500 and offer MSS 1460; only the router knows its links
take 1280 bytes. With ICMP the router says "fragmentation needed (mtu 1280)";
with `drop_icmp` it says nothing (a black hole). Either way, byte-exact:
20 MB up from `tcpscapy connect` into a kernel sink, 5 MB down by curl from
`tcpscapy listen --http`. A spoofed "fragmentation needed" from the attacker
quoting a sequence number outside the window changes nothing, and the router's
firewall rejecting our SYN ends `connect` with exit 10.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpscapy.routed import RoutedLab
from tests.wire.cli_helpers import (
    finish,
    json_objects,
    read_until,
    segments,
    tcpscapy_popen,
    tcpscapy_run,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "ic"
MTU = 1280
UP, DOWN = 20_000_000, 5_000_000

SINK = r"""
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while data := conn.recv(1 << 20):
    digest.update(data)
    total += len(data)
conn.sendall(b"%d %s" % (total, digest.hexdigest().encode()))
conn.close()
"""


@pytest.fixture(params=["icmp", "black hole"])
def routed(request: pytest.FixtureRequest, unique_prefix: str) -> Iterator[RoutedLab]:
    lab = RoutedLab(unique_prefix, mtu_client_side=MTU, mtu_server_side=MTU,
                    drop_icmp=request.param == "black hole")
    try:
        lab.up()
        yield lab
        finish(lab)
    finally:
        lab.down()


def sink(lab: RoutedLab) -> int:
    proc = lab.popen("server", [sys.executable, "-c", SINK, lab.addr("server")],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def mss_notes(objs: list[dict[str, object]]) -> list[str]:
    return [str(o["note"]) for o in objs if str(o.get("note", "")).startswith("MSS ")]


def test_20_mb_up_through_mtu_1280(routed: RoutedLab) -> None:
    server = routed.addr("server")
    payload = os.urandom(UP)
    result = tcpscapy_run(routed, "client", "connect", f"{server}:{sink(routed)}", "-q",
                          input=payload, timeout=120)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == b"%d %s" % (UP, hashlib.sha256(payload).hexdigest().encode())


def test_the_ladder_tells_how_the_size_was_learnt(routed: RoutedLab) -> None:
    server = routed.addr("server")
    result = tcpscapy_run(routed, "client", "connect", f"{server}:{sink(routed)}", "--json",
                          input=os.urandom(200_000), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    objs = json_objects(result.stderr)
    notes = mss_notes(objs)
    if routed.drop_icmp:
        assert notes and "black hole?" in notes[0] and notes[0].startswith("MSS 1460 -> 1160")
    else:
        icmp = [o["note"] for o in objs if str(o.get("note", "")).startswith("ICMP ")]
        assert icmp and icmp[0] == (f"ICMP fragmentation needed from "
                                    f"{routed.gateway('client')} (mtu {MTU})")
        assert notes and notes[0].startswith(f"MSS 1460 -> {MTU - 40}: path MTU {MTU} (ICMP)")
    # Everything after the step down fits the path.
    assert max(s["len"] for s in segments(objs, "out")[-20:]) <= MTU - 40 - 12


def test_5_mb_down_by_curl_from_listen_http(routed: RoutedLab, tmp_path: Path) -> None:
    body = os.urandom(DOWN)
    (tmp_path / "blob").write_bytes(body)
    server, port = routed.addr("server"), 8080
    listener = tcpscapy_popen(routed, "server", "listen", f"{server}:{port}", "--http",
                              str(tmp_path), "--once")
    read_until(listener.stderr, b"listening", timeout=30)
    out = tmp_path / "got"
    curl = routed.run("client", ["curl", "-sS", "--max-time", "60", "-o", str(out),
                                 f"http://{server}:{port}/blob"],
                      capture_output=True, text=True, timeout=90)
    assert curl.returncode == 0, curl.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()
    listener.communicate(timeout=30)
    assert listener.returncode == 0


@pytest.fixture
def plain(unique_prefix: str) -> Iterator[RoutedLab]:
    """The routed lab with MTU 1500 everywhere."""
    lab = RoutedLab(unique_prefix)
    try:
        lab.up()
        yield lab
        finish(lab)
    finally:
        lab.down()


@pytest.mark.parametrize(("reject", "words"), [
    ("icmp-port-unreachable", "port unreachable"),
    ("icmp-admin-prohibited", "communication administratively prohibited")])
def test_a_firewall_reject_to_our_syn_ends_connect_with_exit_10(
        plain: RoutedLab, reject: str, words: str) -> None:
    server, router, port = plain.addr("server"), plain.gateway("client"), 7300
    rule = ["FORWARD", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with",
            reject, "-m", "comment", "--comment", "tcpscapy-lab"]
    assert plain.run("router", ["iptables", "-A", *rule]).returncode == 0
    result = tcpscapy_run(plain, "client", "connect", f"{server}:{port}", "-q", "--send", "x",
                          timeout=30)
    assert result.returncode == 10, result.stderr
    assert result.stderr.decode().strip().endswith(
        f"connect to {server}:{port}: connection failed: {words} from {router}")


def test_a_spoofed_frag_needed_outside_the_window_changes_nothing(plain: RoutedLab) -> None:
    """The attacker knows our 4-tuple but not our sequence numbers (RFC 5927). It claims to
    be the server (the router would drop packets with its own address as source)."""
    client, server = plain.addr("client"), plain.addr("server")
    port, sport = sink(plain), 47123
    proc = tcpscapy_popen(plain, "client", "connect", f"{server}:{port}", "--sport", str(sport),
                          "--json", stdin=subprocess.PIPE)
    head = read_until(proc.stderr, b'"new":"ESTABLISHED"', timeout=30)
    spoof = f"""
from scapy.all import IP, ICMP, IPerror, TCPerror, send
send([IP(src="{server}", dst="{client}") / ICMP(type=3, code=4, nexthopmtu=576) /
      IPerror(src="{client}", dst="{server}", len=1500) /
      TCPerror(sport={sport}, dport={port}, seq=seq)
      for seq in range(0, 2**32, 2**28)], verbose=0)  # 16 guesses over the sequence space
"""
    assert plain.run("attacker", [sys.executable, "-c", spoof], timeout=60).returncode == 0
    payload = os.urandom(300_000)
    out, err = proc.communicate(payload, timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out == b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
    objs = json_objects(head + err)
    notes = [str(o["note"]) for o in objs if o.get("note")]
    # Nothing was outstanding while they came: no guess can be in SND.UNA..SND.NXT.
    assert sum(n.endswith("dropped (icmp_out_of_window)") for n in notes) == 16, notes
    assert mss_notes(objs) == [], "the MSS never changed"
    summary = objs[-1]
    assert summary["type"] == "summary"
    assert summary["icmp"] == {"icmp_received": 16, "icmp_out_of_window": 16}
    assert max(s["len"] for s in segments(objs, "out")) == 1448  # 1460 less timestamps


def test_a_soft_error_is_named_when_connect_times_out(plain: RoutedLab) -> None:
    """Host unreachable is soft (RFC 1122): the SYN is retried, and the time-out says why."""
    server, router, port = plain.addr("server"), plain.gateway("client"), 7301
    rule = ["FORWARD", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with",
            "icmp-host-unreachable", "-m", "comment", "--comment", "tcpscapy-lab"]
    assert plain.run("router", ["iptables", "-A", *rule]).returncode == 0
    result = tcpscapy_run(plain, "client", "connect", f"{server}:{port}", "--timeout", "2.5",
                          "--rto", "0.5", "--send", "x", timeout=30)
    assert result.returncode == 5, result.stderr  # not 10: a soft error ends nothing
    text = result.stderr.decode()
    assert "ICMP host unreachable from" in text  # (the router rate-limits its ICMP: 1/s)
    assert text.strip().endswith(f"timed out after 2.5 s (last ICMP: host unreachable from "
                                 f"{router})")
