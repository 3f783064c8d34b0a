"""The floor under any Python endpoint on AF_PACKET: a handshake with no TCP in it.

One frame out (a SYN built before the clock starts), wait on the packet socket for
the SYN-ACK, one frame back (the ACK: struct.pack and two checksums), done: no
engine, no codec beyond that, no driver, no guard (a static rule in the lab's
client host drops the kernel's RSTs instead). Whatever tcpscapy.connect() costs
above this figure is ours; what this figure costs above the kernel's connect()
is the price of sending from CPython through a packet socket, which no design
on these sockets avoids. Each sample is the median of HANDSHAKES, in a lab of
its own (prefix `tsbf` + random hex), with the kernel's connect() measured in the
same lab for the ratio. Needs root.
"""

from __future__ import annotations

import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tcpscapy.lab import Lab

PORT = 7777
HANDSHAKES = 300
WARMUP = 20
FIRST_PORT = 20000  # source ports of the bare handshakes: one each, never reused
SYN, RST, ACK, SYN_ACK = 0x02, 0x04, 0x10, 0x12
ETH_P_IP = 0x0800
_TCP = struct.Struct("!HHIIBBHHH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_PSEUDO = struct.Struct("!4s4sBBH")

ACCEPT_LOOP = """
import socket
srv = socket.create_server(("0.0.0.0", %d), backlog=4096)
print("ready", flush=True)
while True:
    srv.accept()[0].close()
"""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class BareClient:
    """Frames for one client address and one server port, on one AF_PACKET socket."""

    def __init__(self, iface: str, src: str, dst: str, dst_mac: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.bind((iface, ETH_P_IP))
        self.eth = dst_mac + self.sock.getsockname()[4] + struct.pack("!H", ETH_P_IP)
        self.src, self.dst = socket.inet_aton(src), socket.inet_aton(dst)
        self.buf = bytearray(2048)

    def frame(self, sport: int, seq: int, ack: int, flags: int) -> bytes:
        tcp = bytearray(_TCP.pack(sport, PORT, seq, ack, 5 << 4, flags, 64240, 0, 0))
        struct.pack_into("!H", tcp, 16, checksum(
            _PSEUDO.pack(self.src, self.dst, 0, socket.IPPROTO_TCP, len(tcp)) + tcp))
        ip = bytearray(_IP.pack(0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
                                self.src, self.dst))
        struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
        return self.eth + ip + tcp

    def handshake(self, sport: int) -> float:
        """Seconds from the SYN's send to the ACK's; then a RST ends it (not timed)."""
        syn, buf = self.frame(sport, 1000, 0, SYN), self.buf
        began = time.perf_counter()
        self.sock.send(syn)
        while True:  # bounded by the socket timeout
            n = self.sock.recv_into(buf)
            if n >= 54 and buf[23] == socket.IPPROTO_TCP and buf[47] & SYN_ACK == SYN_ACK \
                    and struct.unpack_from("!H", buf, 36)[0] == sport:
                break
        server_isn = struct.unpack_from("!I", buf, 38)[0]
        self.sock.send(self.frame(sport, 1001, (server_isn + 1) & 0xFFFFFFFF, ACK))
        took = time.perf_counter() - began
        self.sock.send(self.frame(sport, 1001, 0, RST))
        return took

    def close(self) -> None:
        self.sock.close()


@contextmanager
def floor_lab() -> Iterator[Lab]:
    lab = Lab(f"tsbf{secrets.token_hex(3)}")
    try:
        lab.up()
        server = lab.popen("server", [sys.executable, "-c", ACCEPT_LOOP % PORT],
                           stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the floor benchmark's kernel listener did not start")
        # The client kernel would reset each SYN-ACK it has no socket for.
        with lab.enter("client"):
            subprocess.run(["iptables", "-w", "5", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags",
                            "RST", "RST", "-j", "DROP"], check=True, capture_output=True)
        yield lab
    finally:
        lab.down()  # stops the listener, and the rule goes with the namespace


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def figures_in_one_lab() -> tuple[float, float]:
    """(bare AF_PACKET handshake µs, kernel connect() µs), medians, in one lab."""
    with floor_lab() as lab:
        server = lab.addr("server")
        with lab.enter("client"):
            kernel = []
            for i in range(WARMUP + HANDSHAKES):
                with socket.socket() as s:
                    began = time.perf_counter()
                    s.connect((server, PORT))
                    if i >= WARMUP:
                        kernel.append(time.perf_counter() - began)
            neigh = subprocess.run(["ip", "-j", "neigh", "show", server], capture_output=True,
                                   text=True, check=True).stdout
            mac = bytes.fromhex(neigh.split('"lladdr":"')[1][:17].replace(":", ""))
            client = BareClient("eth0", lab.addr("client"), server, mac)
            client.sock.settimeout(2.0)
            try:
                bare = [client.handshake(FIRST_PORT + i) for i in range(WARMUP + HANDSHAKES)]
            finally:
                client.close()
    return _median_us(bare[WARMUP:]), _median_us(kernel)


FLOOR = "client handshake floor: bare AF_PACKET SYN/SYN-ACK/ACK from Python (no TCP)"
FLOOR_KERNEL = "client handshake floor lab: kernel connect()"
_kernel_samples: list[float] = []  # taken with each floor sample, reported as their own figure


def bare_handshake_us() -> float:
    bare, kernel = figures_in_one_lab()
    _kernel_samples.append(kernel)
    return bare


def kernel_connect_us() -> float:
    if not _kernel_samples:
        bare_handshake_us()
    return _kernel_samples.pop(0)


FIGURES = [
    (FLOOR, "µs", bare_handshake_us),
    (FLOOR_KERNEL, "µs", kernel_connect_us),
]


if __name__ == "__main__":
    floor, kernel = figures_in_one_lab()
    print(f"bare AF_PACKET handshake {floor:.1f} µs, kernel connect() {kernel:.1f} µs "
          f"({floor / kernel:.1f}x)")
