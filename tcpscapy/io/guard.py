"""The RST guard: keep the host kernel from resetting TCP connections our engine owns.

Our engine sends and receives raw segments, so the kernel sees SYN-ACKs and data for
ports where it has no socket (or only a bound, unconnected one reserving the port)
and answers them with RST. One iptables rule per guard queues the kernel's outgoing
RSTs from any port in the guard's kernel set (an ipset ``tcpscapy-PID-QUEUE``, see
tcpscapy.io.ipset) to its NFQUEUE; the handler here drops those whose 4-tuple we
own and accepts the rest. Owning a port is adding it to the set over netlink
(~10 us), so only start() and stop() spawn ``iptables``.

Only OUTPUT needs a rule. The kernel's RST is generated locally, so it always passes
OUTPUT, and dropping it there means it reaches neither the peer nor our own capture.
Inbound segments need no steering: the engine reads them from an AF_PACKET socket,
which sees them before netfilter's INPUT hook, and queueing inbound traffic would put
every data segment (not just rare RSTs) through Python. Our own RSTs either skip
OUTPUT (AF_PACKET) or carry SO_MARK = ``mark`` (raw IP socket), which the rule excludes.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import signal
import struct
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, NamedTuple, TypeVar

from netfilterqueue import NetfilterQueue, Packet

from tcpscapy.io import ipset, iptables
from tcpscapy.io.iptables import (
    Backend,
    GuardError,
    GuardRule,
    IptablesMissingError,
    NotRootError,
    cleanup,
    cleanup_stale,
    status,
)

__all__ = [
    "DEFAULT_MARK",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "BalancedRule",
    "GuardError",
    "GuardRule",
    "IptablesMissingError",
    "NotRootError",
    "OwnershipTable",
    "RstGuard",
    "TcpHeader",
    "cleanup",
    "cleanup_stale",
    "free_queues",
    "parse_ipv4_tcp",
    "status",
    "stop_on_signals",
]

DEFAULT_MARK = 0x7C5
EXIT_SIGINT = 130  # 128 + SIGINT, the shell's convention
EXIT_SIGTERM = 143  # 128 + SIGTERM

# Queue numbers are tried from a pid-derived start so that concurrent processes
# rarely collide; a collision only costs one failed bind and a retry.
QUEUE_BASE = 10000
QUEUE_SPAN = 50000
QUEUE_TRIES = 64

_ANY = bytes(4)  # 0.0.0.0: a listener bound to every local address
_RST = 0x04
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")

_Key = TypeVar("_Key", bound=tuple[Any, ...])


class TcpHeader(NamedTuple):
    src: bytes  # 4 packed bytes
    sport: int
    dst: bytes
    dport: int
    flags: int


def parse_ipv4_tcp(packet: bytes) -> TcpHeader | None:
    """Addresses, ports and flags of an IPv4/TCP packet; None if it is anything else."""
    if len(packet) < _IPV4.size:
        return None
    ver_ihl, _tos, _len, _id, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(packet)
    ihl = (ver_ihl & 0x0F) * 4
    # A non-first fragment has no TCP header at the start of its payload.
    if ver_ihl >> 4 != 4 or proto != 6 or ihl < _IPV4.size or frag & 0x1FFF:
        return None
    if len(packet) < ihl + 14:
        return None
    sport, dport = _PORTS.unpack_from(packet, ihl)
    return TcpHeader(src, sport, dst, dport, packet[ihl + 13])


def _packed(ip: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError:
        raise ValueError(f"not an IPv4 address: {ip!r}") from None


def _port(port: int) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


class OwnershipTable:
    """Which kernel RSTs to drop: owned 4-tuples and owned listening (ip, port) pairs.

    Also counts owners per local port, so the caller knows when a port's rule must
    be added (first owner) or removed (last owner gone).
    """

    def __init__(self) -> None:
        self._tuples: set[tuple[bytes, int, bytes, int]] = set()
        self._listeners: set[tuple[bytes, int]] = set()
        self._per_port: dict[int, int] = {}

    @property
    def ports(self) -> list[int]:
        return sorted(self._per_port)

    def own(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> bool:
        """Own a 4-tuple; True if its local port had no owner before."""
        key = (_packed(local_ip), _port(local_port), _packed(remote_ip), _port(remote_port))
        return self._add(self._tuples, key, local_port)

    def disown(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> bool:
        """Forget a 4-tuple (no-op if not owned); True if its local port has no owner left."""
        key = (_packed(local_ip), _port(local_port), _packed(remote_ip), _port(remote_port))
        return self._remove(self._tuples, key, local_port)

    def own_port(self, local_ip: str, local_port: int) -> bool:
        """Own every tuple on a listening address (0.0.0.0 = all local addresses)."""
        return self._add(self._listeners, (_packed(local_ip), _port(local_port)), local_port)

    def disown_port(self, local_ip: str, local_port: int) -> bool:
        return self._remove(self._listeners, (_packed(local_ip), _port(local_port)), local_port)

    def _add(self, owned: set[_Key], key: _Key, port: int) -> bool:
        if key in owned:
            return False
        owned.add(key)
        self._per_port[port] = self._per_port.get(port, 0) + 1
        return self._per_port[port] == 1

    def _remove(self, owned: set[_Key], key: _Key, port: int) -> bool:
        if key not in owned:
            return False
        owned.discard(key)
        self._per_port[port] -= 1
        if self._per_port[port] == 0:
            del self._per_port[port]
            return True
        return False

    def should_drop(self, packet: bytes) -> bool:
        """True for an RST leaving a tuple or listener we own; everything else passes."""
        hdr = parse_ipv4_tcp(packet)
        if hdr is None or not hdr.flags & _RST:
            return False
        return (
            (hdr.src, hdr.sport, hdr.dst, hdr.dport) in self._tuples
            or (hdr.src, hdr.sport) in self._listeners
            or (_ANY, hdr.sport) in self._listeners
        )


class RstGuard:
    """An NFQUEUE rule over a kernel port set, plus the handler that drops the kernel's
    RSTs for tuples we own.

    Use as a context manager, or call start()/stop(). Feed fileno() to your selector
    and call process_pending() when it is readable. Rules are removed by stop(), on
    leaving the ``with`` block, at interpreter exit, and on SIGINT/SIGTERM if
    stop_on_signals() was called.

    ``shared_ports`` are local ports whose RSTs another process's rule already
    queues to ``queue_num`` (a worker group's BalancedRule): the guard owns them
    and gives their verdicts, but installs no rule of its own for them.
    """

    def __init__(
        self,
        mark: int = DEFAULT_MARK,
        queue_num: int | None = None,
        *,
        backend: str | None = None,
        shared_ports: Iterable[int] = (),
    ) -> None:
        self.mark = mark
        self.shared_ports = frozenset(shared_ports)
        self.dropped = 0
        self.accepted = 0
        self._wanted_queue = queue_num
        self._backend_name = backend
        self._backend: Backend | None = None
        self._table = OwnershipTable()
        self._nfq: NetfilterQueue | None = None
        self._queue_num: int | None = None
        self._members: set[int] = set()  # ports in our kernel set
        self._sets: ipset.PortSet | None = None
        self._set_name: str | None = None
        self._rule: list[str] | None = None  # our one rule, once installed
        self._pid = os.getpid()
        # Signal handlers run on the main thread between bytecodes; if it is in the
        # middle of an iptables call or a queue run, stopping must wait until it is done.
        self._lock = threading.RLock()
        self._busy_thread: int | None = None
        self._deferred: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._nfq is not None

    @property
    def queue_num(self) -> int | None:
        return self._queue_num

    @property
    def backend(self) -> Backend | None:
        return self._backend

    @property
    def ports(self) -> list[int]:
        """Local ports that are members of our kernel set (so our rule matches them)."""
        return sorted(self._members)

    @property
    def set_name(self) -> str | None:
        """The ipset our rule matches, while started."""
        return self._set_name

    def start(self) -> RstGuard:
        """Remove stale rules, bind a free queue, install rules for owned ports."""
        with self._critical():
            if self.running:
                return self
            iptables.require_root()
            self._pid = os.getpid()  # the pid our rules name, and the only one that may remove them
            self._backend = (
                iptables.backend_named(self._backend_name)
                if self._backend_name
                else iptables.default_backend()
            )
            cleanup_stale()
            self._bind_queue()
            atexit.register(self._stop_at_exit)
            try:
                for port in self._table.ports:
                    self._add_rule(port)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Remove our rules and release the queue. Safe to call any number of times."""
        if os.getpid() != self._pid:
            return  # a forked child inherited this object; the rules are its parent's
        with self._critical():
            failures: list[GuardError] = []
            for step in (self._remove_rule, self._sweep, self._destroy_set):
                try:
                    step()
                except GuardError as err:
                    failures.append(err)
            if self._nfq is not None:
                self._nfq.run(block=False)  # verdicts for anything already queued
                self._nfq.unbind()
                self._nfq = None  # closing the netlink socket happens on dealloc
                self._queue_num = None
            atexit.unregister(self._stop_at_exit)
            if failures:
                raise failures[0]

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except GuardError as err:
            print(f"tcpscapy: RST guard cleanup failed: {err}", file=sys.stderr)

    def __enter__(self) -> RstGuard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- ownership ---------------------------------------------------------------

    def own(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> None:
        """Drop the kernel's RSTs from local_ip:local_port to remote_ip:remote_port."""
        with self._critical():
            if self._table.own(local_ip, local_port, remote_ip, remote_port):
                try:
                    self._add_rule(local_port)
                except BaseException:
                    self._table.disown(local_ip, local_port, remote_ip, remote_port)
                    raise

    def disown(self, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> None:
        with self._critical():
            if self._table.disown(local_ip, local_port, remote_ip, remote_port):
                self._remove_member(local_port)

    def own_port(self, local_ip: str, local_port: int) -> None:
        """Own every remote tuple on a listening address (0.0.0.0 = any local address)."""
        with self._critical():
            if self._table.own_port(local_ip, local_port):
                try:
                    self._add_rule(local_port)
                except BaseException:
                    self._table.disown_port(local_ip, local_port)
                    raise

    def disown_port(self, local_ip: str, local_port: int) -> None:
        with self._critical():
            if self._table.disown_port(local_ip, local_port):
                self._remove_member(local_port)

    # -- the queue -----------------------------------------------------------------

    def fileno(self) -> int:
        if self._nfq is None:
            raise GuardError("the RST guard is not started")
        return self._nfq.get_fd()

    def process_pending(self) -> int:
        """Give a verdict to every queued packet, without blocking; return how many."""
        with self._critical():
            if self._nfq is None:
                return 0
            before = self.dropped + self.accepted
            self._nfq.run(block=False)
            return self.dropped + self.accepted - before

    def _on_packet(self, packet: Packet) -> None:
        # Must not raise: netfilterqueue cannot pass an exception out of its C loop.
        try:
            drop = self._table.should_drop(packet.get_payload())
        except Exception:
            drop = False
        if drop:
            packet.drop()
            self.dropped += 1
        else:
            packet.accept()
            self.accepted += 1

    def _bind_queue(self) -> None:
        try:
            nfq = NetfilterQueue()
        except OSError as err:
            raise GuardError(f"cannot open NFQUEUE (nfnetlink_queue): {err}") from None
        if self._wanted_queue is not None:
            candidates: Iterator[int] = iter([self._wanted_queue])
        else:
            candidates = _queue_candidates(self._pid)
        for number in candidates:
            try:
                with warnings.catch_warnings():
                    # A smaller receive buffer than asked for is fine: RSTs are rare.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    nfq.bind(number, self._on_packet)
            except OSError:
                continue
            self._nfq, self._queue_num = nfq, number
            return
        what = f"queue {self._wanted_queue}" if self._wanted_queue is not None else "a queue"
        raise GuardError(f"could not bind NFQUEUE {what}: all tried numbers are in use")

    # -- rules -------------------------------------------------------------------

    def _install(self) -> None:
        """Our kernel set (empty) and the one rule that matches it."""
        assert self._backend is not None and self._queue_num is not None
        name = ipset.set_name(self._pid, self._queue_num)
        try:
            if self._sets is None:
                self._sets = ipset.PortSet()
            self._set_name = name  # from here on, stop() destroys it
            self._sets.create(name)
        except ipset.IpsetError as err:
            raise GuardError(err.strerror or str(err)) from None
        spec = iptables.set_rule_spec(name, self.mark, self._queue_num, self._pid)
        iptables.insert_rule(self._backend, spec)
        self._rule = spec

    def _add_rule(self, port: int) -> None:
        if self._backend is None or self._queue_num is None or port in self._members:
            return  # not started: start() adds the owned ports
        if port in self.shared_ports:
            return  # the group's balanced rule queues them to us
        if self._rule is None:
            self._install()  # at the first port of our own: a worker may never need one
        assert self._sets is not None and self._set_name is not None
        try:
            self._sets.add(self._set_name, port)
        except ipset.IpsetError as err:
            raise GuardError(err.strerror or str(err)) from None
        self._members.add(port)

    def _remove_member(self, port: int) -> None:
        if port not in self._members or self._sets is None or self._set_name is None:
            return
        self._members.discard(port)
        try:
            self._sets.delete(self._set_name, port)
        except ipset.IpsetError as err:
            raise GuardError(err.strerror or str(err)) from None

    def _remove_rule(self) -> None:
        spec, self._rule = self._rule, None
        if spec is not None and self._backend is not None:
            iptables.delete_rule(self._backend, spec)

    def _sweep(self) -> None:
        # Belt and braces: any rule still naming our pid and queue is ours.
        if self._backend is None or self._queue_num is None:
            return
        for rule in iptables.list_rules(self._backend):
            if rule.pid == self._pid and rule.queue_num == self._queue_num:
                iptables.delete_rule(self._backend, rule.spec, rule.chain)

    def _destroy_set(self) -> None:
        """After the rule is gone: the set, and the socket we spoke to it on."""
        sets, name = self._sets, self._set_name
        self._sets = self._set_name = None
        self._members.clear()
        if sets is None:
            return
        try:
            if name is not None:
                sets.destroy(name)
        except ipset.IpsetError as err:
            raise GuardError(err.strerror or str(err)) from None
        finally:
            sets.close()

    # -- signal deferral ----------------------------------------------------------

    @contextmanager
    def _critical(self) -> Iterator[None]:
        with self._lock:
            outer = self._busy_thread is None
            self._busy_thread = threading.get_ident()
            try:
                yield
            finally:
                if outer:
                    self._busy_thread = None
                    deferred, self._deferred = self._deferred, []
                    for action in deferred:
                        action()

    def _busy_here(self) -> bool:
        return self._busy_thread == threading.get_ident()


def _queue_candidates(pid: int) -> Iterator[int]:
    first = pid % QUEUE_SPAN
    for i in range(QUEUE_TRIES):
        yield QUEUE_BASE + (first + i) % QUEUE_SPAN


def free_queues(count: int, pid: int | None = None) -> range:
    """``count`` consecutive NFQUEUE numbers that no process has bound right now.

    Probed by binding each and letting it go again: a process that binds one of
    them before our workers do wins the race, and the worker then fails to start
    with a clear error.
    """
    if count < 1:
        raise ValueError(f"queue count must be at least 1, not {count}")
    iptables.require_root()
    try:
        probes = [NetfilterQueue() for _ in range(count)]
    except OSError as err:
        raise GuardError(f"cannot open NFQUEUE (nfnetlink_queue): {err}") from None
    for first in _queue_candidates(os.getpid() if pid is None else pid):
        if first + count > QUEUE_BASE + QUEUE_SPAN:
            continue  # a range may not wrap around
        bound: list[NetfilterQueue] = []
        try:
            for number, nfq in enumerate(probes, first):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    nfq.bind(number, _accept)
                bound.append(nfq)
        except OSError:
            continue
        finally:
            for nfq in bound:
                nfq.unbind()
        return range(first, first + count)
    raise GuardError(f"could not find {count} free NFQUEUE numbers in a row")


def _accept(packet: Packet) -> None:
    packet.accept()  # never called: probes are unbound before any packet is queued


class BalancedRule:
    """One rule that spreads the kernel's RSTs leaving ``port`` over NFQUEUE ``queues``.

    For worker processes that serve one listening port, each with an RstGuard bound
    to one of the queues and ``shared_ports={port}``. NFQUEUE picks the queue by a
    hash of the addresses, not by flow, so a worker may get the RST of a flow
    another worker serves: the verdict depends only on the port, which they all own.
    The rule names this process (the workers' parent) as its owner: remove() takes
    it away, and so does interpreter exit; if this process dies first, the rule is
    stale and the next guard start (or ``tcpscapy guard cleanup``) removes it.
    """

    def __init__(self, port: int, queues: range, mark: int = DEFAULT_MARK, *,
                 backend: str | None = None) -> None:
        if len(queues) < 2 or queues.step != 1:
            raise ValueError(f"a balanced rule needs two or more consecutive queues, "
                             f"not {queues}")
        self.port = port
        self.queues = queues
        self.mark = mark
        self._backend_name = backend
        self._backend: Backend | None = None
        self._spec: list[str] | None = None
        self._pid = os.getpid()

    @property
    def installed(self) -> bool:
        return self._spec is not None

    def install(self) -> BalancedRule:
        """Remove stale rules of dead owners, then insert ours (once)."""
        if self._spec is not None:
            return self
        iptables.require_root()
        self._pid = os.getpid()
        self._backend = (iptables.backend_named(self._backend_name) if self._backend_name
                         else iptables.default_backend())
        cleanup_stale()
        spec = iptables.rst_rule_spec(self.port, self.mark, self.queues[0], self._pid,
                                      queue_last=self.queues[-1])
        atexit.register(self._remove_at_exit)
        try:
            iptables.insert_rule(self._backend, spec)
        except BaseException:
            atexit.unregister(self._remove_at_exit)
            raise
        self._spec = spec
        return self

    def remove(self) -> None:
        """Delete the rule; safe to call any number of times, and a no-op in a forked child."""
        if os.getpid() != self._pid:
            return
        spec, self._spec = self._spec, None
        atexit.unregister(self._remove_at_exit)
        if spec is not None and self._backend is not None:
            iptables.delete_rule(self._backend, spec)

    def _remove_at_exit(self) -> None:
        try:
            self.remove()
        except GuardError as err:
            print(f"tcpscapy: RST guard cleanup failed: {err}", file=sys.stderr)

    def __enter__(self) -> BalancedRule:
        return self.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


_EXIT_CODES = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}


def stop_on_signals(*guards: RstGuard) -> Callable[[], None]:
    """On SIGINT/SIGTERM, stop ``guards`` first, then let the previous handler decide.

    If the previous handler is a Python function (other than Python's default SIGINT
    handler) it is called after the guards are stopped. Otherwise the process exits
    via SystemExit with 130 (SIGINT) or 143 (SIGTERM), so ``finally`` blocks still run.
    A signal the caller ignores (SIG_IGN) is left alone. Call from the main thread.
    Returns a function that restores the previous handlers.
    """
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        for guard in guards:
            if guard._busy_here():
                # Interrupted mid-operation on this thread: finish it, then come back.
                guard._deferred.append(lambda: handler(signum, frame))
                return
        for guard in guards:
            guard.stop()
        before = previous[signum]
        if callable(before) and before is not signal.default_int_handler:
            before(signum, frame)
            return
        raise SystemExit(_EXIT_CODES[signal.Signals(signum)])

    for signum in _EXIT_CODES:
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before if before is not None else signal.SIG_DFL)

    return restore
