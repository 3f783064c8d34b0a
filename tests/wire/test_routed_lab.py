"""The routed lab (tcpscapy.routed): topology, forwarding, route MTU, NAT, ICMP filter, CLI."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from tcpscapy import netns
from tcpscapy.cli import main
from tcpscapy.lab import Lab, LabError, LabUsageError
from tcpscapy.routed import RoutedLab, open_lab, runtime_dir

pytestmark = pytest.mark.wire
LAB_PREFIX = "rt"
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
ICMP_UNREACH, FRAG_NEEDED, PORT_UNREACH = 3, 4, 3


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines()
                  if line.startswith(f"{prefix}-"))


@pytest.fixture
def routed(unique_prefix: str) -> Iterator[Callable[..., RoutedLab]]:
    """Build the routed lab with the given options; it is always torn down afterwards."""
    def build(**options: object) -> RoutedLab:
        return RoutedLab(unique_prefix, **options).up()  # type: ignore[arg-type]

    try:
        yield build
    finally:
        RoutedLab(unique_prefix).down()
    assert lab_namespaces(unique_prefix) == [], "the routed lab left namespaces behind"


def tcp_exchange(lab: Lab, client: str, server: str) -> tuple[bytes, str]:
    """Kernel TCP from `client` to `server`; returns (bytes the server got, source it saw)."""
    with lab.enter(server):
        listener = socket.create_server((lab.addr(server), 0))
    with listener:
        with lab.enter(client):
            conn = socket.create_connection(listener.getsockname(), timeout=5)
        with conn:
            conn.sendall(b"x" * 5000 + f"hello from {client}".encode())
            conn.shutdown(socket.SHUT_WR)
            peer, (peer_ip, _) = listener.accept()
            with peer:
                peer.settimeout(5)
                got = b""
                while chunk := peer.recv(65536):
                    got += chunk
                return got, peer_ip


def icmp_after_oversized_datagram(lab: RoutedLab, size: int) -> list[tuple[int, int, str, int]]:
    """From the client: a DF datagram of `size` bytes to the server, then a small one to a
    closed port. Returns the ICMP (type, code, source, next-hop MTU) the client got, up to
    and including the port unreachable that the second one draws: anything the router said
    about the first arrives before it."""
    server = (lab.addr("server"), 9)  # discard: nothing listens
    seen: list[tuple[int, int, str, int]] = []
    with lab.enter("client"):
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with icmp, udp:
        udp.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        udp.sendto(b"\0" * (size - 28), server)  # 20 IP + 8 UDP
        udp.sendto(b"probe", server)
        icmp.settimeout(1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                packet, (source, _) = icmp.recvfrom(2048)
            except TimeoutError:
                continue
            ihl = (packet[0] & 0x0F) * 4
            kind, code = packet[ihl], packet[ihl + 1]
            (mtu,) = struct.unpack_from("!H", packet, ihl + 6)
            seen.append((kind, code, source, mtu))
            if (kind, code) == (ICMP_UNREACH, PORT_UNREACH):
                return seen
    raise AssertionError(f"no port unreachable from the server; ICMP seen: {seen}")


# -- topology ------------------------------------------------------------------------


def test_up_builds_the_routed_topology_and_down_removes_everything(unique_prefix: str) -> None:
    lab = RoutedLab(unique_prefix)
    assert lab.status()["state"] == "down" and not lab.exists()
    lab.up()
    status = lab.status()
    assert status["state"] == "up" and status["kind"] == "routed"
    assert lab_namespaces(unique_prefix) == sorted(
        f"{unique_prefix}-{h}" for h in ("client", "server", "attacker", "router"))
    assert {h: s["address"] for h, s in status["hosts"].items()} == {
        "client": "10.78.1.2/24", "server": "10.78.2.2/24", "attacker": "10.78.3.2/24"}
    router = status["router"]
    assert router["forwarding"] and not router["nat"] and not router["drop_icmp"]
    assert {h: link["mtu"] for h, link in router["links"].items()} == dict.fromkeys(
        ("client", "server", "attacker"), 1500)
    assert isinstance(open_lab(unique_prefix), RoutedLab)
    with pytest.raises(LabError, match="is up as a routed lab"):
        Lab(unique_prefix).up()  # a flat lab never wires into the routed one
    assert lab.status()["state"] == "up"
    lab.down()
    lab.down()  # idempotent
    assert lab_namespaces(unique_prefix) == [] and not runtime_dir(unique_prefix).exists()
    assert lab.status()["state"] == "down" and type(open_lab(unique_prefix)) is Lab


def test_kernel_tcp_crosses_the_router_and_offloads_are_off(
        routed: Callable[..., RoutedLab]) -> None:
    lab = routed()
    for client, server in [("client", "server"), ("server", "client"), ("attacker", "client")]:
        got, source = tcp_exchange(lab, client, server)
        assert got.endswith(f"hello from {client}".encode()) and len(got) == 5000 + len(
            f"hello from {client}")
        assert source == lab.addr(client)  # no NAT: the router forwards untouched
    ends = [(lab.ns(h), "eth0") for h in ("client", "server")]
    ends += [(lab.router_ns, f"eth-{h}") for h in ("client", "server")]
    for ns, dev in ends:
        with netns.enter(ns):
            out = subprocess.run(["ethtool", "-k", dev], capture_output=True, text=True,
                                 check=True).stdout
        assert "generic-segmentation-offload: off" in out and "rx-checksumming: off" in out


def test_router_sends_frag_needed_for_an_oversized_df_packet(
        routed: Callable[..., RoutedLab]) -> None:
    lab = routed(mtu_server_side=1280)
    assert lab.status()["router"]["links"]["server"]["mtu"] == 1280
    seen = icmp_after_oversized_datagram(lab, 1400)
    assert (ICMP_UNREACH, FRAG_NEEDED, lab.gateway("client"), 1280) in seen
    # At the MTU itself nothing is said: only the port unreachable comes back.
    lab_small = icmp_after_oversized_datagram(lab, 1280)
    assert [(k, c) for k, c, _, _ in lab_small] == [(ICMP_UNREACH, PORT_UNREACH)]


def test_drop_icmp_makes_a_black_hole(routed: Callable[..., RoutedLab]) -> None:
    lab = routed(mtu_server_side=1280, drop_icmp=True)
    assert lab.status()["router"]["drop_icmp"]
    seen = icmp_after_oversized_datagram(lab, 1400)
    assert [(k, c) for k, c, _, _ in seen] == [(ICMP_UNREACH, PORT_UNREACH)]
    # Declarative up: the same lab without the option says frag-needed again.
    RoutedLab(lab.prefix, mtu_server_side=1280).up()
    seen = icmp_after_oversized_datagram(lab, 1400)
    assert (ICMP_UNREACH, FRAG_NEEDED, lab.gateway("client"), 1280) in seen


def test_nat_rewrites_the_source_toward_the_server(routed: Callable[..., RoutedLab]) -> None:
    lab = routed(nat=True)
    assert lab.status()["router"]["nat"]
    got, source = tcp_exchange(lab, "client", "server")
    assert got.endswith(b"hello from client")
    assert source == lab.gateway("server") == "10.78.2.1"
    got, source = tcp_exchange(lab, "server", "client")  # toward the client: untouched
    assert source == lab.addr("server")


def test_bad_options_are_refused(unique_prefix: str) -> None:
    for mtu in (0, 1, 575, 65535):
        with pytest.raises(LabUsageError, match="mtu-server-side"):
            RoutedLab(unique_prefix, mtu_server_side=mtu)
    with pytest.raises(LabUsageError, match="unknown host 'sw'"):
        RoutedLab(unique_prefix).ns("sw")
    assert lab_namespaces(unique_prefix) == []


# -- CLI -----------------------------------------------------------------------------


def test_cli_up_status_exec_down(unique_prefix: str) -> None:
    runner = CliRunner()
    p = ["--prefix", unique_prefix]
    try:
        res = runner.invoke(main, ["lab", "up", *p, "--nat"])
        assert res.exit_code == 2 and "--nat need --routed" in res.output
        res = runner.invoke(main, ["lab", "up", *p, "--routed", "--mtu-client-side", "1"])
        assert res.exit_code == 2 and "mtu-client-side" in res.output
        assert lab_namespaces(unique_prefix) == []

        res = runner.invoke(main, ["lab", "up", *p, "--routed", "--mtu-client-side", "1280",
                                   "--nat", "--drop-icmp"])
        assert res.exit_code == 0, res.output
        assert "up (routed)" in res.output and "mtu 1280" in res.output
        info = json.loads(runner.invoke(main, ["lab", "status", *p, "--json"]).output)
        assert info["state"] == "up" and info["router"]["nat"] and info["router"]["drop_icmp"]
        assert info["router"]["links"]["client"]["mtu"] == 1280
        out = subprocess.run([sys.executable, "-m", "tcpscapy", "lab", "exec", *p, "router",
                              "--", "ip", "route"], capture_output=True, text=True)
        assert out.returncode == 0 and "eth-client" in out.stdout and "mtu 1280" in out.stdout
        res = runner.invoke(main, ["lab", "up", *p])
        assert res.exit_code == 1 and "routed lab" in res.output
        res = runner.invoke(main, ["lab", "flood", *p])
        assert res.exit_code == 2 and "flat lab" in res.output
        res = runner.invoke(main, ["lab", "down", *p])
        assert res.exit_code == 0 and "removed" in res.output
        assert lab_namespaces(unique_prefix) == []
    finally:
        RoutedLab(unique_prefix).down()
