"""iptables rule management for the RST guard: build, add, list, delete, clean up.

Every rule we install carries the comment ``tcpscapy pid=PID`` so that its owner
can be found later. Rules live in the filter table; we look at both the nf_tables
and the legacy backend, since either may hold rules left by an earlier run.
All calls are argument lists (never a shell) with ``-w`` for the xtables lock.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tcpscapy.io import ipset
from tcpscapy.netns import NeedsRoot

COMMENT_PREFIX = "tcpscapy pid="
CHAIN = "OUTPUT"
LOCK_WAIT_S = 5  # -w: wait this long for the xtables lock
CALL_TIMEOUT_S = 15.0  # hard bound on one iptables process

_PID_RE = re.compile(r"tcpscapy pid=(\d+)")
# thread-self, not /proc/net (= the main thread's namespace): a caller may have
# moved just this thread into another network namespace with setns().
_LEGACY_TABLES = Path("/proc/thread-self/net/ip_tables_names")
_CAP_NET_ADMIN = 12


class GuardError(Exception):
    """The RST guard cannot do what was asked; the message is one line for the user."""


class NotRootError(GuardError, NeedsRoot):
    """iptables and NFQUEUE need root (CAP_NET_ADMIN)."""


class IptablesMissingError(GuardError):
    """No iptables binary on PATH."""


@dataclass(frozen=True)
class Backend:
    """One iptables flavour: ``name`` is "nft" or "legacy", ``binary`` the program to run."""

    name: str
    binary: str


@dataclass(frozen=True)
class GuardRule:
    """One tcpscapy rule found in a backend's filter table."""

    backend: str
    chain: str
    spec: tuple[str, ...]  # match + target arguments, as for -A/-D CHAIN
    pid: int
    alive: bool
    port: int | None
    queue_num: int | None  # the first queue of a --queue-balance range
    queue_last: int | None = None  # its last queue (None: a single --queue-num)
    set_name: str | None = None  # the ipset of source ports it matches (--match-set)

    def describe(self) -> str:
        state = "alive" if self.alive else "stale"
        port = "?" if self.port is None else str(self.port)
        if self.set_name is not None:
            port = f"set:{self.set_name}"
        queue = "?" if self.queue_num is None else str(self.queue_num)
        if self.queue_last is not None:
            queue += f":{self.queue_last}"
        return (
            f"{self.backend:6} pid={self.pid} ({state}) chain={self.chain} "
            f"sport={port} queue={queue}"
        )


@dataclass(frozen=True)
class GuardSet:
    """One tcpscapy ipset (the source ports a process's rule matches)."""

    name: str
    pid: int
    alive: bool
    ports: tuple[int, ...] = ()  # its members: the source ports the owner's rule matches

    def describe(self) -> str:
        state = "alive" if self.alive else "stale"
        ports = ",".join(map(str, self.ports)) or "none"
        return f"ipset  pid={self.pid} ({state}) set={self.name} sport={ports}"


def has_net_admin() -> bool:
    """True if this thread may change netfilter rules (CAP_NET_ADMIN; root has it)."""
    try:
        with open("/proc/thread-self/status") as status_file:
            for line in status_file:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def require_root() -> None:
    if not has_net_admin():
        raise NotRootError("the RST guard needs root: iptables and NFQUEUE require CAP_NET_ADMIN")


def comment_for(pid: int) -> str:
    return f"{COMMENT_PREFIX}{pid}"


def parse_owner_pid(rule: str) -> int | None:
    """The pid named by a rule's tcpscapy comment, or None if it is not ours."""
    match = _PID_RE.search(rule)
    return int(match.group(1)) if match else None


