"""Malformed input on the wire: 10,000+ hostile segments from the lab's attacker host.

The attacker sends through its own AF_PACKET socket (so even packets too broken
for tcpscapy's own Link.send go out), paced and bounded in count and time:

- at `tcpscapy listen --http` (a subprocess in the server host): afterwards it
  is still running, curl still gets the file byte for byte, and everything it
  wrote to stderr is JSON (a traceback would not be);
- into an established tcpscapy.connect (in this process, in the client host)
  and an established `tcpscapy connect` (a subprocess), spoofing the kernel
  server's address and port: the driver reads every packet that passes its
  filter, takes none of their bytes into the stream, and the connection then
  echoes its data intact; the subprocess exits 0 with nothing on stderr.

Packets are built with struct (fast) in categories: every flag combination,
options with illegal lengths, bad checksums, bad data offsets, truncated headers,
odd IP headers (options, fragments, lengths), urgent data and windows, plus a
sample from Scapy's fuzz().
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tcpscapy
from tcpscapy import netns
from tcpscapy.io.driver import Driver, close_all
from tcpscapy.io.rawsock import open_link
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import (
    CLIENT,
    SERVER,
    finish,
    kernel_server,
    read_until,
    recv_exactly,
    tcp_counters,
    tcpscapy_popen,
)

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsm"
ATTACKER = "10.77.0.3"
HTTP_PORT = 8080
FUZZ_COUNT = 10_000
BURST, PAUSE = 50, 0.004  # at most ~12,500 packets/s: the receiver keeps up, nothing overflows
SEND_CAP = 20.0  # seconds: a hard bound on one fuzz run
MAX_UNREAD = 1000  # packets in flight to an in-process receiver (its socket holds ~2000)

Seq = Callable[[random.Random], int]


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    return 0xFFFF - total if total else 0  # the ones' complement checksum field


@dataclass
class Flow:
    """Where the fuzz goes: addresses, the ports to use, and how to pick seq/ack."""

    src: str
    dst: str
    sports: list[int]
    dport: int
    seq: Seq
    ack: Seq


def build(flow: Flow, rng: random.Random, *, flags: int, options: bytes = b"",
          payload: bytes = b"", doff: int | None = None, reserved: int = 0, window: int = 29200,
          urgent: int = 0, ip_options: bytes = b"", frag: int = 0x4000, ttl: int = 64,
          ip_len: int | None = None, tcp_csum_delta: int = 0, ip_csum_delta: int = 0,
          cut: int | None = None) -> bytes:
    """One IPv4/TCP packet; any field may be made wrong on purpose."""
    src, dst = socket.inet_aton(flow.src), socket.inet_aton(flow.dst)
    offset = doff if doff is not None else 5 + len(options) // 4
    tcp = struct.pack("!HHIIBBHHH", rng.choice(flow.sports), flow.dport, flow.seq(rng),
                      flow.ack(rng), (offset & 0xF) << 4 | reserved, flags, window, 0,
                      urgent) + options + payload
    csum = _sum16(src + dst + struct.pack("!HH", 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", (csum + tcp_csum_delta) & 0xFFFF) + tcp[18:]
    ihl = 5 + len(ip_options) // 4
    total = ip_len if ip_len is not None else ihl * 4 + len(tcp)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, rng.getrandbits(16),
                         frag, ttl, 6, 0, src, dst) + ip_options
    csum = (_sum16(header) + ip_csum_delta) & 0xFFFF
    packet = header[:10] + struct.pack("!H", csum) + header[12:] + tcp
    return packet[:cut] if cut is not None else packet


# The options a real stack sends, to go with every flag combination.
GOOD_OPTIONS = [b"", bytes.fromhex("020405b4"), bytes.fromhex("0101080a0000000100000000"),
                bytes.fromhex("020405b40402080a00000001000000000103030701010101")]


def illegal_options(rng: random.Random) -> bytes:
    """Option bytes a parser must survive: zero/one/overlong lengths, truncation, noise."""
    kind = rng.choice([2, 3, 4, 5, 8, 34, 254, 77])
    choice = rng.randrange(5)
    if choice == 0:
        raw = bytes((kind, rng.choice([0, 1])))  # length below 2: would loop forever
    elif choice == 1:
        raw = bytes((kind, rng.randrange(41, 256))) + rng.randbytes(6)  # past the header
    elif choice == 2:
        raw = bytes((1, 1, 1, kind))  # a kind with no length byte at the end
    elif choice == 3:
        raw = bytes((5, 2 + 8 * rng.randrange(1, 5) - rng.randrange(1, 8)))  # SACK not 8n
        raw += rng.randbytes(raw[1])
    else:
        raw = rng.randbytes(rng.randrange(1, 41))
    raw = raw[:40]
    return raw + bytes(-len(raw) % 4)


def categories(flow: Flow) -> dict[str, Callable[[random.Random, int], bytes]]:
    """name -> f(rng, i) building the i-th packet of that kind."""
    def flags(rng: random.Random, i: int) -> bytes:  # i walks every combination
        return build(flow, rng, flags=i % 256, options=rng.choice(GOOD_OPTIONS),
                     payload=rng.randbytes(rng.choice([0, 0, 1, 100, 1400])))

    def options(rng: random.Random, i: int) -> bytes:
        return build(flow, rng, flags=rng.getrandbits(8), options=illegal_options(rng),
                     payload=rng.randbytes(rng.randrange(0, 64)))

    def checksum(rng: random.Random, i: int) -> bytes:
        delta = rng.randrange(1, 0xFFFF)
        tcp_bad = rng.random() < 0.7
        return build(flow, rng, flags=rng.getrandbits(8), payload=rng.randbytes(20),
                     tcp_csum_delta=delta if tcp_bad else 0, ip_csum_delta=0 if tcp_bad else delta)

    def offset(rng: random.Random, i: int) -> bytes:
        payload = rng.randbytes(rng.randrange(0, 30))
        doff = rng.choice([0, 1, 2, 3, 4, 15, 5 + (20 + len(payload)) // 4 + 1])
        return build(flow, rng, flags=rng.getrandbits(8), payload=payload, doff=doff)

    def truncated(rng: random.Random, i: int) -> bytes:
        packet = build(flow, rng, flags=rng.getrandbits(8), options=GOOD_OPTIONS[3],
                       payload=rng.randbytes(40))
        how = rng.randrange(3)
        if how == 0:  # cut anywhere: the IP total length now lies
            return packet[: rng.randrange(1, len(packet))]
        if how == 1:  # the IP total length says the TCP header is short
            return build(flow, rng, flags=rng.getrandbits(8), ip_len=20 + rng.randrange(0, 20))
        return build(flow, rng, flags=rng.getrandbits(8), ip_len=len(packet) + 200)

    def ip(rng: random.Random, i: int) -> bytes:
        how = rng.randrange(4)
        if how == 0:
            return build(flow, rng, flags=rng.getrandbits(8),
                         ip_options=rng.randbytes(4 * rng.randrange(1, 11)))
        if how == 1:  # a fragment: more-fragments or an offset
            return build(flow, rng, flags=rng.getrandbits(8), payload=rng.randbytes(16),
                         frag=rng.choice([0x2000, 0x0001, 0x3FFF, 0x2000 | rng.getrandbits(13)]))
        if how == 2:
            return build(flow, rng, flags=rng.getrandbits(8), ip_len=rng.randrange(0, 20))
        return build(flow, rng, flags=rng.getrandbits(8), ttl=0, reserved=rng.getrandbits(4))

    def urgent(rng: random.Random, i: int) -> bytes:
        return build(flow, rng, flags=0x20 | rng.getrandbits(8), urgent=rng.getrandbits(16),
                     window=rng.choice([0, 1, 65535]), payload=rng.randbytes(rng.randrange(0, 9)))

    return {"flags": flags, "options": options, "checksum": checksum, "offset": offset,
            "truncated": truncated, "ip": ip, "urgent": urgent}


def scapy_sample(flow: Flow, rng: random.Random, count: int) -> list[bytes]:
    """Packets from Scapy's fuzz(): random TCP fields and options; some with fuzzed IP too."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import fuzz

    saved = random.getstate()  # Scapy draws from the global RNG: seed it, for a repeatable run
    random.seed(rng.getrandbits(32))
    try:
        out = []
        for i in range(count):
            tcp = fuzz(TCP(sport=rng.choice(flow.sports), dport=flow.dport))
            ip = IP(src=flow.src, dst=flow.dst, version=4, proto=6)
            packet = bytes((fuzz(ip) if i % 4 == 0 else ip) / tcp)
            if len(packet) <= 1500:
                out.append(packet)
    finally:
        random.setstate(saved)
    return out


