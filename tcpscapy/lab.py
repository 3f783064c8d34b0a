"""A lab topology of network namespaces: client, server and attacker on one L2 link.

    {prefix}-client  eth0 10.77.0.1/24 ─┐
    {prefix}-server  eth0 10.77.0.2/24 ─┼─ {prefix}-sw: bridge br0, one veth port per host
    {prefix}-attacker eth0 10.77.0.3/24 ─┘

Every interface is created inside the lab's own namespaces (`ip -n SW link add HOST type veth
peer name eth0 netns HOST`), so nothing touches the host's namespace and labs with different
prefixes never collide. Offloads are off on every veth so AF_PACKET sees wire-sized segments
with real checksums, and IPv6 is off so the link carries only the traffic you make.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tcpscapy import netns
from tcpscapy.netns import NeedsRoot

HOSTS: tuple[str, ...] = ("client", "server", "attacker")
ADDRESSES: dict[str, str] = {"client": "10.77.0.1", "server": "10.77.0.2", "attacker": "10.77.0.3"}
PREFIXLEN = 24
# The address space of each kind of lab: this flat one, and the routed lab's 10.78.{1,2,3}.0/24
# (tcpscapy.routed), whose hosts reach each other's subnets through its router. Aimed at from
# outside a lab's namespaces, an address here goes out of the default route to the real
# network, so connect() refuses it (see outside_lab()). A new lab adds its space here.
LAB_SUBNETS: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("10.77.0.0/24"),
    ipaddress.IPv4Network("10.78.0.0/16"),
)
HOST_IFACE = "eth0"
BRIDGE = "br0"
# The namespace that tells which kind of lab a prefix names (the routed lab: tcpscapy.routed).
KIND_MARKERS: dict[str, str] = {"flat": "sw", "routed": "router"}
OFFLOADS_OFF = ("tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
# IPv6 would add router solicitations, DAD and MLD chatter to every capture.
QUIET_SYSCTLS = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_SYSCTL_RE = re.compile(r"net(\.[A-Za-z0-9_-]+)+")


class LabError(Exception):
    """A lab operation failed; the message is one line."""


class LabUsageError(LabError, ValueError):
    """Bad input: unknown host, bad prefix, malformed sysctl."""


class LabNeedsRoot(LabError, NeedsRoot):
    """Network namespaces need root."""


@dataclass
class Lab:
    """Namespaces `{prefix}-client|server|attacker|sw`; see the module docstring."""

    prefix: str = "tcpscapy"
    hosts: tuple[str, ...] = field(default=HOSTS, init=False)
    kind: str = field(default="flat", init=False)
    _children: list[subprocess.Popen[Any]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise LabUsageError(
                f"bad lab prefix {self.prefix!r}: use 1-32 letters, digits, '_' or '-'"
            )

    # -- names -------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """Namespace name of `host` (one of `self.hosts`)."""
        return f"{self.prefix}-{self._check_host(host)}"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(self.ns(h) for h in HOSTS)]

    def addr(self, host: str) -> str:
        """IPv4 address of `host` on the lab link, without prefix length."""
        return ADDRESSES[self._check_host(host)]

    # -- lifecycle ---------------------------------------------------------------------

    def exists(self) -> bool:
        """True if any namespace of this lab is present (i.e. there is something to remove)."""
        return any(netns.exists(n) for n in self.namespaces())

    def up(self, sysctls: Iterable[tuple[str, str, str]] = ()) -> Lab:
        """Build (or repair) the lab, then apply (host, key, value) sysctls. Idempotent.

        On failure, namespaces created by this call are removed again; ones that already
        existed are left for `down()`.
        """
        _require_tools("ip", "ethtool")
        self._refuse_other_kind()
        created: list[str] = []
        try:
            for name in self.namespaces():
                if not netns.exists(name):
                    _ip("netns", "add", name)
                    created.append(name)
                self._quiet(name)
            sw = self.switch_ns
            if not _link_exists(sw, BRIDGE):
                _ip("-n", sw, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", sw, "link", "set", BRIDGE, "up")
            for host in HOSTS:
                self._wire(host)
            for host, key, value in sysctls:
                self.sysctl(host, key, value)
        except BaseException:
            for name in created:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            raise
        return self

    def down(self) -> None:
        """Stop processes started with `popen`, remove every namespace of the lab. Idempotent."""
        _require_tools("ip")
        self._stop_children()
        errors = []
        for name in reversed(self.namespaces()):
            if netns.exists(name):
                res = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
                if res.returncode != 0:
                    errors.append(f"{name}: {_first_line(res.stderr)}")
        if errors:
            raise LabError("could not remove " + "; ".join(errors))

    def status(self) -> dict[str, Any]:
        """Presence and health of every part, plus an overall state: up, partial or down."""
        _require_tools("ip")
        sw = self.switch_ns
        sw_present = netns.exists(sw)
        switch = {
            "namespace": sw,
            "present": sw_present,
            "bridge_up": sw_present and _link_info(sw, BRIDGE).get("up", False),
        }
        hosts: dict[str, dict[str, Any]] = {}
        for host in HOSTS:
            name = self.ns(host)
            present = netns.exists(name)
            info = _link_info(name, HOST_IFACE) if present else {}
            hosts[host] = {
                "namespace": name,
                "present": present,
                "interface": HOST_IFACE,
                "address": f"{ADDRESSES[host]}/{PREFIXLEN}",
                "link_up": info.get("up", False),
                "has_address": f"{ADDRESSES[host]}/{PREFIXLEN}" in info.get("addrs", ()),
            }
        parts = [switch["present"], *(h["present"] for h in hosts.values())]
        healthy = switch["bridge_up"] and all(
            h["link_up"] and h["has_address"] for h in hosts.values()
        )
        state = "down" if not any(parts) else "up" if all(parts) and healthy else "partial"
        return {"prefix": self.prefix, "kind": self.kind, "state": state, "switch": switch,
                "hosts": hosts}

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # -- working inside ----------------------------------------------------------------

    def sysctl(self, host: str, key: str, value: str | None = None) -> str:
        """Set `key` to `value` in `host`'s namespace (if given); return the current value.

        Only net.* keys are accepted: they are per namespace, anything else is host-wide.
        """
        if not _SYSCTL_RE.fullmatch(key):
            raise LabUsageError(f"refusing sysctl {key!r}: only net.* keys are per-namespace")
        with self.enter(host):
            return _proc_sysctl(key, value)

    def run(
        self, host: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv)` inside `host`'s namespace (via `ip netns exec`)."""
        return subprocess.run(self._exec_argv(host, argv), **kwargs)

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen(argv)` inside `host`'s namespace; `down()` stops it if running."""
        proc = subprocess.Popen(self._exec_argv(host, argv), **kwargs)
        self._children.append(proc)
        return proc

    @contextmanager
    def enter(self, host: str) -> Iterator[None]:
        """Run the block with the calling thread inside `host`'s namespace (netns.enter)."""
        with netns.enter(self._present_ns(host)):
            yield

    # -- internals ---------------------------------------------------------------------

    def _check_host(self, host: str) -> str:
        if host not in self.hosts:
            raise LabUsageError(f"unknown host {host!r}: choose one of {', '.join(self.hosts)}")
        return host

    def _refuse_other_kind(self) -> None:
        """`up` never mixes a flat and a routed lab under one prefix: their links differ."""
        kind = lab_kind(self.prefix)
        if kind not in (None, self.kind):
            raise LabError(f"lab {self.prefix!r} is up as a {kind} lab: "
                           f"run `tcpscapy lab down --prefix {self.prefix}` first")

    def _present_ns(self, host: str) -> str:
        name = self.ns(host)
        _require_root()
        if not netns.exists(name):
            raise LabError(f"lab {self.prefix!r} is not up (no namespace {name}); run `lab up`")
        return name

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs argv in `host`'s namespace (`ip netns exec NS ...`)."""
        return self._exec_argv(host, argv)

    def _exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str | bytes) or not argv:
            raise LabUsageError("argv must be a non-empty list of strings, not a shell string")
        _require_tools("ip")
        return ["ip", "netns", "exec", self._present_ns(host), *argv]

    def _quiet(self, name: str) -> None:
        with netns.enter(name):
            for key, value in QUIET_SYSCTLS:
                if os.path.exists(_sysctl_path(key)):  # absent when the kernel lacks IPv6
                    _proc_sysctl(key, value)

    def _wire(self, host: str) -> None:
        sw, name, addr = self.switch_ns, self.ns(host), f"{ADDRESSES[host]}/{PREFIXLEN}"
        if not (_link_exists(sw, host) and _link_exists(name, HOST_IFACE)):
            # A stray half: from an interrupted run, or the switch end of a pair whose host
            # namespace was just deleted (the kernel destroys that end asynchronously).
            for ns, dev in ((sw, host), (name, HOST_IFACE)):
                if _link_exists(ns, dev):
                    subprocess.run(["ip", "-n", ns, "link", "del", dev], capture_output=True)
            _ip("-n", sw, "link", "add", host, "type", "veth", "peer", "name", HOST_IFACE,
                "netns", name)
        _ip("-n", sw, "link", "set", host, "master", BRIDGE, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "replace", addr, "dev", HOST_IFACE)
        _ip("-n", name, "link", "set", HOST_IFACE, "up")
        _offloads_off(sw, host)
        _offloads_off(name, HOST_IFACE)

    def _stop_children(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._children.clear()


def outside_lab(ip: str) -> ipaddress.IPv4Network | None:
    """The lab address space (LAB_SUBNETS) `ip` is in when no interface of this thread's
    namespace is in that space (we are not inside such a lab, so the packet would leave by
    the default route); None when `ip` is no lab address or we are inside.

    Called on every connect(), so it stays cheap: integer compares for the usual non-lab
    address, and a namespace found inside a lab is remembered (by its inode) rather than
    its interfaces read again.
    """
    try:
        value = int.from_bytes(socket.inet_aton(ip), "big")
    except OSError:
        return None
    subnet = next((net for base, mask, net in _LAB_MASKS if value & mask == base), None)
    if subnet is None:
        return None
    key = (netns.current_id(), subnet)
    if key in _INSIDE:
        return None
    if any(ipaddress.IPv4Address(a) in subnet for a in netns.local_ipv4_addresses()):
        _INSIDE.add(key)
        return None
    return subnet


_INSIDE: set[tuple[int, ipaddress.IPv4Network]] = set()  # (namespace inode, lab space)
_LAB_MASKS = [(int(net.network_address), int(net.netmask), net) for net in LAB_SUBNETS]


def lab_kind(prefix: str) -> str | None:
    """'flat' or 'routed' by the namespace only that kind has; None if neither exists."""
    for kind, suffix in KIND_MARKERS.items():
        if netns.exists(f"{prefix}-{suffix}"):
            return kind
    return None


def _require_root() -> None:
    if not netns.is_privileged():
        raise LabNeedsRoot("the lab needs root: network namespaces require CAP_SYS_ADMIN")


def _require_tools(*tools: str) -> None:
    _require_root()
    for tool in tools:
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` not found: install it (make deps)")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {_first_line(res.stderr)}")