def rst_rule_spec(port: int, mark: int, queue_num: int, pid: int, *,
                  queue_last: int | None = None) -> list[str]:
    """Arguments after ``-I/-D CHAIN`` for the rule that queues RSTs leaving ``port``.

    With ``queue_last`` the rule spreads them over queues queue_num..queue_last
    (``--queue-balance``, by a hash of the addresses), one per worker process.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    for number in (queue_num, queue_last if queue_last is not None else queue_num):
        if not 0 <= number < 65536:
            raise ValueError(f"queue number out of range: {number}")
    if queue_last is None:
        target = ["--queue-num", str(queue_num)]
    elif queue_last > queue_num:
        target = ["--queue-balance", f"{queue_num}:{queue_last}"]
    else:
        raise ValueError(f"bad queue range {queue_num}:{queue_last}: the last must be above "
                         "the first")
    return [
        "-p", "tcp", "--sport", str(port), "--tcp-flags", "RST", "RST",
        # Our own segments sent through a raw IP socket carry SO_MARK = mark.
        "-m", "mark", "!", "--mark", hex(mark),
        "-m", "comment", "--comment", comment_for(pid),
        # --queue-bypass: with no process on the queue, packets pass (fail open).
        "-j", "NFQUEUE", *target, "--queue-bypass",
    ]  # fmt: skip


def set_rule_spec(set_name: str, mark: int, queue_num: int, pid: int) -> list[str]:
    """Arguments after ``-I/-D CHAIN`` for the one rule of a process: RSTs leaving any
    source port in ipset ``set_name`` go to its queue."""
    if not 0 <= queue_num < 65536:
        raise ValueError(f"queue number out of range: {queue_num}")
    return [
        "-p", "tcp", "--tcp-flags", "RST", "RST",
        "-m", "set", "--match-set", set_name, "src",
        "-m", "mark", "!", "--mark", hex(mark),
        "-m", "comment", "--comment", comment_for(pid),
        "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass",
    ]  # fmt: skip


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie (a zombie's rules are stale)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _signal_zero(pid)
    state = stat.rpartition(")")[2].split()[:1]  # the command name may contain spaces
    return state not in (["Z"], ["X"])


def _signal_zero(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- backends -----------------------------------------------------------------


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@functools.cache
def default_backend() -> Backend:
    """The backend the plain ``iptables`` command uses on this system."""
    plain = _which("iptables")
    if plain is None:
        raise IptablesMissingError("iptables not found: install the iptables package")
    version = _call([plain, "-V"]).strip()
    name = "legacy" if "legacy" in version else "nft"
    return Backend(name, _which(f"iptables-{name}") or plain)


def backend_named(name: str) -> Backend:
    if name not in ("nft", "legacy"):
        raise GuardError(f"unknown iptables backend {name!r} (expected nft or legacy)")
    binary = _which(f"iptables-{name}")
    if binary is None:
        default = default_backend()
        if default.name != name:
            raise IptablesMissingError(f"iptables-{name} not found")
        return default
    return Backend(name, binary)


def installed_backends() -> list[Backend]:
    """Every backend with a binary here, the default first."""
    found = [default_backend()]
    for name in ("nft", "legacy"):
        binary = _which(f"iptables-{name}")
        if binary and all(b.name != name for b in found):
            found.append(Backend(name, binary))
    return found


# -- calls --------------------------------------------------------------------


class _Failed(GuardError):
    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def _call(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=CALL_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise IptablesMissingError(f"{argv[0]} not found: install the iptables package") from None
    except subprocess.TimeoutExpired:
        raise GuardError(f"{Path(argv[0]).name} did not finish in {CALL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln and not ln.startswith("# Warning")]
        detail = lines[0] if lines else f"exit status {done.returncode}"
        raise _Failed(f"{Path(argv[0]).name} {' '.join(argv[1:])}: {detail}", done.stderr)
    return done.stdout


def _iptables(backend: Backend, *args: str) -> str:
    require_root()
    return _call([backend.binary, "-w", str(LOCK_WAIT_S), *args])


def insert_rule(backend: Backend, spec: Sequence[str], chain: str = CHAIN) -> None:
    # Insert at the top: an earlier ACCEPT in the user's chain must not hide our rule.
    _iptables(backend, "-I", chain, "1", *spec)


def delete_rule(backend: Backend, spec: Sequence[str], chain: str = CHAIN) -> bool:
    """Delete one rule; False if it was not there (someone removed it already)."""
    try:
        _iptables(backend, "-D", chain, *spec)
    except _Failed as failure:
        if "does a matching rule exist" in failure.stderr:
            return False
        raise
    return True


def _has_tables(backend: Backend) -> bool:
    # Listing a legacy table instantiates it in this namespace (and makes
    # iptables-nft print warnings ever after), so ask /proc first.
    if backend.name != "legacy":
        return True
    try:
        return "filter" in _LEGACY_TABLES.read_text().split()
    except OSError:
        return False


def parse_rules(backend_name: str, listing: str) -> list[GuardRule]:
    """Our rules in ``iptables -S`` output."""
    rules = []
    for line in listing.splitlines():
        if not line.startswith("-A ") or (pid := parse_owner_pid(line)) is None:
            continue
        words = split_saved(line)
        chain, spec = words[1], tuple(words[2:])
        first, last = _int_after(spec, "--queue-num"), None
        if first is None:
            first, last = _queue_range(spec)
        rules.append(
            GuardRule(
                backend=backend_name,
                chain=chain,
                spec=spec,
                pid=pid,
                alive=pid_alive(pid),
                port=_int_after(spec, "--sport"),
                queue_num=first,
                queue_last=last,
                set_name=_word_after(spec, "--match-set"),
            )
        )
    return rules


def split_saved(line: str) -> list[str]:
    """The words of one ``iptables -S`` line, unquoted as iptables-restore does.

    iptables puts a value with anything but ``[A-Za-z0-9_-]`` in double quotes and
    backslash-escapes ``"``, ``\\`` and ``'`` inside them. shlex keeps the backslash
    before ``'``, so a rule with a quote in its comment could then not be deleted.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = quoted = escaped = False
    for char in line:
        if escaped:
            word.append(char)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted, in_word = not quoted, True
        elif quoted or char not in " \t\n":
            word.append(char)
            in_word = True
        elif in_word:
            words.append("".join(word))
            word, in_word = [], False
    if in_word:
        words.append("".join(word))
    return words


