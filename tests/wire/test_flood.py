"""The lab's SYN flood (tcpscapy.io.flood, `tcpscapy lab flood`): what it sends, its fences.

The first tests need no root: they drive the send loop with a fake link and
check the fence from the test's own namespace. The wire tests flood a lab,
check what arrives at the server, that the flood runs nowhere but a lab's
attacker host, that the lab has no way out, and that a tcpscapy listener
answers spoofed sources without stalling.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tcpscapy.bench import syncookies as bench
from tcpscapy.core.segment import ACK, SYN, Segment
from tcpscapy.io import codec, iptables
from tcpscapy.io.driver import close_all
from tcpscapy.io.flood import (
    CLOCK_EVERY,
    LAB_NET,
    MAX_COUNT,
    FloodRefused,
    _send,
    flood,
    spoof_pool,
)
from tcpscapy.io.rawsock import LinkError
from tcpscapy.lab import ADDRESSES, Lab

LAB_PREFIX = "tsi"
SERVER, ATTACKER = ADDRESSES["server"], ADDRESSES["attacker"]
PORT = 80
ETH_P_IP = 0x0800


class FakeLink:
    """Collects what the flood sends; `delay` per send, `fail` raises instead."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.packets: list[bytes] = []
        self.delay, self.fail = delay, fail

    def send(self, packet: bytes) -> None:
        if self.fail:
            raise LinkError("send queue on eth0 stays full")
        if self.delay:
            time.sleep(self.delay)
        self.packets.append(packet)


def run(link: FakeLink, count: int, *, rate: float | None = None, limit: float = 60.0,
        seed: int = 7) -> tuple[list[Segment], float, str, int]:
    result = _send(link, SERVER, PORT, count, rate, limit, spoof_pool(),  # type: ignore[arg-type]
                   random.Random(seed))
    segments = [codec.decode(p) for p in link.packets]
    assert all(s is not None for s in segments)  # every checksum checks out
    assert result.sent == len(link.packets)
    return [s for s in segments if s is not None], result.elapsed, result.stopped, result.errors


# -- without root ------------------------------------------------------------------------


def test_syns_look_like_a_clients_from_unused_lab_addresses() -> None:
    segments, _, stopped, _ = run(FakeLink(), 3000)
    assert len(segments) == 3000 and stopped == "count"
    pool = set(spoof_pool())
    assert pool.isdisjoint(ADDRESSES.values())
    assert all(ipaddress.ip_address(a) in LAB_NET for a in pool)
    assert {s.src for s in segments} <= pool
    assert len({s.src for s in segments}) > 200  # spread over the pool
    assert len({s.sport for s in segments}) > 2500 and min(s.sport for s in segments) >= 1024
    assert len({s.seq for s in segments}) > 2990
    for seg in segments:
        assert (seg.dst, seg.dport, seg.flags, seg.ack, seg.payload) == (SERVER, PORT, SYN, 0, b"")
        opts = seg.options
        assert opts.mss == 1460 and opts.wscale == 7 and opts.sack_permitted
        assert opts.timestamps is not None and opts.timestamps[1] == 0


def test_a_seed_repeats_the_flood() -> None:
    first, second, other = FakeLink(), FakeLink(), FakeLink()
    run(first, 200, seed=1)
    run(second, 200, seed=1)
    run(other, 200, seed=2)
    assert first.packets == second.packets != other.packets


def test_rate_cap_paces_the_sends() -> None:
    count, rate = 4 * CLOCK_EVERY, 1000.0
    _, elapsed, stopped, _ = run(FakeLink(), count, rate=rate)
    assert stopped == "count"
    assert elapsed >= (count - CLOCK_EVERY) / rate  # the last batch may not start before


def test_duration_caps_the_run() -> None:
    segments, elapsed, stopped, _ = run(FakeLink(delay=0.001), MAX_COUNT, limit=0.2)
    assert stopped == "duration"
    assert 0 < len(segments) < MAX_COUNT
    assert 0.2 <= elapsed < 2.0


