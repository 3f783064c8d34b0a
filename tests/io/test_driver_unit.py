"""The driver loop and the blocking API without root: fake links, guard and ports.

The fake network hands every packet the driver sends to a second core Stack
(the "remote host", a tiny echo server) and delivers its answers back through
an eventfd-backed fake link, so the real loop -- selector, leader/follower,
owned-port filter, timers, traces, port pool -- runs exactly as on the wire.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest

import tcpscapy
from tcpscapy import errors
from tcpscapy.api import connect, listen, resolve
from tcpscapy.core import events as ev
from tcpscapy.core.config import Config
from tcpscapy.core.segment import ACK, FIN, RST, SYN, Segment
from tcpscapy.core.stack import Stack
from tcpscapy.core.state import State
from tcpscapy.io import codec
from tcpscapy.io.driver import Driver
from tcpscapy.io.guard import NotRootError
from tcpscapy.io.rawsock import NoRoute, Received

LOCAL, REMOTE, OTHER = "10.9.0.1", "10.9.0.2", "10.9.0.3"
ECHO_PORT, CLOSED_PORT = 7, 9
FAST = {"rto": 0.05, "delayed_ack": 0.0}  # quick retransmissions, no ACK delay


class FakeLink:
    """A link whose receive side is a queue signalled through an eventfd."""

    def __init__(self, net: FakeNet, dst: str, src: str) -> None:
        self.net, self.dst_ip, self.src_ip = net, dst, src
        self.iface = "eth0"
        self.dst_mac: str | None = f"02:00:00:00:00:{dst.rsplit('.', 1)[1]:0>2}"
        self._queue: deque[Received] = deque()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.closed = False

    def deliver(self, packet: bytes) -> None:
        self._queue.append(Received(packet, False))
        os.eventfd_write(self._fd, 1)

    def recv_many(self, max_n: int = 64) -> list[Received]:
        out = [self._queue.popleft() for _ in range(min(max_n, len(self._queue)))]
        if not self._queue:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._fd)
        return out

    def fileno(self) -> int:
        return self._fd

    def send(self, packet: bytes) -> None:
        self.net.from_driver(self, packet)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class FakeNet:
    """The remote hosts: one core Stack each, running an echo server on ECHO_PORT."""

    def __init__(self) -> None:
        cfg = Config(secret=b"k" * 16, delayed_ack=0.0)
        self.peers = {ip: Stack(cfg) for ip in (REMOTE, OTHER)}
        for stack in self.peers.values():
            stack.listen(stack_ip(stack, self), ECHO_PORT, backlog=1000)
        self.links: list[FakeLink] = []
        self.seen: list[Segment] = []  # every segment the driver put on the wire
        self.drop: Callable[[Segment], bool] = lambda seg: False
        self.lock = threading.Lock()
        self.opens: list[str] = []
        self.latency = 0.0  # > 0: answers arrive this much later, from another thread
        self.timers: list[threading.Timer] = []
        self.unreachable: set[str] = set()
        self.backlog: dict[object, bytearray] = {}  # echo data waiting for send space
        self.closing: set[object] = set()

    def open_link(self, dst: str, src: str | None, iface: str | None) -> FakeLink:
        self.opens.append(dst)
        if dst in self.unreachable:
            raise NoRoute(f"no ARP reply from next hop {dst} on eth0")
        link = FakeLink(self, dst, src or LOCAL)
        self.links.append(link)
        return link

    def open_receivers(self, ip: str) -> list[FakeLink]:
        link = FakeLink(self, ip, LOCAL)
        link.dst_mac = None
        self.links.append(link)
        return [link]

    def from_driver(self, link: FakeLink, packet: bytes) -> None:
        seg = codec.decode(packet)
        assert seg is not None
        with self.lock:
            self.seen.append(seg)
            if self.drop(seg) or seg.dst not in self.peers:
                return
            peer = self.peers[seg.dst]
            now = time.monotonic()
            peer.receive(seg, now)
            for conn in peer.connections:
                backlog = self.backlog.setdefault(conn, bytearray())
                while (event := conn.next_event()) is not None:
                    if isinstance(event, ev.DataReceived):
                        backlog += event.data
                    elif isinstance(event, ev.PeerClosed):
                        self.closing.add(conn)
                if backlog and conn.state.can_send:
                    taken = conn.send(bytes(backlog))
                    del backlog[:taken]
                    conn.data_consumed(taken)  # the window reopens as the echo drains
                if conn in self.closing and not backlog and conn.state.can_send:
                    conn.close()
            for out in peer.segments_to_send(now):
                # Answers come back on the driver's first link: one reader per interface.
                packet = codec.encode(out)
                if self.latency:
                    timer = threading.Timer(self.latency, self.links[0].deliver, (packet,))
                    timer.start()
                    self.timers.append(timer)
                else:
                    self.links[0].deliver(packet)

    def inject(self, seg: Segment) -> None:
        self.links[0].deliver(codec.encode(seg))


def stack_ip(stack: Stack, net: FakeNet) -> str:
    return next(ip for ip, s in net.peers.items() if s is stack)


class FakeGuard:
    def __init__(self) -> None:
        self.owned: list[tuple[str, int]] = []
        self.disowned: list[tuple[str, int]] = []
        self.running = False
        self.dropped = 0
        self._fd = os.eventfd(0, os.EFD_NONBLOCK)

    def start(self) -> FakeGuard:
        self.running = True
        return self

    def stop(self) -> None:
        self.running = False

    def own_port(self, ip: str, port: int) -> None:
        self.owned.append((ip, port))

    def disown_port(self, ip: str, port: int) -> None:
        self.disowned.append((ip, port))

    def fileno(self) -> int:
        return self._fd

    def process_pending(self) -> int:
        return 0


class FakeReservation:
    def __init__(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakePorts:
    def __init__(self) -> None:
        self.next = 40000
        self.made: list[FakeReservation] = []

    def __call__(self, ip: str, port: int) -> FakeReservation:
        if not port:
            port, self.next = self.next, self.next + 1
        reservation = FakeReservation(ip, port)
        self.made.append(reservation)
        return reservation


class World:
    def __init__(self, **driver_kw: object) -> None:
        self.net = FakeNet()
        self.guard = FakeGuard()
        self.ports = FakePorts()
        self.driver = Driver(open_link=self.net.open_link, reserve_port=self.ports,
                             open_receivers=self.net.open_receivers,
                             make_guard=lambda: self.guard, **driver_kw)  # type: ignore[arg-type]

    def connect(self, dst: str = REMOTE, port: int = ECHO_PORT,
                **options: object) -> tcpscapy.Connection:
        return connect(dst, port, driver=self.driver, **{**FAST, **options})


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.driver.close(linger=0.5)


def wait_until(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)
    return check()


def driver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tcpscapy-driver"]


# -- handshake, data, close ---------------------------------------------------------


def test_handshake_is_recorded_in_order(world: World) -> None:
    conn = world.connect()
    assert conn.state is State.ESTABLISHED
    kinds = [(e.direction, e.segment.flags if e.segment else None,
              e.state_change[1] if e.state_change else None) for e in conn.trace]
    assert kinds == [
        ("out", None, State.SYN_SENT),
        ("out", SYN, None),
        ("in", SYN | ACK, None),
        ("out", None, State.ESTABLISHED),
        ("out", ACK, None),
    ]
    assert conn.local == (LOCAL, 40000) and conn.remote == (REMOTE, ECHO_PORT)
    assert conn.engine.ws_ok and conn.engine.sack_ok and conn.engine.ts_ok


def test_echo_of_a_megabyte_with_a_reader_thread(world: World) -> None:
    payload = os.urandom(1 << 20)
    conn = world.connect()
    got = bytearray()

    def reader() -> None:
        while len(got) < len(payload):
            chunk = conn.recv(timeout=10)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    conn.sendall(payload, timeout=10)
    t.join(15)
    assert not t.is_alive()
    assert bytes(got) == payload


def test_half_close_then_eof(world: World) -> None:
    conn = world.connect()
    conn.sendall(b"ping")
    conn.shutdown()
    assert conn.recv(timeout=2) == b"ping"
    assert conn.recv(timeout=2) == b""  # the echo server closed after our FIN
    with pytest.raises(errors.ConnectionClosed):
        conn.send(b"more")
    assert wait_until(lambda: conn.state is State.TIME_WAIT)
    conn.close()


def test_refused_port_raises_connection_refused(world: World) -> None:
    with pytest.raises(errors.ConnectionRefused) as info:
        world.connect(port=CLOSED_PORT)
    assert info.value.exit_code == 3
    assert str(info.value) == f"connection to {REMOTE}:{CLOSED_PORT} refused"


def test_silent_peer_raises_connect_timeout_after_retries(world: World) -> None:
    world.net.drop = lambda seg: True
    started = time.monotonic()
    with pytest.raises(errors.ConnectTimeout) as info:
        world.connect(retries=2)
    elapsed = time.monotonic() - started
    syns = [s for s in world.net.seen if s.flags == SYN]
    assert len(syns) == 3  # the SYN and two retransmissions, driven by the loop's timers
    assert 0.05 + 0.1 + 0.2 <= elapsed < 5
    assert "no answer to the SYN after 2 retransmissions" in str(info.value)


def test_connect_timeout_option_gives_up_early(world: World) -> None:
    world.net.drop = lambda seg: True
    with pytest.raises(errors.ConnectTimeout, match=r"timed out after 0\.2 s"):
        world.connect(timeout=0.2, rto=1.0)


# -- the owned-port filter ----------------------------------------------------------


def test_segments_for_ports_we_do_not_own_never_reach_the_engine(world: World) -> None:
    conn = world.connect()
    before = len(world.net.seen)
    received = world.driver.stats.received
    traced = len(conn.trace.segments("in"))
    # The kernel's own connection on our address: data to a port we never reserved.
    world.net.inject(Segment(REMOTE, LOCAL, 22, 51000, 1000, 2000, ACK, 512, payload=b"ssh"))
    # And a SYN to a port with no listener of ours (the kernel's listener, say).
    world.net.inject(Segment(REMOTE, LOCAL, 33000, 8080, 77, 0, SYN, 512))
    conn.sendall(b"x")  # one more turn of the loop, and proof it still works
    assert conn.recv(timeout=2) == b"x"
    assert world.driver.stats.foreign == 2
    # Only our connection's segments were fed (and traced); no orphan was recorded.
    assert world.driver.stats.received - received == len(conn.trace.segments("in")) - traced
    assert len(world.driver.orphans) == 0
    answered = [s for s in world.net.seen[before:] if s.flags & RST]
    assert answered == []
    assert world.driver.stack.resets_sent == 0


def test_segments_for_an_owned_port_without_connection_are_answered(world: World) -> None:
    conn = world.connect()
    conn.abort()
    port = conn.local[1]
    assert (LOCAL, port) in world.driver.owned  # warm: still reserved and guarded
    world.net.inject(Segment(REMOTE, LOCAL, ECHO_PORT, port, 5, 6, ACK, 512, payload=b"late"))
    assert wait_until(lambda: world.driver.stack.resets_sent == 1)
    assert any(e.segment is not None and e.segment.flags & RST for e in world.driver.orphans)


def test_bad_checksum_is_counted_not_fed(world: World) -> None:
    conn = world.connect()
    packet = bytearray(codec.encode(Segment(REMOTE, LOCAL, ECHO_PORT, conn.local[1], 1, 2, ACK,
                                            512, payload=b"zz")))
    packet[-1] ^= 0xFF
    world.net.links[0].deliver(bytes(packet))
    conn.sendall(b"y")
    assert conn.recv(timeout=2) == b"y"
    assert world.driver.stats.undecodable == 1


# -- ports, links, guard ------------------------------------------------------------


def test_client_ports_are_reused_from_the_warm_pool(world: World) -> None:
    first = world.connect(msl=0.01)
    first.close()
    assert first.wait_closed(timeout=5)  # FIN exchange and a short TIME-WAIT
    assert wait_until(lambda: bool(world.driver._warm.get(LOCAL)))  # the port is back
    second = world.connect()
    assert second.local == first.local
    assert len(world.ports.made) == 1
    assert world.guard.owned == [(LOCAL, first.local[1])]
    third = world.connect()  # the pool is empty while `second` lives
    assert third.local[1] != second.local[1]
    assert len(world.guard.owned) == 2


def test_a_port_whose_connection_was_reset_is_not_reused_for_that_peer(world: World) -> None:
    first = world.connect()
    first.abort()  # if our RST were lost, the peer would still hold this 4-tuple
    second = world.connect()
    assert second.local[1] != first.local[1]
    assert len(world.ports.made) == 2


def test_a_full_pool_of_reset_ports_is_reused_oldest_first() -> None:
    w = World(warm_ports=1)  # the pool is full with the one port
    try:
        first = w.connect()
        first.abort()
        second = w.connect()  # nothing else warm and no room to grow: reuse it
        assert second.local == first.local and len(w.ports.made) == 1
    finally:
        w.driver.close(linger=0.5)


def test_without_a_warm_pool_ports_are_released() -> None:
    w = World(warm_ports=0)
    try:
        conn = w.connect()
        conn.abort()
        assert w.guard.disowned == [conn.local]
        assert w.ports.made[0].closed
        assert conn.local not in w.driver.owned
    finally:
        w.driver.close(linger=0)


def test_explicit_source_port_and_address_in_use(world: World) -> None:
    conn = world.connect(sport=45678)
    assert conn.local == (LOCAL, 45678)
    with pytest.raises(errors.AddressInUse):
        world.connect(sport=45678)


def test_one_link_per_destination_and_one_reader_per_interface(world: World) -> None:
    a = world.connect()
    b = world.connect()
    assert len(world.net.links) == 1  # opened once, reused
    c = world.connect(OTHER)  # same interface, another next hop: a send-only link
    assert len(world.net.links) == 2
    for conn in (a, b, c):
        conn.sendall(b"hi")
        assert conn.recv(timeout=2) == b"hi"
    # Traffic on the second link's socket is not read: the first link is the reader.
    marker = Segment(OTHER, LOCAL, ECHO_PORT, c.local[1], 0, 0, ACK, 4321)
    world.net.links[1].deliver(codec.encode(marker))
    a.sendall(b"!")
    assert a.recv(timeout=2) == b"!"
    world.net.links[0].deliver(codec.encode(marker.replace(window=1234)))
    assert wait_until(lambda: 1234 in [s.window for s in c.trace.segments("in")])
    assert 4321 not in [s.window for s in c.trace.segments("in")]


# -- listening ----------------------------------------------------------------------


def test_listen_accept_and_echo_to_an_engine_client(world: World) -> None:
    server = listen(8000, LOCAL, driver=world.driver, **FAST)
    assert world.guard.owned[-1] == (LOCAL, 8000)
    peer = world.net.peers[REMOTE]
    client = peer.connect((REMOTE, 5555), (LOCAL, 8000), time.monotonic())
    client.send(b"to the listener")
    for seg in peer.segments_to_send(time.monotonic()):
        world.net.inject(seg)
    conn = server.accept(timeout=2)
    assert conn.remote == (REMOTE, 5555)
    assert conn.recv(timeout=2) == b"to the listener"
    flags = [e.segment.flags for e in conn.trace if e.segment is not None]
    assert flags[:2] == [SYN, SYN | ACK]
    server.close()
    assert conn.state is State.ESTABLISHED  # accepted connections outlive the listener
    assert (LOCAL, 8000) in world.driver.owned
    conn.abort()
    assert (LOCAL, 8000) not in world.driver.owned
    assert world.guard.disowned == [(LOCAL, 8000)]


def test_accept_times_out(world: World) -> None:
    with listen(0, LOCAL, driver=world.driver) as server, \
            pytest.raises(errors.TimedOut, match="accept timed out"):
        server.accept(timeout=0.1)


# -- threading ----------------------------------------------------------------------


def test_app_thread_drives_the_loop_without_a_background_thread() -> None:
    w = World(background=False)
    try:
        conn = w.connect()
        conn.sendall(b"inline")
        assert conn.recv(timeout=2) == b"inline"
        assert driver_threads() == []
    finally:
        w.driver.close(linger=0)


def test_many_threads_share_one_driver(world: World) -> None:
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        with world.connect() as conn:
            data = bytes([i]) * (1000 + i)
            conn.sendall(data)
            got = b""
            while len(got) < len(data):
                got += conn.recv(timeout=5)
            results[i] = got

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {i: len(v) for i, v in results.items()} == {i: 1000 + i for i in range(12)}
    assert all(v == bytes([i]) * (1000 + i) for i, v in results.items())


def test_close_sends_fin_stops_thread_and_frees_everything() -> None:
    w = World()
    conn = w.connect()
    assert driver_threads()
    w.driver.close(linger=1)
    assert driver_threads() == []
    assert any(s.flags & FIN for s in w.net.seen)
    assert conn.state in (State.TIME_WAIT, State.FIN_WAIT_2, State.CLOSED)
    assert not w.guard.running
    assert all(r.closed for r in w.ports.made)
    assert all(link.closed for link in w.net.links)
    with pytest.raises(errors.ConnectionClosed):
        w.connect()


def test_close_resets_what_the_peer_never_acknowledges() -> None:
    w = World()
    conn = w.connect()
    w.net.drop = lambda seg: True
    w.driver.close(linger=0.2)
    flags = [s.flags for s in w.net.seen]
    assert flags[-1] & RST and any(f & FIN for f in flags)
    assert conn.state is State.CLOSED


# -- API input checking -------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"mss": 10}, "option mss takes a whole number 64-65495, not 10"),
    ({"sack": "yes"}, "option sack takes True or False, not 'yes'"),
    ({"wscale": 15}, "option wscale takes a whole number 0-14, not 15"),
    ({"rto": -1}, "option rto takes seconds > 0"),
    ({"bogus": 1}, "unknown option 'bogus'"),
])
def test_bad_options_are_one_line_errors(world: World, options: dict[str, object],
                                         message: str) -> None:
    with pytest.raises(errors.BadOption) as info:
        world.connect(**options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_listener_options(world: World) -> None:
    with listen(0, LOCAL, driver=world.driver, syncookies="always", tfo=True) as server:
        assert server.engine.config.syncookies == "always" and server.engine.config.tfo_server
    with pytest.raises(errors.BadOption, match="option syncookies takes"):
        listen(0, LOCAL, driver=world.driver, syncookies="sometimes")
    with pytest.raises(errors.BadOption, match="unknown option 'syncookies'"):
        world.connect(syncookies="always")  # a listener's option


def test_options_reach_the_syn(world: World) -> None:
    conn = world.connect(mss=1000, wscale=None, sack=False, timestamps=False)
    syn = conn.trace.segments("out")[0]
    assert syn.options.mss == 1000 and syn.options.wscale is None
    assert not syn.options.sack_permitted and syn.options.timestamps is None
    assert not conn.engine.ws_ok and not conn.engine.sack_ok and not conn.engine.ts_ok


@pytest.mark.parametrize("port", [0, 70000, -1, "80", True])
def test_bad_ports(world: World, port: object) -> None:
    with pytest.raises(errors.BadAddress, match="bad port"):
        world.connect(port=port)  # type: ignore[arg-type]


def test_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve("10.1.2.3") == "10.1.2.3"
    with pytest.raises(errors.BadAddress, match="IPv6"):
        resolve("::1")

    def no_such_host(*args: object, **kw: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(errors.UnknownHost) as info:
        resolve("nowhere.example")
    assert str(info.value) == "cannot resolve 'nowhere.example': Name or service not known"
    assert info.value.exit_code == 7


def test_exit_codes_are_distinct() -> None:
    classes = [errors.TcpscapyError, errors.UsageError, errors.ConnectionRefused,
               errors.NeedsRoot, errors.TimedOut, errors.ConnectionReset, errors.UnknownHost,
               errors.HostUnreachable, errors.AddressInUse]
    codes = [c.exit_code for c in classes]
    assert codes == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    from tcpscapy.netns import NeedsRoot as NetnsNeedsRoot
    assert errors.exit_code(NetnsNeedsRoot("x")) == 4
    assert errors.exit_code(KeyError("x")) == 1
    assert issubclass(errors.ConnectionRefused, ConnectionRefusedError)
    assert issubclass(errors.TimedOut, TimeoutError)


def test_import_tcpscapy_core_stays_light() -> None:
    import subprocess
    import sys
    code = ("import sys, tcpscapy, tcpscapy.core; "
            "print(any(m.startswith(('scapy', 'tcpscapy.api', 'netfilterqueue')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# -- more edges ---------------------------------------------------------------------


def test_not_root_is_needs_root_with_exit_code_4() -> None:
    def refuse() -> FakeGuard:
        raise NotRootError("the RST guard needs root: iptables and NFQUEUE require CAP_NET_ADMIN")

    net = FakeNet()
    driver = Driver(open_link=net.open_link, reserve_port=FakePorts(), make_guard=refuse)
    try:
        with pytest.raises(errors.NeedsRoot) as info:
            connect(REMOTE, ECHO_PORT, driver=driver)
        assert info.value.exit_code == 4 and "needs root" in str(info.value)
        assert driver_threads() == []
    finally:
        driver.close()


def test_unreachable_host_is_host_unreachable(world: World) -> None:
    world.net.unreachable.add(OTHER)
    with pytest.raises(errors.HostUnreachable, match="no ARP reply") as info:
        world.connect(OTHER)
    assert info.value.exit_code == 8


def test_listening_twice_on_a_port_is_address_in_use(world: World) -> None:
    with listen(8001, LOCAL, driver=world.driver):
        with pytest.raises(errors.AddressInUse) as info:
            listen(8001, LOCAL, driver=world.driver)
        assert info.value.exit_code == 9


def test_a_peer_without_route_is_tried_once_not_per_segment(world: World) -> None:
    server = listen(8002, LOCAL, driver=world.driver)
    world.net.unreachable.add(OTHER)
    for _ in range(3):  # the SYN and two retransmissions from a host we cannot reach
        world.net.inject(Segment(OTHER, LOCAL, 6000, 8002, 1, 0, SYN, 512))
    with pytest.raises(errors.TimedOut):
        server.accept(timeout=0.2)
    assert world.net.opens.count(OTHER) == 1
    notes = {e.note for c in world.driver.connections() for e in c.trace if e.segment}
    assert any(note.startswith("not sent: no ARP reply") for note in notes)


def test_trace_limit_keeps_the_newest_entries(world: World) -> None:
    conn = world.connect(trace_limit=4)
    for i in range(5):
        conn.sendall(b"%d" % i)
        assert conn.recv(timeout=2) == b"%d" % i
    assert len(conn.trace) == 4
    assert conn.trace[-1].segment is not None


def test_background_thread_handles_traffic_while_the_app_is_away(world: World) -> None:
    conn = world.connect()
    world.net.latency = 0.02  # the echo arrives after sendall() has returned
    conn.sendall(b"while you were out")
    # No call into the driver from here on: the background thread must read the echo.
    assert wait_until(lambda: b"while you were out" in conn.trace.segments("in")[-1].payload)
    assert conn.recv(timeout=0) == b"while you were out"
    for timer in world.net.timers:
        timer.join()


def test_abort_from_another_thread_wakes_a_blocked_reader(world: World) -> None:
    conn = world.connect()
    outcome: list[object] = []

    def reader() -> None:
        try:
            outcome.append(conn.recv(timeout=10))
        except Exception as exc:  # the abort ends the read one way or another
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert wait_until(lambda: world.driver._leader is not None or bool(outcome))
    conn.abort()
    thread.join(timeout=3)  # long before the reader's own 10 s timeout
    assert not thread.is_alive() and outcome
