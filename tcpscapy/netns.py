"""Move the calling thread into a named network namespace and back.

`ip netns add NAME` pins a namespace at /run/netns/NAME. `enter(NAME)` switches only the
calling thread (setns(2) with CLONE_NEWNET), so other threads keep working where they are.
Sockets created inside stay in that namespace after the block ends; subprocesses started
inside inherit it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CAP_SYS_ADMIN = 21
# /proc/self/ns/net names the thread-group leader's namespace; we need this thread's.
_THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


class NeedsRoot(PermissionError):
    """The operation needs root (CAP_SYS_ADMIN / CAP_NET_ADMIN / CAP_NET_RAW)."""


class NamespaceNotFound(FileNotFoundError):
    """No network namespace of that name under /run/netns."""


def path(name: str) -> str:
    """The bind-mount path of a named namespace; rejects names that are not plain file names."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def is_privileged() -> bool:
    """True if this thread holds CAP_SYS_ADMIN, which namespace work needs (root has it)."""
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return os.geteuid() == 0


def current_id() -> int:
    """Inode number of the calling thread's network namespace (unique while it lives)."""
    return os.stat(_THREAD_NETNS).st_ino


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise NeedsRoot(f"entering network namespace {what} needs root")
        raise OSError(err, f"setns into {what} failed: {os.strerror(err)}")


@contextmanager
def enter(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside network namespace `name`."""
    target = path(name)
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(f"network namespace {name!r} does not exist") from None
    except PermissionError:
        raise NeedsRoot(f"entering network namespace {name!r} needs root") from None
    try:
        original_fd = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target_fd, repr(name))
            try:
                yield
            finally:
                # Failing to come back would leave the thread stranded: let that propagate.
                _setns(original_fd, "the original namespace")
        finally:
            os.close(original_fd)
    finally:
        os.close(target_fd)


def local_ipv4_addresses() -> set[str]:
    """The IPv4 addresses of the calling thread's namespace (every interface's, up or not).

    Read from the kernel's FIB (/proc/thread-self/net/fib_trie): each local address is a
    "/32 host LOCAL" leaf under its "|-- ADDR" line. No subprocess, no netlink socket.
    """
    found: set[str] = set()
    last = ""
    try:
        with open("/proc/thread-self/net/fib_trie") as f:
            for line in f:
                text = line.strip()
                if text.startswith("|-- "):
                    last = text[4:]
                elif text.startswith("/32 host LOCAL") and last:
                    found.add(last)
    except OSError:
        pass  # no /proc: nothing known to be local
    return found
