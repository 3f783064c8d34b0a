"""SYN cookies on the wire, against the Linux kernel, inside a lab.

(a) a kernel client connects to a tcpscapy listener that answers every SYN with
    a cookie; (b) tcpscapy.connect talks to a kernel server with
    net.ipv4.tcp_syncookies=2; (c) under `tcpscapy lab flood`, curl still gets
    through to `tcpscapy listen --syncookies auto` and does not get through to
    `--syncookies never` with a small backlog; (d) bad and expired cookie ACKs
    from the attacker host are answered with RST and counted; (e) the secret
    behind the cookies is never printed.
"""

from __future__ import annotations

import json
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from random import Random

import pytest

import tcpscapy
from tcpscapy.core.config import Config
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, RST, SYN, Segment
from tcpscapy.core.syncookies import (
    MSS_TABLE,
    TS_MASK,
    TS_SACK,
    TS_WSCALE_NONE,
    SynCookies,
    derive_keys,
)
from tcpscapy.core.tfo import derive_key as tfo_key
from tcpscapy.io import codec
from tcpscapy.io.driver import close_all, default_driver
from tcpscapy.io.rawsock import Link, open_link
from tcpscapy.lab import HOST_IFACE, Lab
from tests.wire.cli_helpers import close_and_check_nothing_left

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsi"
SERVER, CLIENT, ATTACKER = "10.77.0.2", "10.77.0.1", "10.77.0.3"
PORT = 80
UP, DOWN = 300_000, 200_000  # bytes client -> server, server -> client: past 64 KiB windows
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4

# struct tcp_info starts: state, ca_state, retransmits, probes, backoff, options,
# snd_wscale:4 | rcv_wscale:4 (low nibble first on little-endian), one more byte,
# then rto, ato, snd_mss, rcv_mss (u32).
TCP_INFO = r"""
import socket, struct
def tcp_info(s):
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 24)
    options, scales = raw[5], raw[6]
    snd_mss, rcv_mss = struct.unpack_from("=II", raw, 16)
    return {"options": options, "snd_wscale": scales & 0xF, "rcv_wscale": scales >> 4,
            "snd_mss": snd_mss}
"""

# Kernel client: sends UP seeded bytes, half-closes, reads to EOF; reports what it got.
CLIENT_CODE = TCP_INFO + r"""
import json, random, socket, sys
host, port, up, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with socket.create_connection((host, port), timeout=20) as s:
    info = tcp_info(s)
    s.sendall(random.Random(1).randbytes(up))
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
print(json.dumps({"down_ok": bytes(got) == random.Random(2).randbytes(down),
                  "down_len": len(got), **info}), flush=True)
"""

# Kernel server: prints its port; per connection reads N bytes, sends them back
# reversed, waits for the client to close first, then prints the accepted socket's
# tcp_info as JSON. (The client closing first leaves no unread data on our side.)
SERVER_CODE = TCP_INFO + r"""
import json, socket, sys
srv = socket.create_server((sys.argv[1], 0))
size = int(sys.argv[2])
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    with c:
        info = tcp_info(c)
        data = bytearray()
        while len(data) < size and (chunk := c.recv(65536)):
            data += chunk
        c.sendall(bytes(data[::-1]))
        while c.recv(65536):
            pass
    print(json.dumps(info), flush=True)
"""