def fuzz_packets(flow: Flow, count: int, seed: int) -> tuple[list[bytes], Counter[str]]:
    """`count` packets: a Scapy sample, then the struct-built kinds in turn (flags the most)."""
    rng = random.Random(seed)
    packets = scapy_sample(flow, rng, 300)
    kinds: Counter[str] = Counter({"scapy": len(packets)})
    makers = categories(flow)
    order = ["flags"] * 4 + [name for name in makers if name != "flags"]
    i = 0
    while len(packets) < count:
        name = order[i % len(order)]
        packets.append(makers[name](rng, kinds[name]))
        kinds[name] += 1
        i += 1
    rng.shuffle(packets)
    assert kinds["flags"] >= 256 * 4  # every flag combination, several times
    return packets, kinds


class Spoofer:
    """The attacker host's raw Ethernet sender, aimed at one lab host (any source address)."""

    def __init__(self, lab: Lab, target: str) -> None:
        with lab.enter("attacker"):
            link = open_link(target)  # resolves the target's MAC (ARP) and our interface
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing
        link.close()
        assert link.dst_mac and link.src_mac
        self.iface = link.iface
        self.header = (bytes.fromhex(link.dst_mac.replace(":", ""))
                       + bytes.fromhex(link.src_mac.replace(":", "")) + b"\x08\x00")

    def send(self, packets: list[bytes], unread: Callable[[int], int] | None = None) -> float:
        """Send them all, paced; returns the seconds it took (bounded by SEND_CAP).

        `unread(n)`, if given, says how many of the first n packets the receiver has not
        read yet; sending waits while that is over MAX_UNREAD, so a busy machine slows
        the fuzz down instead of overflowing the receiver's socket.
        """
        started = time.monotonic()
        for at in range(0, len(packets), BURST):
            for packet in packets[at : at + BURST]:
                self.sock.sendto(self.header + packet, (self.iface, 0))
            time.sleep(PAUSE)
            while unread is not None and unread(at + BURST) > MAX_UNREAD:
                time.sleep(PAUSE)
                assert time.monotonic() - started < SEND_CAP, "the receiver stopped reading"
            assert time.monotonic() - started < SEND_CAP, "fuzz run took too long"
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def reaches_filter(packet: bytes) -> bool:
    """Would the receiver's BPF (IPv4, TCP, our address) pass it? It reads fixed offsets."""
    return len(packet) >= 20 and packet[9] == 6


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    """The lab with a plain L2 switch: by default the bridge runs iptables, which first drops
    packets with a bad IP header (checksum, lengths) before they could reach a host."""
    host_value = Path(BRIDGE_NF).read_text()
    with netns.enter(lab.switch_ns):
        Path(BRIDGE_NF).write_text("0\n")
    assert Path(BRIDGE_NF).read_text() == host_value  # per namespace: the host's is untouched
    yield lab
    finish(lab)


