"""What the driver opens in the outside world, and small socket helpers.

The driver takes these as parameters (`Driver(open_link=..., ...)`), so tests
can hand it fakes; the defaults here open the real thing: raw-socket links,
receive-only links for listening addresses, kernel port reservations and the
RST guard. Every opener works in the calling thread's network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from tcpscapy import netns
from tcpscapy.io import rawsock
from tcpscapy.io.rawsock import DEFAULT_MARK, PACKET_OUTGOING, LinkError, Received

ANY = "0.0.0.0"
THREAD_NETNS = "/proc/thread-self/ns/net"
_CLONE_NEWNET = 0x40000000
_SO_ATTACH_FILTER = 26
_DROP_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0)  # classic BPF: ret 0
_SIOCGIFMTU = 0x8921
_IFREQ = struct.Struct("16si12x")  # struct ifreq: name, then ifr_mtu in the union
_ETH_P_IP = struct.pack("!H", rawsock.ETH_P_IP)


# -- what the driver needs from the outside world (fakes stand in for tests) ---------


class LinkLike(Protocol):
    iface: str
    src_ip: str
    dst_mac: str | None

    def send(self, packet: bytes) -> None: ...
    def recv_many(self, max_n: int = ...) -> list[Received]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class GuardLike(Protocol):
    dropped: int

    def start(self) -> object: ...
    def stop(self) -> None: ...
    def own_port(self, local_ip: str, local_port: int) -> None: ...
    def disown_port(self, local_ip: str, local_port: int) -> None: ...
    def fileno(self) -> int: ...
    def process_pending(self) -> int: ...


class ReservationLike(Protocol):
    ip: str
    port: int

    def close(self) -> None: ...


LinkOpener = Callable[[str, str | None, str | None], LinkLike]  # (dst, src, iface)
ReceiverOpener = Callable[[str], list[LinkLike]]  # local ip (0.0.0.0: all) -> readers
PortReserver = Callable[[str, int], ReservationLike]  # (ip, port or 0)
GuardFactory = Callable[[], GuardLike]


def open_link(dst: str, src: str | None, iface: str | None) -> LinkLike:
    """The route's link to `dst` (rawsock.open_link), marked for the guard."""
    from tcpscapy.io import rawsock

    return rawsock.open_link(dst, src_ip=src, iface=iface, mark=DEFAULT_MARK)


def open_receivers(ip: str) -> list[LinkLike]:
    """Receive-only links for segments to local address `ip` (0.0.0.0: every address).

    Each address is read on its own interface and on `lo`, which carries what
    this host sends to itself. The interface's reader is a Receiver: it can
    also answer a peer on the path its frames came in on.
    """
    links: list[LinkLike] = []
    try:
        for iface, addr in local_addresses():
            if ip not in (ANY, addr):
                continue
            for dev in dict.fromkeys((iface, "lo")):
                # rawsock has no receive-only opener yet; its socket helper is the one we need.
                sock = rawsock._packet_socket(dev, addr)
                if dev == "lo":
                    links.append(rawsock.Link(rx=sock, tx=sock, iface=dev, src_ip=addr,
                                              dst_ip=addr, src_mac=None, dst_mac=None,
                                              next_hop=None, mark=DEFAULT_MARK))
                elif not rawsock.link_header_len(sock):  # TUN-like: answers go by route
                    links.append(rawsock.Link(rx=sock, tx=sock, iface=dev, src_ip=addr,
                                              dst_ip=addr, src_mac="", dst_mac="",
                                              next_hop=None, mark=DEFAULT_MARK))
                else:
                    links.append(Receiver(sock, dev, addr))
    except PermissionError:
        for link in links:
            link.close()
        raise rawsock.LinkNeedsRoot("raw sockets need root (CAP_NET_RAW)") from None
    except BaseException:
        for link in links:
            link.close()
        raise
    return links


NEIGHBOURS = 2048  # senders a Receiver remembers (a turn of the loop reads at most 1024)