def seeded(n: int, seed: int) -> bytes:
    return Random(seed).randbytes(n)


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The lab; afterwards every in-process driver is closed, no guard rule is left."""
    try:
        yield lab
    finally:
        close_and_check_nothing_left(lab)


def nstat(lab: Lab, host: str, *names: str) -> dict[str, int]:
    """Absolute kernel counters (without touching nstat's history file)."""
    out = lab.run(host, ["nstat", "-asz", "--json", *names], capture_output=True, text=True,
                  check=True).stdout
    return {k: int(v) for k, v in json.loads(out)["kernel"].items()}


def recv_all(conn: tcpscapy.Connection, timeout: float = 20.0) -> bytes:
    got = bytearray()
    while chunk := conn.recv(timeout=timeout):
        got += chunk
    return bytes(got)


# -- (a) a kernel client against listen(syncookies="always") -------------------------


def test_kernel_client_through_cookie_listener(net: Lab) -> None:
    with net.enter("server"):
        server = tcpscapy.listen(PORT, SERVER, syncookies="always", msl=0.2)
    client = net.popen("client", [sys.executable, "-c", CLIENT_CODE, SERVER, str(PORT),
                                  str(UP), str(DOWN)], stdout=subprocess.PIPE, text=True)
    with server:
        conn = server.accept(timeout=10)
        assert recv_all(conn) == seeded(UP, 1)
        conn.sendall(seeded(DOWN, 2), timeout=20)
        conn.close()
        out, _ = client.communicate(timeout=30)
        report = json.loads(out)
        counters = server.engine.counters
    assert report["down_ok"] and report["down_len"] == DOWN

    # Every SYN got a cookie, and the one connection came from a validated cookie ACK.
    assert counters["cookies_validated"] == 1
    assert counters["cookies_sent"] == counters["syns_received"] >= 1
    assert counters["cookies_rejected"] == 0

    # The options the kernel sent in its SYN came back through the cookie (TSecr bits)...
    drv = conn.driver
    syn = next(s for s in drv.orphans.segments("in")
               if s.flags == SYN and (s.src, s.sport) == conn.remote)
    synack = next(s for s in drv.orphans.segments("out")
                  if s.flags == SYN | ACK and (s.dst, s.dport) == conn.remote)
    engine = conn.engine
    assert syn.options.wscale is not None and syn.options.sack_permitted
    assert engine.ts_ok and engine.ws_ok and engine.sack_ok
    assert engine.snd_wscale == syn.options.wscale
    assert engine.snd_mss == max(m for m in MSS_TABLE if m <= syn.options.mss)
    # ... and the kernel took our SYN-ACK's options as they were encoded.
    assert synack.options.timestamps is not None and synack.options.wscale is not None
    assert report["options"] & TCPI_OPT_TIMESTAMPS
    assert report["options"] & TCPI_OPT_SACK
    assert report["options"] & TCPI_OPT_WSCALE
    assert report["snd_wscale"] == synack.options.wscale == engine.rcv_wscale
    assert report["rcv_wscale"] == engine.snd_wscale
    assert report["snd_mss"] == synack.options.mss - 12  # less the timestamp option


# -- (b) tcpscapy.connect against a kernel server with tcp_syncookies=2 ---------------


@pytest.mark.parametrize(("options", "tcp_timestamps"), [
    ({}, "2"),  # 2: timestamps without a random offset, so TSval shows the cookie bits
    ({"wscale": 3, "sack": False}, "2"),
    ({}, "1"),  # the usual per-connection offset
    ({"timestamps": False}, "1"),  # no timestamps: the kernel's cookie drops wscale and SACK
], ids=["defaults", "wscale3-nosack", "ts-offset", "no-timestamps"])
def test_connect_to_kernel_sending_cookies(net: Lab, options: dict[str, object],
                                           tcp_timestamps: str) -> None:
    net.sysctl("server", "net.ipv4.tcp_syncookies", "2")
    net.sysctl("server", "net.ipv4.tcp_timestamps", tcp_timestamps)
    names = ("TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed")
    before = nstat(net, "server", *names)
    proc = net.popen("server", [sys.executable, "-c", SERVER_CODE, SERVER, str(UP)],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    with net.enter("client"):
        conn = tcpscapy.connect(SERVER, port, timeout=5, msl=0.2, **options)
    data = seeded(UP, 3)
    with conn:
        conn.sendall(data, timeout=20)
        got = bytearray()
        while len(got) < UP and (chunk := conn.recv(timeout=20)):
            got += chunk
        assert got == data[::-1]
    kernel = json.loads(proc.stdout.readline())  # after our FIN reached it
    after = nstat(net, "server", *names)
    assert after["TcpExtSyncookiesSent"] == before["TcpExtSyncookiesSent"] + 1
    assert after["TcpExtSyncookiesRecv"] == before["TcpExtSyncookiesRecv"] + 1
    assert after["TcpExtSyncookiesFailed"] == before["TcpExtSyncookiesFailed"]

    engine = conn.engine
    syn = conn.trace.segments("out")[0]
    synack = next(s for s in conn.trace.segments("in") if s.flags == SYN | ACK)
    with_ts = options.get("timestamps", True)
    want_ws = with_ts and options.get("wscale", 7) is not None
    want_sack = with_ts and options.get("sack", True)
    assert engine.ts_ok is with_ts
    assert engine.ws_ok is want_ws
    assert engine.sack_ok is want_sack
    assert bool(kernel["options"] & TCPI_OPT_TIMESTAMPS) is with_ts
    assert bool(kernel["options"] & TCPI_OPT_WSCALE) is want_ws
    assert bool(kernel["options"] & TCPI_OPT_SACK) is want_sack
    if want_ws:
        # The kernel decoded our window scale from the cookie bits echoed in TSecr.
        assert kernel["snd_wscale"] == syn.options.wscale == engine.rcv_wscale
        assert kernel["rcv_wscale"] == synack.options.wscale == engine.snd_wscale
    if with_ts and tcp_timestamps == "2":
        assert synack.options.timestamps is not None
        bits = synack.options.timestamps[0] & TS_MASK
        assert bits & TS_WSCALE_NONE == syn.options.wscale
        assert bool(bits & TS_SACK) is want_sack
    if not with_ts:
        assert synack.options.wscale is None and not synack.options.sack_permitted


# -- (c) the contrast under a flood: auto serves, never stalls ------------------------


def start_cli_listener(lab: Lab, mode: str, site: Path) -> subprocess.Popen[str]:
    proc = lab.popen("server", [sys.executable, "-m", "tcpscapy", "listen", f"{SERVER}:{PORT}",
                                "--http", str(site), "--syncookies", mode, "--backlog", "16",
                                "--json"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert json.loads(line).get("type") == "listening", line
    return proc


def stop_cli_listener(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    """SIGTERM, then every JSON object it wrote on stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 128 + signal.SIGTERM, err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


FLOOD, RATE, CURL_TIME = 16_000, 2_000, 5  # an 8 s flood; curl gives up after 5 s


def rx_packets(lab: Lab, host: str) -> int:
    """Packets `host`'s lab interface has received so far (read from outside it)."""
    out = subprocess.run(["ip", "-n", lab.ns(host), "-s", "-j", "link", "show", HOST_IFACE],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_curl_during_flood(net: Lab, tmp_path: Path, mode: str) -> None:
    (tmp_path / "hello.txt").write_text("hello through the flood\n")
    listener = start_cli_listener(net, mode, tmp_path)
    # The flood lasts 8 s at least, curl (5 s at most) starts once the first 500 SYNs
    # have reached the server. 2,000/s fills a backlog of 16 at once, yet leaves a
    # Python listener on a loaded machine the CPU to serve curl (at 5,000/s, with a CPU
    # hog beside it, it read 3,450/s and curl's response stalled).
    before = rx_packets(net, "server")
    attacker = subprocess.Popen([sys.executable, "-m", "tcpscapy", "lab", "flood", "--prefix",
                                 net.prefix, "--count", str(FLOOD), "--rate", str(RATE), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # curl starts once the flood reaches the server (the flood's own start-up takes
        # most of a second, more on a busy machine), not after a guessed delay.
        deadline = time.monotonic() + 30
        while rx_packets(net, "server") < before + 500 and attacker.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert attacker.poll() is None, "the flood ended before curl started"
        assert rx_packets(net, "server") >= before + 500, "the flood never reached the server"
        curl = net.run("client", ["curl", "-sS", "--max-time", str(CURL_TIME), "-o", "-",
                                  f"http://{SERVER}:{PORT}/hello.txt"],
                       capture_output=True, text=True, timeout=CURL_TIME + 10)
        flooding = attacker.poll() is None
        out, err = attacker.communicate(timeout=30)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    assert attacker.returncode == 0, err
    assert json.loads(out)["sent"] == FLOOD
    assert flooding, "curl finished after the flood: no contrast shown"
    summary = next(o for o in stop_cli_listener(listener) if o.get("type") == "summary")
    counters = summary["counters"]
    assert isinstance(counters, dict)
    assert counters["syns_received"] > 1000
    if mode == "auto":
        assert curl.returncode == 0, (curl.stderr, counters)
        assert curl.stdout == "hello through the flood\n"
        assert counters["cookies_sent"] > 0
        assert counters["cookies_validated"] >= 1
    else:
        assert curl.returncode == 28, curl.stderr  # curl: operation timed out
        assert counters["cookies_sent"] == 0
        assert counters["syns_dropped"] > 0


# -- (d) bad and expired cookie ACKs from the attacker host ---------------------------


class Attacker:
    """Hand-made segments from the attacker host's address, and what comes back."""

    def __init__(self, lab: Lab) -> None:
        with lab.enter("attacker"):
            self.link: Link = open_link(SERVER)

    def send(self, seg: Segment) -> None:
        self.link.send(codec.encode(seg))

    def answers(self, sport: int, wait: float = 2.0) -> list[Segment]:
        """Segments to our `sport` within `wait` seconds (stops at the first one)."""
        deadline = time.monotonic() + wait
        found: list[Segment] = []
        while not found and (left := deadline - time.monotonic()) > 0:
            select.select([self.link], [], [], left)
            for packet, skip in self.link.recv_many():
                seg = codec.decode(packet, verify_checksum=not skip)
                if seg is not None and seg.dport == sport and seg.src == SERVER:
                    found.append(seg)
        return found


def test_bad_and_expired_cookie_acks_get_rst(net: Lab) -> None:
    with net.enter("server"):
        server = tcpscapy.listen(PORT, SERVER, syncookies="always")
    attacker = Attacker(net)
    cookies = SynCookies(server.engine.config)  # the listener's own secret and options
    ts = Options(timestamps=(1000, 0))

    def syn(sport: int) -> Segment:
        return Segment(ATTACKER, SERVER, sport, PORT, 5000, 0, SYN, 64240,
                       Options(mss=1460, sack_permitted=True, timestamps=(900, 0), wscale=7))

    def ack_for(synack: Segment) -> Segment:
        assert synack.options.timestamps is not None
        return Segment(ATTACKER, SERVER, synack.dport, PORT, synack.ack, synack.seq + 1, ACK,
                       502, ts._replace(timestamps=(1001, synack.options.timestamps[0])))

    with server, attacker.link:
        # A made-up ACK: no cookie of ours.
        attacker.send(Segment(ATTACKER, SERVER, 40001, PORT, 777, 123456789, ACK, 502, ts))
        (rst,) = attacker.answers(40001)
        assert rst.flags & RST and rst.seq == 123456789
        assert server.engine.counters["cookies_rejected"] == 1

        # A cookie made with the right secret three minutes ago: expired.
        old = cookies.synack(syn(40002), time.monotonic() - 180)
        attacker.send(ack_for(old))
        (rst,) = attacker.answers(40002)
        assert rst.flags & RST and rst.seq == old.seq + 1
        assert server.engine.counters["cookies_rejected"] == 2

        # A tampered one: a fresh cookie with one bit flipped.
        fresh = cookies.synack(syn(40003), time.monotonic())
        attacker.send(ack_for(fresh.replace(seq=fresh.seq ^ 0x10)))
        (rst,) = attacker.answers(40003)
        assert rst.flags & RST
        assert server.engine.counters["cookies_rejected"] == 3

        # The control: the same fresh cookie, untouched, makes a connection and no RST.
        attacker.send(ack_for(fresh))
        conn = server.accept(timeout=5)
        assert conn.remote == (ATTACKER, 40003)
        assert conn.engine.ws_ok and conn.engine.sack_ok and conn.engine.snd_wscale == 7
        assert attacker.answers(40003, wait=0.3) == []
        counters = server.engine.counters
        assert counters["cookies_validated"] == 1 and counters["cookies_rejected"] == 3
        assert counters["syns_received"] == 0  # all of it was stateless ACKs
        conn.abort()


# -- (e) the secret behind the cookies is never printed -------------------------------

# `tcpscapy listen`, with the driver's secret written to a side file for the test only.
SECRET_PEEK = r"""
import sys
from tcpscapy.io import driver
init = driver.Driver.__init__
def peek(self, *args, **kwargs):
    init(self, *args, **kwargs)
    with open(sys.argv[1], "w") as f:
        f.write(self.config.secret.hex())
driver.Driver.__init__ = peek
from tcpscapy.cli import main
main(sys.argv[2:], prog_name="tcpscapy")
"""


def pcap_segments(data: bytes) -> list[Segment]:
    """The segments of a raw-IPv4 pcap file (as --pcap writes it)."""
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    segments, at = [], 24
    while at + 16 <= len(data):
        (size,) = struct.unpack_from(order + "I", data, at + 8)
        seg = codec.decode(data[at + 16 : at + 16 + size])
        assert seg is not None
        segments.append(seg)
        at += 16 + size
    return segments


@pytest.mark.parametrize("style", ["--json", "--absolute"])  # JSON, or the text ladder
def test_secret_never_printed(net: Lab, tmp_path: Path, style: str) -> None:
    secret_file, pcap = tmp_path / "secret", tmp_path / "all.pcap"
    listener = net.popen("server", [sys.executable, "-c", SECRET_PEEK, str(secret_file),
                                    "listen", f"{SERVER}:{PORT}", "--syncookies", "always",
                                    style, "-v", "--pcap", str(pcap)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert listener.stderr is not None
    assert "listening" in listener.stderr.readline()
    for _ in range(3):  # the listener echoes: the client gets its own bytes back
        client = net.run("client", [sys.executable, "-c", CLIENT_CODE, SERVER, str(PORT),
                                    "5000", "5000"], capture_output=True, text=True, timeout=30)
        assert client.returncode == 0, client.stderr
    listener.send_signal(signal.SIGTERM)
    out, err = listener.communicate(timeout=15)
    secret = bytes.fromhex(secret_file.read_text())
    assert len(secret) == 16 and secret != bytes(16)  # os.urandom, not the zero default
    if style == "--json":
        objects = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        summary = next(o for o in objects if o["type"] == "summary")
        assert summary["counters"]["cookies_validated"] == 3
        assert sum(o["type"] == "segment" for o in objects) > 20  # -v: every trace entry
    else:
        assert "cookies_validated=3" in err
        assert err.count("──") > 20  # -v: every connection's ladder, arrows and all

    # Neither the secret nor a key derived from it, in the output or the pcap.
    printed = (out + err).lower()
    captured = pcap.read_bytes()
    for key in (secret, *derive_keys(secret), tfo_key(secret)):
        assert key.hex() not in printed
        assert key not in captured and key.hex() not in captured.hex()

    # The cookies were made with that secret: each connection's first segment, the
    # cookie ACK, checks out under it (and not under another key).
    acks = [s for s in pcap_segments(captured) if s.flags == ACK and s.dst == SERVER
            and not s.payload]
    first_acks = {(s.src, s.sport): s for s in reversed(acks)}.values()
    assert len(first_acks) == 3
    now = time.monotonic()  # the listener's clock too: CLOCK_MONOTONIC is system-wide
    ours, other = SynCookies(Config(secret=secret)), SynCookies(Config(secret=bytes(16)))
    for ack in first_acks:
        assert ours.check(ack, now) is not None
        assert other.check(ack, now) is None


def test_each_driver_draws_its_own_secret(net: Lab) -> None:
    with net.enter("server"):
        first = default_driver().config.secret
        close_all(linger=0)
        second = default_driver().config.secret
    assert bytes(16) not in (first, second) and first != second