def any_u32(rng: random.Random) -> int:
    return rng.getrandbits(32)


# -- at tcpscapy listen ----------------------------------------------------------------


def test_listener_survives_10k_malformed_segments_and_still_serves_curl(
        net: Lab, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(body)
    server = tcpscapy_popen(net, "server", "listen", f"{SERVER}:{HTTP_PORT}", "--http",
                            str(tmp_path), "--json")
    assert server.stderr is not None
    read_until(server.stderr, b'"type":"listening"')
    # A few source ports, so that SYNs open connections and later fuzz lands in them.
    flow = Flow(ATTACKER, SERVER, [random.randrange(20000, 60000) for _ in range(32)],
                HTTP_PORT, any_u32, any_u32)
    packets, kinds = fuzz_packets(flow, FUZZ_COUNT, seed=9)
    spoofer = Spoofer(net, SERVER)
    try:
        took = spoofer.send(packets)
    finally:
        spoofer.close()
    time.sleep(0.5)  # let it drain its socket
    assert server.poll() is None, "tcpscapy listen died under fuzz"

    fetched = net.run("client", ["curl", "-sS", "--max-time", "20", "-o", "-",
                                 f"http://{SERVER}:{HTTP_PORT}/blob.bin"],
                      capture_output=True, timeout=30)
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(fetched.stdout).digest() == hashlib.sha256(body).digest()

    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=15)
    assert server.returncode == 143
    objects = [json.loads(line) for line in err.decode().splitlines()]  # a traceback is not JSON
    summary = next(o for o in objects if o["type"] == "summary")
    counters = summary["counters"]
    syns = sum(1 for p in packets if reaches_filter(p) and len(p) >= 34 and p[33] & 0x12 == 0x02)
    # The listener saw the attack: a good share of the SYNs became connections or cookies
    # (others were bad checksums, truncated, or hit connections the fuzz had opened).
    assert counters["syns_received"] > syns // 10, (counters, syns)
    print(f"\n  listen: {len(packets)} packets {dict(kinds)} in {took:.2f} s; {counters}")


# -- into an established connection ----------------------------------------------------


