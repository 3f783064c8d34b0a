"""Raw-socket I/O carrying whole IPv4 packets as bytes, opened once per process.

`open_link(dst)` looks up the route in Scapy's table and opens the sockets for it:

- remote peer: one AF_PACKET socket bound to the outgoing interface, for both directions.
  We add the Ethernet header ourselves (next-hop MAC from Scapy's ARP, cached). Frames
  sent this way skip netfilter OUTPUT, so the RST guard's OUTPUT rule never sees them.
- loopback or an address of this host: a raw IP socket (IP_HDRINCL) to send, because the
  kernel must route the packet to itself; those packets DO traverse OUTPUT, so they carry
  SO_MARK = `mark` and the RST guard excludes that mark. Receiving is AF_PACKET on `lo`.

Receiving is filtered in the kernel (classic BPF: IPv4, TCP or ICMP, destination = our
address). Opening an AF_PACKET socket costs ~20 ms, which is why a Link is opened once
and reused.

Links with no link layer (TUN, WireGuard, PPP: ARPHRD_NONE and kin) carry bare IP
packets on their AF_PACKET sockets: no Ethernet header to add or strip, no ARP,
no offload (its virtio header describes an Ethernet frame).

Offload (remote peers only): a second, send-only AF_PACKET socket with PACKET_VNET_HDR
prefixes each frame with a virtio_net_hdr, as a virtual NIC would hand the kernel its
packets. `send_offload` asks the kernel to fill in the TCP checksum and, with a GSO
size, to cut one packet of up to 64 KB into segments of that many payload bytes: one
sendmsg instead of one per segment (~15 µs each on veth). The kernel does both in
software when the device has no offloads. Where the option is refused, `offload` is
False and the caller sends ordinary packets.

A remote peer's link also receives through a ring shared with the kernel (_RxRing,
8 MB): no recvmsg per packet.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import mmap
import select
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from tcpscapy import netns
from tcpscapy.netns import NeedsRoot

# Same value as tcpscapy.io.guard.DEFAULT_MARK: the guard's rule skips packets with it.
DEFAULT_MARK = 0x7C5

ETH_P_IP = 0x0800
ETH_HLEN = 14
# Hardware types whose frames are bare network-layer packets (if_arp.h):
# ARPHRD_PPP, ARPHRD_RAWIP, ARPHRD_NONE (TUN, WireGuard).
NO_LINK_LAYER = frozenset({512, 519, 0xFFFE})
_SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF + SKF_AD_PROTOCOL: ntohs(skb->protocol)
_SKF_NET_OFF = 0xFFF00000  # -0x100000: offsets from the network header, any link layer
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_MARK = 36
SO_RCVBUFFORCE = 33
PACKET_VNET_HDR = 15
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4 = 0, 1
_VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
_TCP_CSUM_AT = 16  # the checksum field's offset in the TCP header
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP)  # what a kernel without the offload answers
PACKET_RX_RING, PACKET_VERSION, PACKET_COPY_THRESH, TPACKET_V2 = 5, 10, 7, 1
TP_STATUS_USER, TP_STATUS_COPY = 1, 2
RING_FRAME = 2048  # bytes per ring slot: an Ethernet frame of MTU 1500 and the headers
RING_FRAMES = 4096  # slots (8 MB): bursts as long as the 4 MB socket buffer held of small frames
_RING_BLOCK = 64 * 1024
_TP2_HDR = struct.Struct("=IIIHH")  # struct tpacket2_hdr: status, len, snaplen, mac, net
_TP2_PKTTYPE_AT = 32 + 10  # sockaddr_ll after the 32-byte header: sll_pkttype
_KERNEL_OWNS = bytes(4)  # TP_STATUS_KERNEL: the slot goes back to the kernel
TP_STATUS_CSUMNOTREADY = 1 << 3  # locally generated, checksum left for the NIC/stack
TP_STATUS_CSUM_VALID = 1 << 7  # checksum already verified
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_ANCBUF = socket.CMSG_SPACE(_AUXDATA.size)

# Large enough for GRO-merged and loopback (MTU 64 KiB) packets; BPF keeps this much.
RECV_BUFFER = 256 * 1024
SOCKET_RCVBUF = 4 * 1024 * 1024
SEND_WAIT = 1.0  # seconds to wait for room in a full socket send queue


class LinkError(OSError):
    """A link could not be opened or used; the message is one line."""


class NoRoute(LinkError):
    """No route (or no next-hop MAC) to the destination."""


class LinkNeedsRoot(LinkError, NeedsRoot):
    """Raw sockets need root (CAP_NET_RAW, CAP_NET_ADMIN for SO_MARK)."""


class OffloadRefused(LinkError):
    """The kernel refused an offloaded send; the link now has `offload` False."""


class Received(NamedTuple):
    """One received IPv4 packet.

    `skip_csum_check` is True when the kernel vouches for the checksums: already verified
    (TP_STATUS_CSUM_VALID) or not filled in yet because the packet was generated on this
    host (TP_STATUS_CSUMNOTREADY, e.g. the kernel's own segments on `lo`). Verifying the
    checksum of such a packet would wrongly reject it.
    """

    packet: bytes
    skip_csum_check: bool


def tcp_dst_filter(dst_ip: str) -> bytes:
    """Classic BPF: `ip and (tcp or icmp) and dst host DST_IP`, for any link layer.

    ICMP comes in for its errors about our segments (core/icmp.py). Offsets
    count from the network header (SKF_NET_OFF) and the EtherType is the
    packet's protocol as the kernel knows it, so one program serves Ethernet
    frames and the bare IP packets of a TUN device.
    """
    dst = struct.unpack("!I", socket.inet_aton(dst_ip))[0]
    program = [
        (0x20, 0, 0, _SKF_AD_PROTOCOL),  # ld #proto             EtherType
        (0x15, 0, 6, ETH_P_IP),  # jeq IPv4, else drop
        (0x30, 0, 0, _SKF_NET_OFF + 9),  # ldb [net + 9]    IP protocol
        (0x15, 1, 0, socket.IPPROTO_TCP),  # jeq TCP: on
        (0x15, 0, 3, socket.IPPROTO_ICMP),  # jeq ICMP: on, else drop
        (0x20, 0, 0, _SKF_NET_OFF + 16),  # ld [net + 16]   IP destination
        (0x15, 0, 1, dst),  # jeq DST_IP, else drop
        (0x06, 0, 0, RECV_BUFFER),  # ret: keep up to RECV_BUFFER bytes
        (0x06, 0, 0, 0),  # ret 0: drop
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _packet_socket(iface: str, dst_ip: str) -> socket.socket:
    """AF_PACKET socket on `iface` that receives only TCP/IPv4 packets for `dst_ip`.

    (open_link adds an _RxRing to it for a remote peer's link.)
    """
    # Protocol 0 receives nothing until bind(), so no unfiltered packet slips in first.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        _attach_filter(sock, tcp_dst_filter(dst_ip))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        # Bound to ETH_P_IP (not ETH_P_ALL) the socket is not even offered outgoing copies;
        # recv() still drops PACKET_OUTGOING in case that ever changes.
        sock.bind((iface, ETH_P_IP))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _offload_socket(iface: str) -> socket.socket | None:
    """Send-only AF_PACKET socket on `iface` taking a virtio_net_hdr; None if refused.

    Protocol 0 receives nothing. Not PACKET_QDISC_BYPASS: the direct path drops
    a packet that software GSO had to segment (ENOBUFS).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.bind((iface, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock


class _RxRing:
    """A PACKET_RX_RING (TPACKET_V2) on a receiving packet socket.

    The kernel writes each frame into a slot of memory we share with it, so a
    busy receive takes no syscall per packet. Version 2 because version 3 hands
    over whole blocks only when full or on a timer (a millisecond or more of
    latency); a slot is RING_FRAME bytes, and a frame that does not fit is
    also queued whole on the socket (PACKET_COPY_THRESH) and read from there.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        blocks = RING_FRAMES * RING_FRAME // _RING_BLOCK
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                        struct.pack("=IIII", _RING_BLOCK, blocks, RING_FRAME, RING_FRAMES))
        self.map = mmap.mmap(sock.fileno(), _RING_BLOCK * blocks)
        self.pos = 0  # the next slot to read

    def close(self) -> None:
        self.map.close()


def _ring_or_none(sock: socket.socket | object) -> _RxRing | None:
    """An _RxRing on `sock`, or None where the kernel refuses one (then recvmsg it is)."""
    if not isinstance(sock, socket.socket):
        return None
    try:
        return _RxRing(sock)
    except OSError:
        return None


def _raw_ip_socket(mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies HDRINCL
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Link:
    """Raw IPv4 packet I/O towards one destination; see the module docstring."""

    def __init__(
        self,
        *,
        rx: socket.socket,
        tx: socket.socket,
        iface: str,
        src_ip: str,
        dst_ip: str,
        src_mac: str | None,
        dst_mac: str | None,
        next_hop: str | None,
        mark: int,
        offload_tx: socket.socket | None = None,
        ring: bool = False,
    ) -> None:
        self.iface = iface
        self.src_ip = src_ip
        self.dst_ip = dst_ip
        self.src_mac = src_mac
        self.dst_mac = dst_mac  # None on the loopback path (the kernel routes the packet)
        self.next_hop = next_hop
        self.mark = mark
        self.truncated = 0  # packets dropped because they did not fit RECV_BUFFER
        self._l2 = link_header_len(rx)
        self._rx = rx
        self._tx = tx
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._eth_header = (
            _mac_bytes(dst_mac) + _mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP)
            if dst_mac and src_mac
            else b""
        )
        self._offload_tx = offload_tx
        self._ring = _ring_or_none(rx) if ring else None
        self._offload_prefixes: dict[tuple[int, int, int], bytes] = {}
        self.offload = offload_tx is not None  # send_offload works (remote peers only)
        self._closed = False

    @property
    def is_loopback(self) -> bool:
        return self.dst_mac is None

    def send(self, packet: bytes) -> None:
        """Send one whole IPv4 packet (header included, checksums already filled in)."""
        if self._closed:
            raise LinkError("send on a closed link")
        if len(packet) < 20 or packet[0] >> 4 != 4:
            raise ValueError("not an IPv4 packet")
        if self.is_loopback:
            self._send(self._tx, self._tx.sendto, packet, (socket.inet_ntoa(packet[16:20]), 0))
        else:
            self._send(self._tx, self._tx.sendmsg, [self._eth_header, packet])

    def send_offload(self, packet: bytes, gso_size: int = 0) -> None:
        """Send an IPv4/TCP packet whose TCP checksum field holds only the pseudo-header
        sum (codec.encode_offload, encode_run): the kernel completes the checksum and,
        with `gso_size`, cuts the packet into segments of that many payload bytes.

        Raises OffloadRefused (and turns `offload` off) if the kernel will not.
        """
        if self._closed:
            raise LinkError("send on a closed link")
        sock = self._offload_tx
        if sock is None or not self.offload:
            raise OffloadRefused(f"no offloaded sends on {self.iface}")
        ihl = (packet[0] & 0xF) * 4
        key = (ihl, packet[ihl + 12] >> 4, gso_size)  # IP, TCP header lengths; GSO size
        prefix = self._offload_prefixes.get(key) or self._offload_prefix(key)
        try:
            try:
                sock.sendmsg([prefix, packet])
            except BlockingIOError:
                self._send(sock, sock.sendmsg, [prefix, packet])
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
            self.offload = False
            raise OffloadRefused(f"offloaded send refused on {self.iface}: {exc}") from None

    def _offload_prefix(self, key: tuple[int, int, int]) -> bytes:
        """virtio_net_hdr + Ethernet header for one layout, built once: a connection
        repeats a few (pure ACK, full segment, GSO run)."""
        ihl, tcp_words, gso_size = key
        vnet = _VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM,
                              VIRTIO_NET_HDR_GSO_TCPV4 if gso_size else VIRTIO_NET_HDR_GSO_NONE,
                              ETH_HLEN + ihl + tcp_words * 4, gso_size, ETH_HLEN + ihl,
                              _TCP_CSUM_AT)
        if len(self._offload_prefixes) >= 64:
            self._offload_prefixes.clear()
        prefix = self._offload_prefixes[key] = vnet + self._eth_header
        return prefix

    def _send(self, sock: socket.socket, send: Callable[..., int], *args: object) -> None:
        """send(*args), waiting once (up to SEND_WAIT s) for room in a full send queue."""
        for attempt in range(2):
            try:
                send(*args)
                return
            except BlockingIOError:
                if attempt or not select.select([], [sock], [], SEND_WAIT)[1]:
                    raise LinkError(f"send queue on {self.iface} stays full") from None

    def recv(self) -> Received | None:
        """The next queued packet for us, or None if nothing is queued (never blocks)."""
        got = self.recv_many(1)
        return got[0] if got else None

    def recv_many(self, max_n: int = 64) -> list[Received]:
        """Drain up to `max_n` queued packets without blocking."""
        if self._closed:
            raise LinkError("recv on a closed link")
        if self._ring is not None:
            return self._recv_ring(self._ring, max_n)
        return self._recv_queued(max_n)

    def _recv_ring(self, ring: _RxRing, max_n: int) -> list[Received]:
        """Up to `max_n` packets from the ring's slots (see _RxRing)."""
        out: list[Received] = []
        mm, pos = ring.map, ring.pos
        while len(out) < max_n:
            at = pos * RING_FRAME
            status, size, snap, mac, net = _TP2_HDR.unpack_from(mm, at)
            if not status & TP_STATUS_USER:
                break
            if mm[at + _TP2_PKTTYPE_AT] == PACKET_OUTGOING:
                pass
            elif status & TP_STATUS_COPY:  # too big for a slot: read the whole copy
                out += self._recv_queued(1)
            elif snap < size:
                self.truncated += 1
            else:
                end = at + mac + snap
                total = mm[at + net + 2] << 8 | mm[at + net + 3]
                if 20 <= total < end - at - net:  # cut Ethernet padding
                    end = at + net + total
                out.append(Received(mm[at + net : end],
                                    bool(status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID))))
            mm[at : at + 4] = _KERNEL_OWNS
            pos = (pos + 1) % RING_FRAMES
        ring.pos = pos
        return out

    def _recv_queued(self, max_n: int) -> list[Received]:
        """Up to `max_n` packets from the socket's queue, one recvmsg each.

        One loop with everything in locals: it runs once per received segment.
        """
        out: list[Received] = []
        recvmsg_into, bufs, buf, view = self._rx.recvmsg_into, [self._view], self._buf, self._view
        l2 = self._l2
        while len(out) < max_n:
            try:
                n, ancdata, flags, addr = recvmsg_into(bufs, _ANCBUF)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            if flags & socket.MSG_TRUNC:
                self.truncated += 1
                continue
            status = 0
            for level, kind, data in ancdata:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status = _AUXDATA.unpack_from(data)[0]
            end = l2 + (buf[l2 + 2] << 8 | buf[l2 + 3]) if n >= l2 + 4 else n
            if not l2 + 20 <= end < n:  # cut Ethernet padding; 0 = giant GSO packet
                end = n
            out.append(Received(bytes(view[l2:end]),
                                bool(status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID))))
        return out

    def fileno(self) -> int:
        """The receiving socket, for select/poll/selectors."""
        return self._rx.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._rx.close()
        if self._tx is not self._rx:
            self._tx.close()
        if self._offload_tx is not None:
            self._offload_tx.close()
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        path = "loopback" if self.is_loopback else f"via {self.next_hop} {self.dst_mac}"
        return f"<Link {self.src_ip} -> {self.dst_ip} on {self.iface} {path}>"


def open_link(
    dst_ip: str,
    src_ip: str | None = None,
    iface: str | None = None,
    mark: int = DEFAULT_MARK,
    offload: bool = True,
) -> Link:
    """Open the sockets to reach `dst_ip` from the calling thread's network namespace.

    With `offload`, a remote peer's link also gets the offload socket if the
    kernel allows it (see the module docstring).
    """
    dst = _ipv4(dst_ip, "destination")
    if iface is not None:
        _check_iface(iface)
    route_iface, route_src, gateway, local = _route(dst, iface)
    if route_src == "0.0.0.0":
        raise NoRoute(f"no route to {dst}" + (f" via {iface}" if iface else ""))
    src = _ipv4(src_ip, "source") if src_ip else route_src
    loopback = local or ipaddress.IPv4Address(dst).is_loopback
    try:
        if loopback:
            from scapy.config import conf

            lo = conf.loopback_name
            tx = _raw_ip_socket(mark)
            try:
                rx = _packet_socket(lo, src)
            except BaseException:
                tx.close()
                raise
            return Link(rx=rx, tx=tx, iface=lo, src_ip=src, dst_ip=dst, src_mac=None,
                        dst_mac=None, next_hop=None, mark=mark)
        sock = _packet_socket(route_iface, src)
    except PermissionError:
        raise LinkNeedsRoot("raw sockets need root (CAP_NET_RAW and CAP_NET_ADMIN)") from None
    next_hop = gateway if gateway != "0.0.0.0" else dst
    if not link_header_len(sock):  # a TUN-like device: no addresses, no ARP, no offload
        return Link(rx=sock, tx=sock, iface=route_iface, src_ip=src, dst_ip=dst, src_mac="",
                    dst_mac="", next_hop=next_hop, mark=mark, ring=True)
    try:
        src_mac = ":".join(f"{b:02x}" for b in sock.getsockname()[4])
        dst_mac = _next_hop_mac(route_iface, src_mac, next_hop)
    except BaseException:
        sock.close()
        raise
    return Link(rx=sock, tx=sock, iface=route_iface, src_ip=src, dst_ip=dst, src_mac=src_mac,
                dst_mac=dst_mac, next_hop=next_hop, mark=mark,
                offload_tx=_offload_socket(route_iface) if offload else None, ring=True)


def link_header_len(sock: object) -> int:
    """Bytes of link-layer header before the IP packet on a packet socket: 14 for
    Ethernet (and lo), 0 on a device without one (NO_LINK_LAYER)."""
    try:
        hatype = sock.getsockname()[3]  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError, TypeError):
        return ETH_HLEN  # not a bound packet socket (a wrapper, a test's fake)
    return 0 if hatype in NO_LINK_LAYER else ETH_HLEN


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"bad {what} address {text!r}: expected dotted IPv4") from None