class _FrameSources:
    """A receiving AF_PACKET socket that notes each frame's source MAC by its source IP.

    rawsock.Link reads with `recvmsg_into` and drops the link-layer address; this
    wrapper sits in its place and keeps it. The table is bounded (oldest out first),
    so a flood from many spoofed sources costs no growing memory.
    """

    __slots__ = ("macs", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.macs: dict[bytes, bytes] = {}  # packed IPv4 source -> MAC of its last frame

    def recvmsg_into(self, buffers: list[memoryview], ancbufsize: int
                     ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        result = self.sock.recvmsg_into(buffers, ancbufsize)
        n, addr = result[0], result[3]
        if n >= 34 and addr[2] != PACKET_OUTGOING:  # Ethernet + IPv4 header: source at 26
            macs, src = self.macs, bytes(buffers[0][26:30])
            macs.pop(src, None)
            macs[src] = addr[4]
            if len(macs) > NEIGHBOURS:
                del macs[next(iter(macs))]
        return result

    def sendmsg(self, buffers: list[bytes]) -> int:
        return self.sock.sendmsg(buffers)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class Receiver(rawsock.Link):
    """A listening address's reader on an Ethernet interface; `reply` answers senders.

    The driver replies through it to a peer it has no link for yet: to the MAC
    the peer's last frame came from, on the same interface. That needs no ARP,
    so answering many new peers -- a SYN flood's spoofed sources, whose ARP
    would never be answered -- never blocks the loop, and a genuine client's
    SYN-ACK leaves at once. The kernel would ARP instead and drop the answer to
    a spoofed source; here it goes back to whoever sent the frame (on a shared
    link, the spoofer, who could as well have answered the ARP itself).
    """

    def __init__(self, sock: socket.socket, iface: str, addr: str) -> None:
        self._sources = _FrameSources(sock)
        super().__init__(rx=self._sources, tx=self._sources,  # type: ignore[arg-type]
                         iface=iface, src_ip=addr, dst_ip=addr, src_mac=None, dst_mac=None,
                         next_hop=None, mark=DEFAULT_MARK)
        self._own_mac = bytes(sock.getsockname()[4])[:6]

    def reply(self, dst_ip: str, packet: bytes) -> bool:
        """Send `packet` to the MAC `dst_ip`'s frames came from; False if none came."""
        mac = self._sources.macs.get(socket.inet_aton(dst_ip))
        if mac is None:
            return False
        self._sources.sendmsg([mac + self._own_mac + _ETH_P_IP, packet])
        return True


def local_addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) pairs of the calling thread's namespace, from `ip`."""
    import json
    import subprocess

    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                             text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LinkError(f"cannot list local addresses with `ip`: {one_line(exc)}") from None
    return [(link["ifname"], info["local"]) for link in json.loads(out or "[]")
            for info in link.get("addr_info", ()) if info.get("family") == "inet"]


def reserve_port(ip: str, port: int) -> ReservationLike:
    from tcpscapy.io import ports

    return ports.reserve_port(ip, port)


def make_guard() -> GuardLike:
    """The RST guard, excluding our own packets by their mark."""
    from tcpscapy.io.guard import RstGuard

    return RstGuard(mark=DEFAULT_MARK)


# -- namespaces -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == 1:  # EPERM
            raise netns.NeedsRoot("entering the driver's network namespace needs root")
        raise OSError(err, f"setns failed: {os.strerror(err)}")


class _NamespaceDir:
    """The calling thread's /proc/self/task/TID/ns directory, held open.

    readlink("net") relative to it takes ~1 µs where stat() of
    /proc/thread-self/ns/net resolves the whole path each time (2-8 µs). It
    names the namespace the thread is in now, so a setns() shows at once.
    """

    __slots__ = ("fd", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fd = os.open(f"/proc/self/task/{threading.get_native_id()}/ns",
                          os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


_ns_dirs = threading.local()


def thread_netns_key() -> str:
    """The calling thread's network namespace as 'net:[inode]' (cheap; see _NamespaceDir)."""
    ns_dir = getattr(_ns_dirs, "dir", None)
    if ns_dir is None or ns_dir.pid != os.getpid():  # first call on this thread, or a fork
        ns_dir = _ns_dirs.dir = _NamespaceDir()
    return os.readlink("net", dir_fd=ns_dir.fd)


def mute(link: LinkLike) -> None:
    """Make a link send-only: a drop-all filter on its receiving socket (best effort)."""
    try:
        sock = socket.socket(fileno=os.dup(link.fileno()))
    except OSError:
        return  # not a socket (a test fake)
    with sock:
        buf = ctypes.create_string_buffer(_DROP_ALL, len(_DROP_ALL))
        fprog = struct.pack("HL", 1, ctypes.addressof(buf))
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def link_mtu(link: LinkLike) -> int | None:
    """The MTU of the link's interface, asked through its own socket (so in its namespace)."""
    try:
        with socket.socket(fileno=os.dup(link.fileno())) as sock:
            req = _IFREQ.pack(link.iface.encode()[:15], 0)
            return int(_IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, req))[1])
    except (OSError, ValueError):
        return None  # not a socket (a test fake), or the interface is gone


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def in_namespace(fd: int, ns_id: int) -> Iterator[None]:
    """Run the block in the namespace open as `fd` (a no-op if this thread is there)."""
    if fd < 0 or netns.current_id() == ns_id:
        yield
        return
    back = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(back)
    finally:
        os.close(back)