def test_established_connection_survives_10k_malformed_segments(net: Lab) -> None:
    port = kernel_server(net, "echo")
    before = tcp_counters(net, "server")
    try:
        with net.enter("client"):
            conn = tcpscapy.connect(SERVER, port, timeout=10)
        driver = conn.driver
        first = os.urandom(50_000)
        conn.sendall(first)
        assert recv_exactly(conn, len(first)) == first
        engine = conn.engine
        rcv_nxt, snd_nxt, snd_una = engine.rcv_nxt, engine.snd_nxt, engine.snd_una
        window = engine.config.recv_buffer

        def near_window(rng: random.Random) -> int:  # in or around the receive window
            return (rcv_nxt + rng.randrange(-2000, window)) & 0xFFFF_FFFF

        def bad_ack(rng: random.Random) -> int:  # never acceptable: beyond SND.NXT, or too old
            if rng.random() < 0.5:
                return (snd_nxt + rng.randrange(1, 1 << 30)) & 0xFFFF_FFFF
            return (snd_una - (1 << 20) - rng.randrange(0, 1 << 29)) & 0xFFFF_FFFF

        spoofed = Flow(SERVER, CLIENT, [port], conn.local[1], any_u32, any_u32)
        packets, _ = fuzz_packets(spoofed, FUZZ_COUNT // 2, seed=10)
        # Half of them aim at the window with an ACK that must be refused (RFC 5961 §5).
        aimed = Flow(SERVER, CLIENT, [port], conn.local[1], near_window, bad_ack)
        more, _ = fuzz_packets(aimed, FUZZ_COUNT // 2 + 100, seed=11)
        # Only an exact-match RST may end the connection; none of these is one. (Their
        # timestamps once poisoned PAWS: test_robustness_attacks.py::test_a_forged_tsval_...)
        packets += [p for p in more if not exact_rst(p, rcv_nxt)]
        assert len(packets) >= FUZZ_COUNT
        seen_before = read_by(driver)
        reaching = list(itertools.accumulate(map(reaches_filter, packets)))

        def unread(sent: int) -> int:
            return reaching[min(sent, len(packets)) - 1] - (read_by(driver) - seen_before)

        spoofer = Spoofer(net, CLIENT)
        try:
            took = spoofer.send(packets, unread)
        finally:
            spoofer.close()
        deadline = time.monotonic() + 5
        reach = reaching[-1]
        while read_by(driver) - seen_before < reach and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = read_by(driver) - seen_before
        assert seen >= 0.98 * reach, (seen, reach)  # the fuzz really went through the engine
        assert not driver.closed
        assert str(conn.state) == "ESTABLISHED"
        assert conn.engine.rcv_nxt == rcv_nxt  # not one forged byte was taken

        second = os.urandom(200_000)
        conn.sendall(second)
        assert recv_exactly(conn, len(second)) == second
        conn.close()
        assert conn.wait_closed(10)
        print(f"\n  connect: {len(packets)} packets in {took:.2f} s, {seen} read by the "
              f"driver ({driver.stats.undecodable} undecodable)")
    finally:
        close_all(linger=0.5)
    assert tcp_counters(net, "server")["EstabResets"] == before["EstabResets"]


def test_cli_connect_survives_10k_malformed_segments(net: Lab) -> None:
    port = kernel_server(net, "echo")
    sport = 45678
    proc = tcpscapy_popen(net, "client", "connect", f"{SERVER}:{port}", "--sport", str(sport),
                          "-q", stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"before the fuzz\n")
    proc.stdin.flush()
    read_until(proc.stdout, b"before the fuzz\n")
    flow = Flow(SERVER, CLIENT, [port], sport, any_u32, any_u32)
    packets, _ = fuzz_packets(flow, FUZZ_COUNT, seed=12)
    spoofer = Spoofer(net, CLIENT)
    try:
        spoofer.send(packets)
    finally:
        spoofer.close()
    assert proc.poll() is None, "tcpscapy connect died under fuzz"
    after = os.urandom(100_000)
    out, err = proc.communicate(after, timeout=30)
    assert (proc.returncode, err) == (0, b"")
    assert out == after


def read_by(driver: Driver) -> int:
    """Packets the driver has read: handed to the engine, foreign or undecodable."""
    stats = driver.stats
    return stats.received + stats.foreign + stats.undecodable


def exact_rst(packet: bytes, rcv_nxt: int) -> bool:
    """An RST whose seq is exactly RCV.NXT, which legitimately resets the connection."""
    if len(packet) < 40 or packet[0] >> 4 != 4:
        return False
    at = (packet[0] & 0xF) * 4
    if len(packet) < at + 14:
        return False
    return bool(packet[at + 13] & 0x04) and struct.unpack_from("!I", packet, at + 4)[0] == rcv_nxt