def test_send_errors_are_counted_not_raised() -> None:
    segments, _, stopped, errors = run(FakeLink(fail=True), 100)
    assert (segments, stopped, errors) == ([], "count", 100)


@pytest.mark.parametrize(("count", "kwargs", "message"), [
    (0, {}, "count"),
    (MAX_COUNT + 1, {}, "count"),
    (True, {}, "count"),
    (10, {"rate": 0}, "rate"),
    (10, {"rate": float("inf")}, "rate"),
    (10, {"duration": 0}, "duration"),
    (10, {"duration": 61}, "duration"),
    (10, {"port": 0}, "port"),
])
def test_bad_numbers_are_refused(count: int, kwargs: dict[str, float], message: str) -> None:
    port = int(kwargs.pop("port", PORT))
    with pytest.raises(ValueError, match=message):
        flood(SERVER, port, count, **kwargs)


def test_refuses_outside_any_lab() -> None:
    with pytest.raises(FloodRefused, match="refusing to flood"):
        flood(SERVER, PORT, 10)


# -- on the wire -------------------------------------------------------------------------


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    try:
        yield lab
    finally:
        close_all(linger=0.5)
        with lab.enter("server"):
            assert iptables.status() == [], "guard rules left in the server"
        assert [t.name for t in threading.enumerate() if t.name.startswith("tcpscapy")] == []


class Capture:
    """Every IPv4 frame on `host`'s eth0 from now on, read back as (source MAC, segment)."""

    def __init__(self, lab: Lab, host: str) -> None:
        with lab.enter(host):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
            self.sock.bind(("eth0", ETH_P_IP))
            self.mac = self.sock.getsockname()[4]
        self.sock.setblocking(False)

    def frames(self) -> list[tuple[bytes, bytes, Segment]]:
        """(destination MAC, source MAC, segment) of every TCP frame so far."""
        out = []
        while True:
            try:
                frame = self.sock.recv(65536)
            except BlockingIOError:
                return out
            seg = codec.decode(frame[14:])
            if seg is not None:
                out.append((frame[:6], frame[6:12], seg))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.wire
def test_flood_reaches_the_server_exactly(net: Lab) -> None:
    capture = Capture(net, "server")
    try:
        with net.enter("attacker"):
            result = flood(SERVER, PORT, 5000, rate=20_000, seed=3)
        time.sleep(0.2)
        frames = capture.frames()
    finally:
        capture.close()
    assert (result.sent, result.errors, result.stopped) == (5000, 0, "count")
    assert result.rate > 0 and "sent 5000 SYNs" in result.summary()
    syns = [(src_mac, s) for _, src_mac, s in frames if s.flags == SYN and s.dport == PORT]
    assert len(syns) == 5000
    attacker_mac = {mac for mac, s in syns}
    assert len(attacker_mac) == 1  # every frame from the attacker's interface
    assert {s.src for _, s in syns} <= set(spoof_pool())