def _link_exists(ns: str, dev: str) -> bool:
    res = subprocess.run(["ip", "-n", ns, "link", "show", "dev", dev], capture_output=True)
    return res.returncode == 0


def _link_info(ns: str, dev: str) -> dict[str, Any]:
    """{'up': operstate is UP, 'addrs': ['a.b.c.d/len', ...]}; {} if the link is missing."""
    res = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", dev],
                         capture_output=True, text=True)
    if res.returncode != 0:
        return {}
    (link,) = json.loads(res.stdout)
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", ())
             if a.get("family") == "inet"]
    # A bridge with ports up reports UP; one with no carrier yet reports UNKNOWN/DOWN.
    return {"up": link.get("operstate") == "UP", "addrs": addrs}


def _offloads_off(ns: str, dev: str) -> None:
    with netns.enter(ns):
        res = subprocess.run(["ethtool", "-K", dev, *OFFLOADS_OFF], capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"ethtool -K {dev} in {ns}: {_first_line(res.stderr)}")


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _proc_sysctl(key: str, value: str | None) -> str:
    """Read (and first write, if `value` is given) a sysctl of the calling thread's namespace."""
    path = _sysctl_path(key)
    try:
        if value is not None:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        raise LabError(f"unknown sysctl {key}") from None
    except OSError as e:
        raise LabError(f"cannot set {key}={value}: {e.strerror}") from None
