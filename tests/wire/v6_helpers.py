"""IPv6 in a lab for the v6 wire tests: addresses, frames on eth0, a minimal engine loop.

Labs turn IPv6 off (lab.py); these helpers turn it on for one test's lab and
add ULA addresses with `nodad`, usable at once. `EngineHost` runs a core Stack
over codec6 on an AF_PACKET socket with an address the namespace's kernel does
not have (so the kernel neither answers nor resets what is ours), the peer
reaching it through a permanent neighbour entry: a stand-in for the driver
until the driver speaks IPv6.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence

from tcpscapy.core.segment import Segment
from tcpscapy.core.stack import Stack
from tcpscapy.io import bpf6
from tcpscapy.io.codec6 import decode6, encode6
from tcpscapy.lab import Lab

ETH_P_IPV6 = 0x86DD
KERNEL6 = {"client": "fd77::1", "server": "fd77::2"}
WAIT_S = 5.0  # bound for an answer that normally takes well under a millisecond


def mac_of(lab: Lab, host: str) -> bytes:
    out = subprocess.run(["ip", "-n", lab.ns(host), "-j", "link", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def enable_ipv6(lab: Lab, *hosts: str) -> None:
    """IPv6 on in `hosts` of a flat lab, each with its KERNEL6 address on eth0."""
    for host in hosts:
        ipv6_on(lab, host, {"eth0": f"{KERNEL6[host]}/64"})


def ipv6_on(lab: Lab, host: str, addresses: dict[str, str]) -> None:
    """IPv6 on in `host` with `addresses` (interface -> address/prefix); no DAD (the
    link-local addresses are usable at once too), ICMPv6 not rate limited."""
    for scope in ("all", "default", "lo", *addresses):
        lab.sysctl(host, f"net.ipv6.conf.{scope}.accept_dad", "0")
        lab.sysctl(host, f"net.ipv6.conf.{scope}.disable_ipv6", "0")
    lab.sysctl(host, "net.ipv6.icmp.ratelimit", "0")
    for iface, address in addresses.items():
        subprocess.run(["ip", "-n", lab.ns(host), "addr", "add", address, "dev", iface,
                        "nodad"], check=True, capture_output=True)
    for iface in addresses:
        # Even without DAD an address is tentative until the kernel's address work runs,
        # which a busy machine delays; a tentative address is never a source.
        deadline = time.monotonic() + 10.0
        while "tentative" in (out := _addresses(lab, host, iface)) or "scope link" not in out:
            assert time.monotonic() < deadline, f"{host}: addresses still tentative: {out}"
            time.sleep(0.05)


def _addresses(lab: Lab, host: str, iface: str) -> str:
    return subprocess.run(["ip", "-n", lab.ns(host), "-6", "addr", "show", "dev", iface],
                          capture_output=True, text=True, check=True).stdout


class Wire:
    """IPv6 frames to `peer`'s MAC, and IPv6 frames received, on `host`'s eth0; only
    those to the `accept` addresses when given (bpf6's filter, in the kernel)."""

    def __init__(self, lab: Lab, host: str, peer: str, accept: Sequence[str] = ()) -> None:
        with lab.enter(host):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            if accept:
                bpf6.attach(self.sock, accept)
            self.sock.bind(("eth0", ETH_P_IPV6))
        self.header = mac_of(lab, peer) + mac_of(lab, host) + struct.pack("!H", ETH_P_IPV6)

    def send(self, packet: bytes) -> None:
        self.sock.send(self.header + packet)

    def recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        return self.sock.recv(65536)[14:] if ready else None

    def wait(self, match: Callable[[bytes], object]) -> object:
        """The first non-None match(IPv6 packet) within WAIT_S, else None."""
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            packet = self.recv(left)
            if packet is not None and (found := match(packet)) is not None:
                return found
        return None

    def close(self) -> None:
        self.sock.close()


class EngineHost:
    """A core Stack at `address` in `host`, exchanging segments with `peer` over codec6."""

    def __init__(self, lab: Lab, host: str, peer: str, address: str, stack: Stack) -> None:
        self.wire = Wire(lab, host, peer, accept=[address])
        self.address, self.stack = address, stack
        self.sent: list[Segment] = []
        self.received: list[Segment] = []
        mac = mac_of(lab, host).hex(":")
        subprocess.run(["ip", "-n", lab.ns(peer), "-6", "neigh", "replace", address, "lladdr",
                        mac, "dev", "eth0", "nud", "permanent"], check=True, capture_output=True)

    def step(self, timeout: float = 0.05) -> None:
        """Wait up to `timeout` (or the next timer) for one packet, then send what is due."""
        now = time.monotonic()
        due = self.stack.get_timer()
        packet = self.wire.recv(min(timeout, due - now) if due is not None else timeout)
        now = time.monotonic()
        if packet is not None:
            seg = decode6(packet)
            if seg is not None and seg.dst == self.address:
                self.received.append(seg)
                self.stack.receive(seg, now)
        self.stack.handle_timer(now)
        for seg in self.stack.segments_to_send(now):
            self.sent.append(seg)
            self.wire.send(encode6(seg))

    def run_until(self, done: Callable[[], bool], seconds: float = 20.0,
                  app: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if app is not None:
                app()
            if done():
                return True
            self.step()
        return done()

    def close(self) -> None:
        self.wire.close()
