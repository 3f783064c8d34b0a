"""Several worker processes serving one listening address, with the kernel spreading the flows.

The parent sets up what the workers share, then forks them (before any driver or
thread exists, so each child starts from a clean copy):

- the listener's Config, whose one `secret` keys the ISNs, the SYN cookies and the
  Fast Open cookies: any worker accepts a cookie another one minted;
- the port, reserved once by the parent (port 0 picks it here);
- one PACKET_FANOUT group per receiving socket (interface, address), created by the
  parent with PACKET_FANOUT_FLAG_UNIQUEID, so no other process shares the id. Each
  worker's receiver joins its group; PACKET_FANOUT_HASH hands each frame to one
  member by the kernel's flow hash of its addresses and ports, the same for every
  frame of a flow: a connection is served by one worker from its SYN on. (The hash
  is symmetric on current kernels, but only one direction matters here: receivers
  are bound to ETH_P_IP and read only frames coming in to the listening address.)
  The parent's own member leaves once every worker has joined;
- one NFQUEUE rule for the port with `--queue-balance first:last` (BalancedRule,
  owned by the parent's pid); each worker's RstGuard binds one of the queues and
  installs no rule for the port. NFQUEUE hashes only the addresses, so a worker may
  be handed the kernel's RST for a flow another one serves: its verdict depends only
  on the port, which every worker owns.

The Driver of worker i is built with this module's factories (`FanOut.driver`):
receivers that join the groups, links opened to send that are muted (a worker must
never read another worker's flows), the shared port reservation and the queue guard.

`WorkerGroup` forks the processes and supervises them: each worker's stderr comes to
the parent through a pipe (so lines never interleave mid-line), JSON messages through
another, its exit through a pidfd; SIGINT and SIGTERM reach the parent as events.
A worker dies with its parent (PR_SET_PDEATHSIG).

If a worker dies, the group has one member fewer and the kernel rehashes every flow:
connections move to workers that do not know them. So a caller should stop the rest
(`tcpscapy listen --workers N` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tcpscapy.core.config import Config
from tcpscapy.io import plumbing
from tcpscapy.io.guard import BalancedRule, RstGuard, free_queues
from tcpscapy.io.plumbing import (
    GuardLike,
    LinkLike,
    LinkOpener,
    PortReserver,
    ReceiverOpener,
    ReservationLike,
)
from tcpscapy.io.rawsock import DEFAULT_MARK, SOL_PACKET, LinkError

__all__ = [
    "MAX_WORKERS",
    "Channel",
    "Exited",
    "FanOut",
    "Line",
    "Message",
    "Signalled",
    "StopSignals",
    "Worker",
    "WorkerGroup",
    "describe_status",
]

MAX_WORKERS = 64
PACKET_FANOUT = 18
FANOUT_HASH = 0
FANOUT_FLAG_DEFRAG = 0x8000  # reassemble fragments first: they hash like their flow
FANOUT_FLAG_UNIQUEID = 0x2000  # the kernel picks an id no other group has
DRAIN_MAX = 100_000  # frames thrown away from a socket's queue when it joins or mutes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1


# -- the fan-out: what the workers share ---------------------------------------------------


def fanout_join(sock_fd: int, group: int | None) -> int:
    """Put the packet socket `sock_fd` in fan-out group `group` (None: a new group with a
    kernel-picked id) with the flow hash; return the group's id."""
    flags = FANOUT_HASH | FANOUT_FLAG_DEFRAG
    arg = (flags | FANOUT_FLAG_UNIQUEID) << 16 if group is None else group | flags << 16
    with socket.socket(fileno=os.dup(sock_fd)) as sock:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", arg))
        if group is not None:
            return group
        value = sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4)
    return int(struct.unpack("=I", value)[0]) & 0xFFFF


