"""Every lab in examples/labs runs (as root, as a student would) and shows what it teaches.

Each script prints `RESULT {...}` with the outcome of its checks; these tests
run the scripts, require exit code 0, and name the outcomes that make the lesson
(lab 4 really passes both sides through SYN-RECEIVED; lab 10 really sees a
challenge ACK and a surviving connection), so a lab that quietly stopped
checking its point fails here. Each script builds and removes its own lab.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpscapy import netns

pytestmark = pytest.mark.wire
LABS = Path(__file__).resolve().parents[2] / "examples" / "labs"
RUN_TIMEOUT = 60

# For each lab: the checks that carry its lesson (all must be reported, and true).
LESSONS: dict[str, list[str]] = {
    "01_handshake.py": [
        "the SYN-ACK acknowledges the client's ISN + 1",
        "the third segment acknowledges the server's ISN + 1",
        "the client went CLOSED -> SYN-SENT -> ESTABLISHED",
        "the kernel offers all four options back when the SYN offers them",
        "the kernel offers SACK, timestamps, window scaling only if the SYN did",
        "the kernel sends at most the 1000 bytes our MSS allows per segment",
    ],
    "02_teardown.py": [
        "the client passed FIN-WAIT-1, FIN-WAIT-2 and TIME-WAIT",
        "data still arrived after our FIN (a half-closed connection)",
        "TIME-WAIT lasted 2 x MSL, then CLOSED",
        "tcpscapy passed CLOSE-WAIT and LAST-ACK, never TIME-WAIT",
        "the kernel, which closed first, holds the connection in TIME-WAIT",
    ],
    "03_rst_closed_port.py": [
        "connect() fails with ConnectionRefused",
        "the answer to the SYN is RST-ACK with seq 0 and ack = ISN + 1",
        "the kernel client sees ConnectionRefusedError (errno 111)",
        "the kernel answers a stray ACK with a bare RST whose seq is that ACK's ack",
        "in LISTEN, any ACK is bad: tcpscapy answers RST with seq = its ack",
    ],
    "04_simultaneous_open.py": [
        "A went SYN-SENT -> SYN-RECEIVED -> ESTABLISHED",
        "B went SYN-SENT -> SYN-RECEIVED -> ESTABLISHED",
        "A got a bare SYN while in SYN-SENT and answered SYN-ACK",
        "B got a bare SYN while in SYN-SENT and answered SYN-ACK",
        "both directions carry data",
    ],
    "05_simultaneous_close.py": [
        "A went FIN-WAIT-1 -> CLOSING -> TIME-WAIT -> CLOSED",
        "B went FIN-WAIT-1 -> CLOSING -> TIME-WAIT -> CLOSED",
        "both sides, not just one, waited in TIME-WAIT",
    ],
    "06_lost_syn.py": [
        "the server's firewall dropped exactly two SYNs",
        "the first retransmission came after the initial RTO (0.25 s)",
        "the second waited twice as long (exponential back-off)",
        "the listener retransmitted its SYN-ACK after its RTO",
        "the client resent its SYN after its RTO and got one SYN-ACK",
    ],
    "07_zero_window.py": [
        "window scaling is in use and the window field is scaled by 2^7",
        "the slow reader's window fell to zero",
        "the kernel sent zero-window probes while the window was shut",
        "the probes came at growing intervals (back-off)",
        "reading reopened the window (a window update)",
        "all 300000 bytes arrived intact",
    ],
    "08_syn_flood.py": [
        "the real client could not connect during the flood",
        "once the queue was full, the listener answered with SYN cookies",
        "the real client connected and got its echo",
        "the listener kept no state for the SYN (its record starts at the ACK)",
    ],
    "09_fast_open.py": [
        "the first SYN asks for a cookie and carries no data",
        "the second SYN carries the cookie and the whole request",
        "the SYN-ACK acknowledges the SYN and its data",
        "the kernel counted a Fast Open connection (TCPFastOpenPassive)",
        "the request left before we heard from the server: one round trip, not two",
    ],
    "10_blind_rst.py": [
        "and ignored it: no answer, still ESTABLISHED",
        "the victim answered with one challenge ACK (RFC 5961 §3.2)",
        "the connection survived the in-window RST",
        "the exact RST reset the victim's connection",
    ],
    "11_path_mtu.py": [
        "the router answered with ICMP fragmentation needed (mtu 1280)",
        "tcpscapy lowered its MSS from 1460 to 1240",
        "the lost data went again at the new size before any timeout (RTO 1 s)",
        "the next connection starts at 1240 (cached): no ICMP this time",
        "a Linux client with tcp_mtu_probing=0 hangs: its 1448-byte segments vanish",
        "tcpscapy suspected a black hole after two timeouts and stepped down to 1160",
        "tcpscapy's 300000 bytes all arrived through the black hole",
        "with tcp_mtu_probing=1 the kernel finds its way too",
    ],
    "12_behind_nat.py": [
        "the client's ladder shows its own address and port",
        "the server sees the router's address, not the client's",
        "NAT left the sequence numbers alone: the same ISN on both sides",
        "conntrack maps 10.78.1.2:40000 to 10.78.2.1:40000",
        "the client still sees its own port",
        "the server sees the router's address and another port",
        "conntrack maps the client's port to the port the server sees",
    ],
}


def run_lab(name: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    res = subprocess.run([sys.executable, str(LABS / name)], cwd=LABS, capture_output=True,
                         text=True, timeout=RUN_TIMEOUT)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"{name} printed no RESULT line:\n{res.stdout}\n{res.stderr}"
    prefix = re.search(r"\(lab (lab[0-9a-f]{6}):", res.stdout)
    assert prefix is not None, res.stdout
    assert not any(n.startswith(prefix.group(1) + "-") for n in netns_names()), \
        f"{name} left namespaces of lab {prefix.group(1)} behind"
    return res, json.loads(lines[0][len("RESULT "):])


def netns_names() -> list[str]:
    return sorted(p.name for p in Path(netns.NETNS_DIR).glob("*"))


def test_every_lab_script_is_covered() -> None:
    scripts = sorted(p.name for p in LABS.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(LESSONS), "a lab without a test, or a test without its lab"
    assert len(scripts) >= 10


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lab_shows_what_it_teaches(name: str) -> None:
    res, result = run_lab(name)
    failed = [check for check, ok in result["checks"].items() if not ok]
    assert res.returncode == 0 and result["ok"], f"{name}: failed {failed}\n{res.stdout}"
    assert result["lab"] == int(name[:2])
    missing = [check for check in LESSONS[name] if check not in result["checks"]]
    assert not missing, f"{name} no longer checks {missing}"
    assert result["facts"]["seconds"] < 15, f"{name} took {result['facts']['seconds']} s"
    assert "─" in res.stdout, f"{name} printed no ladder"  # every lab shows its exchange


def test_lab_6_backs_off_by_doubling() -> None:
    _, result = run_lab("06_lost_syn.py")
    first, second = result["facts"]["syn_intervals"]
    assert 0.2 <= first <= 0.4 and 1.6 <= second / first <= 2.5


def test_a_lab_without_root_says_so_in_one_line() -> None:
    # setpriv (util-linux) runs it without CAP_SYS_ADMIN: it must refuse cleanly, exit 4.
    res = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin",
                          sys.executable, str(LABS / "04_simultaneous_open.py")],
                         cwd=LABS, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert res.returncode == 4, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "lab 4 needs root (network namespaces, raw sockets): run it as root"]