def _word_after(words: Sequence[str], flag: str) -> str | None:
    try:
        return words[words.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def _int_after(words: Sequence[str], flag: str) -> int | None:
    try:
        return int(words[words.index(flag) + 1])
    except (ValueError, IndexError):
        return None


def _queue_range(words: Sequence[str]) -> tuple[int | None, int | None]:
    """(first, last) of ``--queue-balance FIRST:LAST``; (None, None) without one."""
    try:
        first, last = words[words.index("--queue-balance") + 1].split(":")
        return int(first), int(last)
    except (ValueError, IndexError):
        return None, None


def list_rules(backend: Backend) -> list[GuardRule]:
    if not _has_tables(backend):
        return []
    return parse_rules(backend.name, _iptables(backend, "-t", "filter", "-S"))


def status() -> list[GuardRule]:
    """Every tcpscapy rule in this network namespace, over all installed backends."""
    require_root()
    return [rule for backend in installed_backends() for rule in list_rules(backend)]


def list_sets() -> list[GuardSet]:
    """Every tcpscapy ipset in this network namespace."""
    require_root()
    with _port_sets() as sets:
        return [GuardSet(name, pid, pid_alive(pid), tuple(sets.members(name)))
                for name in sets.names() if (pid := ipset.owner_pid(name)) is not None]


def cleanup(*, everything: bool = False) -> list[GuardRule]:
    """Remove rules of dead owners (or all tcpscapy rules); return what was removed."""
    return cleanup_all(everything=everything)[0]


def cleanup_all(*, everything: bool = False) -> tuple[list[GuardRule], list[GuardSet]]:
    """Remove the rules, then the ipsets, of dead owners (or all of tcpscapy's)."""
    require_root()
    removed = []
    for backend in installed_backends():
        for rule in list_rules(backend):
            if (everything or not rule.alive) and delete_rule(backend, rule.spec, rule.chain):
                removed.append(rule)
    gone = [found for found in list_sets() if everything or not found.alive]
    if gone:
        with _port_sets() as sets:
            for found in gone:
                sets.destroy(found.name)
    return removed, gone


def cleanup_stale() -> int:
    """Remove rules and sets whose owner pid no longer exists; return how many rules."""
    return len(cleanup())


@contextmanager
def _port_sets() -> Iterator[ipset.PortSet]:
    """An ipset socket whose errors are GuardErrors."""
    try:
        with ipset.PortSet() as sets:
            yield sets
    except ipset.IpsetError as err:
        raise GuardError(err.strerror or str(err)) from None
