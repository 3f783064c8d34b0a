"""Offloaded sends on a real veth: what the kernel puts on the wire from a GSO packet.

A capture socket in the server host (AF_PACKET, every frame arriving on eth0)
sees the segments the kernel cut; Scapy recomputes each checksum independently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import tcpscapy
from tcpscapy.core.options import Options
from tcpscapy.core.segment import ACK, PSH, Segment
from tcpscapy.io import codec, rawsock
from tcpscapy.io.driver import close_all
from tcpscapy.lab import Lab

pytestmark = pytest.mark.wire
LAB_PREFIX = "tsp"
ETH_P_ALL = 0x0003
WAIT_S = 2.0  # bound for frames that normally arrive within a millisecond


class Capture:
    """Frames arriving on the server host's eth0, read on a thread until stopped."""

    def __init__(self, lab: Lab) -> None:
        with lab.enter("server"):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind(("eth0", 0))
        self.sock.settimeout(0.1)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                self.frames.append(frame)

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.frames

    def tcp_from(self, sport: int) -> list[Ether]:
        return [pkt for pkt in map(Ether, self.stop())
                if TCP in pkt and pkt[TCP].sport == sport]


def checksums_ok(pkt: Ether) -> bool:
    """Scapy's own IP and TCP checksums of the same fields equal what came in."""
    ip = pkt[IP].copy()
    got = (ip.chksum, ip[TCP].chksum)
    del ip.chksum, ip[TCP].chksum
    rebuilt = IP(bytes(ip))
    return got == (rebuilt.chksum, rebuilt[TCP].chksum)


@pytest.fixture
def capture(lab: Lab) -> Iterator[Capture]:
    cap = Capture(lab)
    try:
        yield cap
    finally:
        if cap._thread.is_alive():
            cap.stop()


def kernel_sink(lab: Lab) -> tuple[int, list[bytes]]:
    """A kernel listener in the server host that keeps what its one client sends."""
    with lab.enter("server"):
        srv = socket.create_server((lab.addr("server"), 0))
    got: list[bytes] = []

    def serve() -> None:
        with srv:
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                data = bytearray()
                while chunk := conn.recv(1 << 20):
                    data += chunk
                got.append(bytes(data))

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], got


def test_a_gso_packet_leaves_as_mss_segments_with_good_checksums(
        lab: Lab, capture: Capture) -> None:
    with lab.enter("client"):
        link = rawsock.open_link(lab.addr("server"))
    with link:
        assert link.offload
        mss, n = 1448, 5
        payload = os.urandom(mss * (n - 1) + 100)
        run = [Segment(link.src_ip, link.dst_ip, 40123, 9, 1000 + i * mss, 77,
                       ACK | (PSH if i == n - 1 else 0), 512, Options(timestamps=(5, 6)),
                       payload[i * mss : (i + 1) * mss]) for i in range(n)]
        assert codec.gso_runs(run) == [run]
        link.send_offload(codec.encode_run(run), mss)
        time.sleep(0.2)
    frames = capture.tcp_from(40123)
    assert [len(f[TCP].payload) for f in frames] == [mss] * (n - 1) + [100]
    assert all(checksums_ok(f) for f in frames)
    assert [codec.decode(bytes(f[IP])) for f in frames] == run


def test_bulk_send_to_a_kernel_sink_is_intact_and_cut_at_the_mss(
        lab: Lab, capture: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    gso_calls: list[int] = []
    real = rawsock.Link.send_offload

    def counting(self: rawsock.Link, packet: bytes, gso_size: int = 0) -> None:
        if gso_size:
            gso_calls.append(len(packet))
        real(self, packet, gso_size)

    monkeypatch.setattr(rawsock.Link, "send_offload", counting)
    port, got = kernel_sink(lab)
    data = os.urandom(400_000)
    try:
        with lab.enter("client"):
            conn = tcpscapy.connect(lab.addr("server"), port, timeout=5)
            conn.sendall(data, timeout=10)
            conn.close()
        deadline = time.monotonic() + WAIT_S
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        close_all(linger=0.5)
    assert got == [data]
    assert gso_calls and max(gso_calls) > 3 * 1448  # the driver did send GSO runs
    full = max(len(e.segment.payload) for e in conn.trace if e.segment is not None)
    assert full <= conn.engine.snd_mss - 12  # MSS less the timestamps option
    frames = capture.tcp_from(conn.local[1])
    assert all(len(f[TCP].payload) <= full for f in frames)
    assert sum(1 for f in frames if len(f[TCP].payload) == full) > len(data) // full // 2
    bad = [f.summary() for f in frames if not checksums_ok(f)]
    assert not bad


def test_the_namespace_key_follows_setns_and_threads(lab: Lab) -> None:
    from tcpscapy import netns
    from tcpscapy.io.plumbing import thread_netns_key

    home = thread_netns_key()
    assert home == f"net:[{netns.current_id()}]"
    with lab.enter("client"):
        inside = thread_netns_key()
        assert inside == f"net:[{netns.current_id()}]" != home
        other: list[str] = []
        thread = threading.Thread(target=lambda: other.append(thread_netns_key()))
        thread.start()
        thread.join()
        assert other == [inside]  # a new thread starts where its creator is
    assert thread_netns_key() == home


def test_links_without_offload_refuse_it_cleanly(lab: Lab) -> None:
    seg = Segment("127.0.0.1", "127.0.0.1", 40124, 9, 1, 0, ACK, 512)
    with lab.enter("client"):
        plain = rawsock.open_link(lab.addr("server"), offload=False)
        loopback = rawsock.open_link("127.0.0.1")
    with plain, loopback:
        for link in (plain, loopback):
            assert not link.offload
            with pytest.raises(rawsock.OffloadRefused):
                link.send_offload(codec.encode_offload(seg))


def set_mtu(lab: Lab, mtu: int) -> None:
    for ns, dev in ((lab.ns("client"), "eth0"), (lab.switch_ns, "client"),
                    (lab.switch_ns, "server"), (lab.switch_ns, "br0"), (lab.ns("server"), "eth0")):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], check=True)


def test_the_receive_ring_reads_small_and_oversized_frames(lab: Lab) -> None:
    set_mtu(lab, 9000)
    with lab.enter("client"):
        link = rawsock.open_link(lab.addr("server"))
    with lab.enter("server"):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind(("eth0", 0))
    with link, tx:
        assert link._ring is not None
        eth = bytes.fromhex(link.src_mac.replace(":", "")) + tx.getsockname()[4][:6] + b"\x08\x00"
        sizes = (0, 1000, 6000)  # fits a slot; fits; only the whole copy holds it
        sent = [codec.encode(Segment(link.dst_ip, link.src_ip, 9, 40125, n, 0, ACK, 512,
                                     payload=os.urandom(n))) for n in sizes]
        for packet in sent:
            tx.send(eth + packet)
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < len(sent) and time.monotonic() < deadline:
            got += [r.packet for r in link.recv_many()]
            time.sleep(0.01)
    assert got == sent
    assert link.truncated == 0