def drain(sock_fd: int) -> int:
    """Throw away the frames queued on a packet socket; return how many."""
    with socket.socket(fileno=os.dup(sock_fd)) as sock:
        for count in range(DRAIN_MAX):
            try:
                sock.recv(1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return count
    return DRAIN_MAX


@dataclass
class _SharedPort:
    """The workers' stand-in for the parent's port reservation: closing it is a no-op."""

    ip: str
    port: int

    def close(self) -> None:
        pass


@dataclass
class FanOut:
    """What N workers of one listening address share; the parent's side. See the module doc.

    `open()` reserves the port, creates the fan-out groups, finds free queues and installs
    the balanced rule; `close()` undoes all of it (every exit path of the parent must
    call it). `driver(i)` is for worker i (1-based), in the forked child.
    """

    ip: str
    port: int
    count: int
    config: Config = field(default_factory=Config)
    mark: int = DEFAULT_MARK
    open_receivers: ReceiverOpener = plumbing.open_receivers
    open_link: LinkOpener = plumbing.open_link
    reserve_port: PortReserver = plumbing.reserve_port
    groups: dict[tuple[str, str], int] = field(default_factory=dict)  # (iface, addr) -> id
    queues: range = range(0)
    _reservation: ReservationLike | None = None
    _group_links: list[LinkLike] = field(default_factory=list)
    _rule: BalancedRule | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.count <= MAX_WORKERS:
            raise ValueError(f"workers must be 2-{MAX_WORKERS} for a fan-out, not {self.count}")
        if self.config.secret == bytes(len(self.config.secret)):
            # One secret for all: each Driver would otherwise draw its own.
            self.config = self.config.with_(secret=os.urandom(16))

    def open(self) -> FanOut:
        try:
            self._reservation = self.reserve_port(self.ip, self.port)
            self.port = self._reservation.port
            self._make_groups()
            self.queues = free_queues(self.count)
            self._rule = BalancedRule(self.port, self.queues, self.mark).install()
        except BaseException:
            self.close()
            raise
        return self

    def _make_groups(self) -> None:
        self._group_links = self.open_receivers(self.ip)
        for link in self._group_links:
            try:
                group = fanout_join(link.fileno(), None)
            except OSError as exc:
                raise LinkError(f"cannot create a PACKET_FANOUT group on {link.iface}: "
                                f"{exc.strerror}") from None
            self.groups[(link.iface, link.src_ip)] = group
            plumbing.mute(link)  # frames hashed to this member are dropped until it leaves

    def release_groups(self) -> None:
        """The parent's members leave the groups (once every worker has joined), so the
        kernel hashes flows over the workers only. Also called in each child at once:
        it closes the child's copies of those sockets."""
        links, self._group_links = self._group_links, []
        for link in links:
            with contextlib.suppress(OSError):
                link.close()

    def close(self) -> None:
        """Remove the rule, leave the groups, release the port (idempotent, best effort)."""
        self.release_groups()
        rule, self._rule = self._rule, None
        reservation, self._reservation = self._reservation, None
        try:
            if rule is not None:
                rule.remove()
        finally:
            if reservation is not None:
                reservation.close()

    # -- the worker's side (in the forked child) ---------------------------------------

    def factories(self, index: int) -> dict[str, Any]:
        """Keyword arguments for Driver() in worker `index` (1-based)."""
        if not 1 <= index <= self.count:
            raise ValueError(f"worker index must be 1-{self.count}, not {index}")
        return {"open_receivers": self._worker_receivers, "open_link": self._worker_link,
                "reserve_port": self._worker_port,
                "make_guard": lambda: self._worker_guard(index)}

    def driver(self, index: int) -> Any:
        """The Driver of worker `index` (1-based): the shared config, the fan-out factories."""
        from tcpscapy.io.driver import Driver

        return Driver(self.config, **self.factories(index))

    def _worker_receivers(self, ip: str) -> list[LinkLike]:
        links = self.open_receivers(ip)
        try:
            for link in links:
                group = self.groups.get((link.iface, link.src_ip))
                if group is None:
                    raise LinkError(f"{link.src_ip} on {link.iface} appeared after the workers "
                                    "started: it has no fan-out group")
                fanout_join(link.fileno(), group)
                drain(link.fileno())  # queued before the join: any flow's frames
        except BaseException:
            for link in links:
                link.close()
            raise
        return links

    def _worker_link(self, dst: str, src: str | None, iface: str | None) -> LinkLike:
        # Only the group members may read: a link opened to send is muted, else it
        # would see (and the driver answer) other workers' flows.
        link = self.open_link(dst, src, iface)
        plumbing.mute(link)
        with contextlib.suppress(OSError):
            drain(link.fileno())
        return link

    def _worker_port(self, ip: str, port: int) -> ReservationLike:
        if (ip, port) == (self.ip, self.port):
            return _SharedPort(ip, port)  # the parent holds it
        return self.reserve_port(ip, port)

    def _worker_guard(self, index: int) -> GuardLike:
        return RstGuard(mark=self.mark, queue_num=self.queues[index - 1],
                        shared_ports={self.port})


# -- the processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line a worker wrote to its stderr."""

    worker: Worker
    text: str


@dataclass(frozen=True)
class Message:
    """One JSON object a worker sent with Channel.send."""

    worker: Worker
    obj: dict[str, Any]


@dataclass(frozen=True)
class Exited:
    """A worker ended; `status` is its wait status (os.waitstatus_to_exitcode reads it)."""

    worker: Worker
    status: int


@dataclass(frozen=True)
class Signalled:
    """The parent got SIGINT or SIGTERM."""

    signum: int


Event = Line | Message | Exited | Signalled


@dataclass(eq=False)
class Worker:
    index: int  # 1-based
    pid: int
    _out: int  # read end of its stderr
    _msgs: int  # read end of its messages
    _pidfd: int
    status: int | None = None  # wait status, once reaped
    _partial: dict[int, bytes] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status is None

    @property
    def exit_code(self) -> int | None:
        return None if self.status is None else os.waitstatus_to_exitcode(self.status)

    def __repr__(self) -> str:
        return f"<Worker {self.index} pid={self.pid}>"


def describe_status(status: int) -> str:
    """'exited with code 3', 'killed by SIGKILL'."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Channel:
    """The worker's end of its message pipe: one JSON object a line."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, **obj: Any) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            while data:
                data = data[os.write(self._fd, data):]


class StopSignals:
    """In a worker: SIGINT/SIGTERM end `wait()`, also when they came during setup.

    A worker starts with both signals blocked (WorkerGroup forks with them blocked),
    so every thread it starts keeps them blocked too and they go to the main thread.
    `wait()` unblocks them: one that came meanwhile is delivered there and then.
    """

    def __init__(self) -> None:
        self.caught: list[int] = []
        self._armed = False
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        first = not self.caught
        self.caught.append(signum)
        if first and self._armed:
            raise _Stop(signum)

    def wait(self, done: threading.Event) -> int | None:
        """Until `done` is set (None) or a stop signal comes (its number)."""
        try:
            self._armed = True
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            if self.caught:
                return self.caught[0]
            while not done.wait(0.5):
                pass
            return None
        except _Stop as stop:
            return stop.signum
        finally:
            self._armed = False


class _Stop(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


WorkerMain = Callable[[int, Channel], int]


class WorkerGroup:
    """Forks `count` workers running `main(index, channel)` (its return value is the exit
    code) and supervises them from the parent: see the module docstring.

    Use as a context manager: leaving it kills and reaps any worker still running and
    restores the parent's signal handlers.
    """

    def __init__(self, count: int, main: WorkerMain) -> None:
        self.count = count
        self._main = main
        self.workers: list[Worker] = []
        self._wake_r = self._wake_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1
        self._events: list[Event] = []

    @property
    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.running]

    def start(self) -> WorkerGroup:
        """Fork every worker (in the calling process's main thread, with no other thread)."""
        if threading.active_count() > 1:
            raise RuntimeError("cannot fork workers while other threads run")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for index in range(1, self.count + 1):
                self.workers.append(self._fork(index))
            self._catch_signals()
        except BaseException:
            self.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return self

    def _fork(self, index: int) -> Worker:
        out_r, out_w = os.pipe()
        msg_r, msg_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                for w in self.workers:
                    for fd in (w._out, w._msgs, w._pidfd):
                        os.close(fd)
                os.close(out_r)
                os.close(msg_r)
                os.dup2(out_w, 2)
                os.close(out_w)
                _die_with_parent(parent)
                code = self._main(index, Channel(msg_w))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stderr.flush()
                os._exit(code)
        os.close(out_w)
        os.close(msg_w)
        for fd in (out_r, msg_r):
            os.set_blocking(fd, False)
        return Worker(index, pid, out_r, msg_r, os.pidfd_open(pid))

    def _catch_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        for signum in STOP_SIGNALS:
            old = signal.getsignal(signum)
            if old != signal.SIG_IGN:
                self._old_handlers[signum] = old
                signal.signal(signum, _ignore)  # the wakeup fd carries the signal number
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)

    # -- events ----------------------------------------------------------------------

    def events(self, timeout: float | None = None) -> list[Event]:
        """What happened since the last call, waiting up to `timeout` s for something."""
        if not self._events:
            fds = [self._wake_r] if self._wake_r >= 0 else []
            for w in self.running:
                fds += [w._out, w._msgs, w._pidfd]
            if fds:
                readable = select.select(fds, [], [], timeout)[0]
                self._collect(set(readable))
        events, self._events = self._events, []
        return events

    def _collect(self, readable: set[int]) -> None:
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                for signum in os.read(self._wake_r, 64):
                    if signum in self._old_handlers:
                        self._events.append(Signalled(signum))
        for w in self.running:
            for fd in (w._out, w._msgs):
                if fd in readable:
                    self._read(w, fd, final=False)
            if w._pidfd in readable:
                self._reap(w)

    def _read(self, w: Worker, fd: int, *, final: bool) -> None:
        data = w._partial.pop(fd, b"")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                final = True
                break
            data += chunk
        *lines, rest = data.split(b"\n")
        if final and rest:
            lines.append(rest)
        elif rest:
            w._partial[fd] = rest
        for raw in lines:
            text = raw.decode(errors="replace")
            if fd == w._out:
                self._events.append(Line(w, text))
            else:
                with contextlib.suppress(ValueError):
                    obj = json.loads(text)
                    if isinstance(obj, dict):
                        self._events.append(Message(w, obj))

    def _reap(self, w: Worker) -> None:
        _, status = os.waitpid(w.pid, 0)
        self._read(w, w._out, final=True)  # what it wrote before it ended
        self._read(w, w._msgs, final=True)
        w.status = status
        for fd in (w._out, w._msgs, w._pidfd):
            os.close(fd)
        self._events.append(Exited(w, status))

    # -- stopping ------------------------------------------------------------------

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every worker still running."""
        for w in self.running:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(w._pidfd, signum)

    def until_all_exited(self, timeout: float) -> Iterator[Event]:
        """Every event until the last worker exits; SIGKILL for those still running
        after `timeout` s (their Exited events follow)."""
        import time

        deadline = time.monotonic() + timeout
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                self.signal_all(signal.SIGKILL)
                left = None
            yield from self.events(left)

    def close(self) -> None:
        """Kill and reap any worker still running; restore the signal handlers."""
        for w in self.running:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(w._pidfd, signal.SIGKILL)
            self._reap(w)
        self._events.clear()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            for signum, old in self._old_handlers.items():
                signal.signal(signum, old if old is not None else signal.SIG_DFL)
            self._old_handlers.clear()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def __enter__(self) -> WorkerGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ignore(signum: int, frame: object) -> None:
    pass  # signal.set_wakeup_fd writes the number; WorkerGroup.events reads it


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent dies (and at once if it already has)."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