@pytest.mark.wire
def test_cli_flood(net: Lab) -> None:
    cmd = [sys.executable, "-m", "tcpscapy", "lab", "flood", "--prefix", net.prefix]
    ok = subprocess.run([*cmd, "--count", "3000", "--json"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert (report["sent"], report["target"], report["port"]) == (3000, SERVER, PORT)
    text = subprocess.run([*cmd, "--count", "100", "--target", "client", "--port", "22"],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "sent 100 SYNs to 10.77.0.1:22" in text.stdout
    for bad in (["--count", "0"], ["--count", "1000001"], ["--duration", "61"],
                ["--target", "attacker"], ["--rate", "0"]):
        res = subprocess.run([*cmd, *bad], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (bad, res.stderr)
        assert "Traceback" not in res.stderr


@pytest.mark.wire
def test_cli_refuses_a_lab_that_is_not_up(unique_prefix: str) -> None:
    res = subprocess.run([sys.executable, "-m", "tcpscapy", "lab", "flood", "--prefix",
                          unique_prefix], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("tcpscapy lab flood: lab") and "is down" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.wire
def test_refuses_from_other_lab_hosts_and_at_other_targets(net: Lab) -> None:
    for host in ("client", "server"):
        with net.enter(host), pytest.raises(FloodRefused, match="only a lab's attacker host"):
            flood(SERVER, PORT, 10)
    with net.enter("attacker"):
        for target in (ATTACKER, "10.77.0.9", "10.78.0.2", "192.0.2.1"):
            with pytest.raises(FloodRefused, match="must be a lab host"):
                flood(target, PORT, 10)


@pytest.mark.wire
def test_refuses_an_attacker_namespace_of_no_lab(unique_prefix: str) -> None:
    lone = Lab(unique_prefix)
    subprocess.run(["ip", "netns", "add", lone.ns("attacker")], check=True)
    try:
        with lone.enter("attacker"), pytest.raises(FloodRefused, match="partial, not up"):
            flood(SERVER, PORT, 10)
    finally:
        lone.down()


@pytest.mark.wire
def test_refuses_when_the_attacker_has_a_route_out(net: Lab) -> None:
    net.run("attacker", ["ip", "route", "add", "default", "via", ADDRESSES["client"]],
            check=True)
    with net.enter("attacker"), pytest.raises(FloodRefused, match="route out of the lab"):
        flood(SERVER, PORT, 10)


def _json(lab: Lab, host_ns: str, *argv: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", host_ns, "-j", *argv], capture_output=True, text=True,
                         check=True).stdout
    return list(json.loads(out or "[]"))


@pytest.mark.wire
def test_the_lab_has_no_way_out(net: Lab) -> None:
    """What keeps spoofed traffic in: no uplink, no routes out, no forwarding."""
    for host in net.hosts:
        ns = net.ns(host)
        links = {link["ifname"] for link in _json(net, ns, "link", "show")}
        assert links == {"lo", "eth0"}, (host, links)
        for route in _json(net, ns, "-4", "route", "show", "table", "all"):
            if route.get("type", "unicast") == "unicast":
                assert route["dst"] != "default" and "gateway" not in route, (host, route)
                assert ipaddress.ip_network(route["dst"]).subnet_of(LAB_NET), (host, route)
        assert net.sysctl(host, "net.ipv4.ip_forward") == "0"
    sw = net.switch_ns
    assert {link["ifname"] for link in _json(net, sw, "link", "show")} == \
        {"lo", "br0", *net.hosts}
    addrs = [a["local"] for link in _json(net, sw, "-4", "addr", "show")
             for a in link.get("addr_info", ())]
    assert all(a.startswith("127.") for a in addrs), addrs  # the switch has no lab address
    ports = {link["ifname"] for link in _json(net, sw, "link", "show", "master", "br0")}
    assert ports == set(net.hosts)


@pytest.mark.wire
def test_listener_answers_spoofed_sources_without_stalling(net: Lab) -> None:
    """2,000 SYNs from ~250 spoofed sources nobody answers ARP for: every one gets its
    cookie SYN-ACK at once, sent back to the MAC the SYN came from (the attacker's), so
    the answers stay on the lab link. Opening a link per source would cost the loop a
    2 s ARP timeout each. The listener is its own process, so a stalled one is killed
    with the lab instead of hanging the test."""
    server = bench.Listener(net)  # syncookies="always" on port 80
    capture = Capture(net, "attacker")
    try:
        with net.enter("attacker"):
            result = flood(SERVER, bench.PORT, 2000, rate=20_000, seed=5)
        deadline = time.monotonic() + 15
        while (counters := server.sample())["cookies_sent"] < 2000 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        frames = capture.frames()
    finally:
        capture.close()
        server.close()
    assert result.sent == 2000
    assert counters["syns_received"] == counters["cookies_sent"] == 2000
    synacks = [(dst_mac, s) for dst_mac, _, s in frames if s.flags == SYN | ACK]
    assert len(synacks) == 2000
    assert {mac for mac, _ in synacks} == {capture.mac}
    assert {s.dst for _, s in synacks} <= set(spoof_pool())
