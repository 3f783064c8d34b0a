"""The routed lab: client, server and attacker on three subnets, a forwarding router between.

    {prefix}-client   eth0 10.78.1.2/24 ── eth-client   10.78.1.1 ┐
    {prefix}-server   eth0 10.78.2.2/24 ── eth-server   10.78.2.1 ├ {prefix}-router
    {prefix}-attacker eth0 10.78.3.2/24 ── eth-attacker 10.78.3.1 ┘

Each host has a default route via the router; the router has no default route, so nothing
leaves the lab. The 10.78.0.0/16 addresses never clash with the flat lab's 10.77.0.0/24.
The attacker sits on a subnet of its own: off the client—server path (blind), but it can
reach both, and the router does no reverse-path filtering, so its spoofed packets pass.

What the options change, all on the router:
- ``mtu_client_side`` / ``mtu_server_side``: the MTU of the router's route onto that link.
  A packet the router forwards onto it that is larger gets "fragmentation needed" (DF set)
  or is fragmented. The hosts keep MTU 1500 and do not know: that is what makes path MTU
  discovery necessary. (A route MTU rather than the device MTU, because a veth drops
  frames larger than its own MTU on receive, which would make a silent black hole.)
- ``nat``: MASQUERADE toward the server, so the server sees the router's 10.78.2.1.
- ``drop_icmp``: drop every "fragmentation needed" the router would send or forward:
  a path MTU black hole. Other ICMP still passes.
Path impairment (delay, loss, ...) is a process on the router: `RoutedLab.path`.

`up()` is declarative: the router ends up as this object's options say, whatever it was.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpscapy import netns
from tcpscapy.lab import (
    HOST_IFACE,
    Lab,
    LabError,
    LabUsageError,
    _first_line,
    _ip,
    _link_exists,
    _link_info,
    _offloads_off,
    _require_tools,
    lab_kind,
)

ROUTER = "router"
# host -> third octet of its subnet; the router is .1 on each, the host .2.
SUBNETS: dict[str, int] = {"client": 1, "server": 2, "attacker": 3}
ROUTED_HOSTS: tuple[str, ...] = ("client", "server", "attacker", ROUTER)
PREFIXLEN = 24
DEFAULT_MTU = 1500
MIN_MTU, MAX_MTU = 576, 9000  # IPv4's guaranteed datagram size; a jumbo frame
ROUTER_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    # Off, so the attacker's spoofed sources are forwarded like a real router without uRPF.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
)
RULE_COMMENT = "tcpscapy-lab"
RUNTIME_ROOT = Path("/run/tcpscapy")


def router_iface(host: str) -> str:
    """The router's end of the link to `host` (at most 15 characters: eth-attacker is 12)."""
    return f"eth-{host}"


def host_addr(host: str) -> str:
    return f"10.78.{SUBNETS[host]}.2"


def gateway_addr(host: str) -> str:
    """The router's address on `host`'s subnet."""
    return f"10.78.{SUBNETS[host]}.1"


def _rules(option: str) -> list[tuple[str, ...]]:
    """The iptables rules (table, chain, match/target...) an option puts on the router."""
    frag_needed = ("-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP")
    return {
        "nat": [("nat", "POSTROUTING", "-o", router_iface("server"), "-j", "MASQUERADE")],
        "drop_icmp": [("filter", "OUTPUT", *frag_needed), ("filter", "FORWARD", *frag_needed)],
    }[option]


def runtime_dir(prefix: str) -> Path:
    """Where a lab keeps its processes' pid files, control sockets and logs."""
    return RUNTIME_ROOT / f"lab-{prefix}"


def open_lab(prefix: str) -> Lab:
    """The lab named `prefix` as it is: a RoutedLab if its router exists, else a flat Lab."""
    flat = Lab(prefix)  # checks the prefix before it becomes part of a path
    return RoutedLab(prefix) if lab_kind(prefix) == "routed" else flat