def _check_iface(iface: str) -> None:
    """A bad interface name is the caller's mistake (ValueError), not a missing route."""
    try:
        socket.if_nametoindex(iface)  # looks in the calling thread's namespace
    except (OSError, ValueError):
        raise ValueError(f"no such interface {iface!r}") from None


def _route(dst: str, iface: str | None) -> tuple[str, str, str, bool]:
    """(iface, src, gateway, dst-is-local) from Scapy's table, reloaded for this namespace."""
    import scapy.route  # noqa: F401  (sets conf.route)
    from scapy.config import conf

    # Scapy loads its tables once, from the namespace it was imported in; we may be in
    # another one (netns.enter), and namespace ids get reused, so always reload (~20 ms).
    conf.ifaces.reload()
    conf.route.resync()
    route_iface, src, gateway = conf.route.route(dst, dev=iface, verbose=0)
    # Scapy lists local addresses as routes on their own interface; the kernel delivers
    # them through lo, so they take the loopback path.
    local = any(route[4] == dst for route in conf.route.routes)
    return route_iface, src, gateway, local


# (namespace id, iface, our MAC, next hop) -> MAC. Our MAC and the namespace id tell apart
# labs that reuse the same addresses, which Scapy's own cache (keyed by IP) cannot.
_mac_cache: dict[tuple[int, str, str, str], str] = {}


def _next_hop_mac(iface: str, src_mac: str, next_hop: str) -> str:
    key = (netns.current_id(), iface, src_mac, next_hop)
    if key in _mac_cache:
        return _mac_cache[key]
    from scapy.config import conf
    from scapy.layers.l2 import getmacbyip

    conf.netcache.arp_cache.pop(next_hop, None)  # may hold another namespace's answer
    mac = str(getmacbyip(next_hop) or "")
    if not mac:
        raise NoRoute(f"no ARP reply from next hop {next_hop} on {iface}")
    _mac_cache[key] = mac
    return mac


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))