@dataclass
class RoutedLab(Lab):
    """Namespaces `{prefix}-client|server|attacker|router`; see the module docstring."""

    mtu_client_side: int = DEFAULT_MTU
    mtu_server_side: int = DEFAULT_MTU
    nat: bool = False
    drop_icmp: bool = False
    hosts: tuple[str, ...] = field(default=ROUTED_HOSTS, init=False)
    kind: str = field(default="routed", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mtu_client_side", "mtu_server_side"):
            mtu = getattr(self, name)
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
                raise LabUsageError(f"bad {name.replace('_', '-')} {mtu!r}: "
                                    f"use {MIN_MTU}..{MAX_MTU}")

    # -- names -------------------------------------------------------------------------

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}-{ROUTER}"

    def namespaces(self) -> list[str]:
        return [self.router_ns, *(self.ns(h) for h in SUBNETS)]

    def addr(self, host: str) -> str:
        """IPv4 address of `host`; for the router, its address on the client's subnet."""
        host = self._check_host(host)
        return gateway_addr("client") if host == ROUTER else host_addr(host)

    def gateway(self, host: str) -> str:
        """The router's address on `host`'s subnet (client, server or attacker)."""
        return gateway_addr(self._end_host(host))

    @property
    def runtime_dir(self) -> Path:
        return runtime_dir(self.prefix)

    # -- lifecycle ---------------------------------------------------------------------

    def up(self, sysctls: Any = ()) -> RoutedLab:
        """Build (or repair) the lab, set the router as the options say, apply sysctls."""
        _require_tools("ip", "ethtool", "iptables")
        self._refuse_other_kind()
        created: list[str] = []
        try:
            for name in self.namespaces():
                if not netns.exists(name):
                    _ip("netns", "add", name)
                    created.append(name)
                self._quiet(name)
            _ip("-n", self.router_ns, "link", "set", "lo", "up")
            for key, value in ROUTER_SYSCTLS:
                self.sysctl(ROUTER, key, value)
            for host in SUBNETS:
                self._link(host)
            self._set_route_mtu("client", self.mtu_client_side)
            self._set_route_mtu("server", self.mtu_server_side)
            for option in ("nat", "drop_icmp"):
                self._set_rules(option, getattr(self, option))
            for host, key, value in sysctls:
                self.sysctl(host, key, value)
        except BaseException:
            for name in created:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            raise
        return self

    def down(self) -> None:
        """Stop the lab's processes (the path impairment too), remove its namespaces."""
        from tcpscapy.impair.control import stop  # the impairment builds on this module

        _require_tools("ip")
        stop(self)
        super().down()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """As Lab.status, with the router's links, forwarding, MTUs, NAT and ICMP filter."""
        from tcpscapy.impair.control import path_status

        _require_tools("ip")
        router_present = netns.exists(self.router_ns)
        links: dict[str, dict[str, Any]] = {}
        hosts: dict[str, dict[str, Any]] = {}
        for host in SUBNETS:
            name = self.ns(host)
            present = netns.exists(name)
            info = _link_info(name, HOST_IFACE) if present else {}
            addr = f"{host_addr(host)}/{PREFIXLEN}"
            hosts[host] = {
                "namespace": name, "present": present, "interface": HOST_IFACE,
                "address": addr, "link_up": info.get("up", False),
                "has_address": addr in info.get("addrs", ()),
            }
            rinfo = _link_info(self.router_ns, router_iface(host)) if router_present else {}
            gw = f"{gateway_addr(host)}/{PREFIXLEN}"
            links[host] = {
                "interface": router_iface(host), "address": gw,
                "link_up": rinfo.get("up", False), "has_address": gw in rinfo.get("addrs", ()),
                "mtu": self._route_mtu(host) if router_present else None,
            }
        router: dict[str, Any] = {"namespace": self.router_ns, "present": router_present,
                                  "links": links}
        if router_present:
            router["forwarding"] = self.sysctl(ROUTER, "net.ipv4.ip_forward") == "1"
            router["nat"] = self._has_rules("nat")
            router["drop_icmp"] = self._has_rules("drop_icmp")
        parts = [router_present, *(h["present"] for h in hosts.values())]
        healthy = router_present and router["forwarding"] and all(
            x["link_up"] and x["has_address"] for x in (*hosts.values(), *links.values())
        )
        state = "down" if not any(parts) else "up" if all(parts) and healthy else "partial"
        return {"prefix": self.prefix, "kind": self.kind, "state": state, "router": router,
                "hosts": hosts, "path": path_status(self) if router_present else None}

    # -- internals ---------------------------------------------------------------------

    def _end_host(self, host: str) -> str:
        if host not in SUBNETS:
            raise LabUsageError(f"no link for {host!r}: choose one of {', '.join(SUBNETS)}")
        return host

    def _link(self, host: str) -> None:
        """One veth pair, router end `eth-HOST`, host end eth0, addresses and routes."""
        router, name, rif = self.router_ns, self.ns(host), router_iface(host)
        if not (_link_exists(router, rif) and _link_exists(name, HOST_IFACE)):
            for ns, dev in ((router, rif), (name, HOST_IFACE)):  # a stray half (see Lab._wire)
                if _link_exists(ns, dev):
                    subprocess.run(["ip", "-n", ns, "link", "del", dev], capture_output=True)
            _ip("-n", router, "link", "add", rif, "type", "veth", "peer", "name", HOST_IFACE,
                "netns", name)
        _ip("-n", router, "addr", "replace", f"{gateway_addr(host)}/{PREFIXLEN}", "dev", rif)
        _ip("-n", router, "link", "set", rif, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "replace", f"{host_addr(host)}/{PREFIXLEN}", "dev", HOST_IFACE)
        _ip("-n", name, "link", "set", HOST_IFACE, "up")
        _ip("-n", name, "route", "replace", "default", "via", gateway_addr(host))
        _offloads_off(router, rif)
        _offloads_off(name, HOST_IFACE)

    def _subnet_route(self, host: str) -> list[str]:
        subnet = f"10.78.{SUBNETS[host]}.0/{PREFIXLEN}"
        return [subnet, "dev", router_iface(host), "proto", "kernel", "scope", "link",
                "src", gateway_addr(host)]

    def _set_route_mtu(self, host: str, mtu: int) -> None:
        extra = [] if mtu == DEFAULT_MTU else ["mtu", str(mtu)]
        _ip("-n", self.router_ns, "route", "replace", *self._subnet_route(host), *extra)

    def _route_mtu(self, host: str) -> int | None:
        """The MTU the router forwards onto `host`'s link with: route MTU, else device MTU."""
        res = subprocess.run(
            ["ip", "-n", self.router_ns, "-o", "route", "show", "dev", router_iface(host)],
            capture_output=True, text=True)
        words = res.stdout.split()
        if "mtu" in words:
            return int(words[words.index("mtu") + 1])
        res = subprocess.run(["ip", "-n", self.router_ns, "-o", "link", "show",
                              "dev", router_iface(host)], capture_output=True, text=True)
        words = res.stdout.split()
        return int(words[words.index("mtu") + 1]) if "mtu" in words else None

    def _iptables(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.router_ns, "iptables", "-w", *args],
                              capture_output=True, text=True)

    def _has_rules(self, option: str) -> bool:
        return all(self._iptables("-t", table, "-C", chain, *spec, "-m", "comment",
                                  "--comment", RULE_COMMENT).returncode == 0
                   for table, chain, *spec in _rules(option))

    def _set_rules(self, option: str, wanted: bool) -> None:
        for table, chain, *spec in _rules(option):
            rule = [chain, *spec, "-m", "comment", "--comment", RULE_COMMENT]
            present = self._iptables("-t", table, "-C", *rule).returncode == 0
            if present != wanted:
                res = self._iptables("-t", table, "-A" if wanted else "-D", *rule)
                if res.returncode != 0:
                    raise LabError(f"iptables -t {table} {' '.join(rule)} in {self.router_ns}: "
                                   f"{_first_line(res.stderr)}")
