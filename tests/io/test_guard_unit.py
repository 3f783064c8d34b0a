"""The RST guard's pure parts: header parsing, drop decision, rule arguments, signals."""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, IPOption_NOP, IPv6, fragment, raw

from tcpscapy.cli import main
from tcpscapy.io import guard as guard_mod
from tcpscapy.io import ipset, iptables
from tcpscapy.io.guard import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    NotRootError,
    OwnershipTable,
    RstGuard,
    parse_ipv4_tcp,
    stop_on_signals,
)

LOCAL, REMOTE = "10.1.0.1", "10.1.0.2"


def tcp_bytes(src: str, sport: int, dst: str, dport: int, flags: str, **ip: object) -> bytes:
    return raw(IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags))


# -- header parsing -----------------------------------------------------------------


def test_parse_reads_addresses_ports_flags() -> None:
    hdr = parse_ipv4_tcp(tcp_bytes(LOCAL, 443, REMOTE, 51000, "RA"))
    assert hdr is not None
    assert (hdr.src, hdr.sport, hdr.dst, hdr.dport) == (
        bytes([10, 1, 0, 1]), 443, bytes([10, 1, 0, 2]), 51000,
    )  # fmt: skip
    assert hdr.flags == int(TCP(flags="RA").flags)


def test_parse_honours_ip_options() -> None:
    pkt = tcp_bytes(LOCAL, 443, REMOTE, 51000, "R", options=[IPOption_NOP()] * 4)
    assert pkt[0] & 0x0F == 6  # IHL really grew past 5
    hdr = parse_ipv4_tcp(pkt)
    assert hdr is not None and (hdr.sport, hdr.dport, hdr.flags) == (443, 51000, 0x04)


@pytest.mark.parametrize(
    "packet",
    [
        raw(IP(src=LOCAL, dst=REMOTE) / UDP(sport=443, dport=51000)),
        raw(IPv6(src="::1", dst="::1") / TCP(sport=443, dport=51000, flags="R")),
        tcp_bytes(LOCAL, 443, REMOTE, 51000, "R")[:30],
        b"",
        b"\x45" + bytes(19),
    ],
    ids=["udp", "ipv6", "truncated", "empty", "no-tcp-header"],
)
def test_parse_rejects_non_tcp(packet: bytes) -> None:
    assert parse_ipv4_tcp(packet) is None


def test_parse_rejects_later_fragments() -> None:
    big = IP(src=LOCAL, dst=REMOTE) / TCP(sport=443, dport=51000, flags="R") / (b"x" * 64)
    first, *rest = (raw(frag) for frag in fragment(big, fragsize=32))
    assert parse_ipv4_tcp(first) is not None
    assert rest and all(parse_ipv4_tcp(frag) is None for frag in rest)


# -- the drop decision ----------------------------------------------------------------


def test_drops_only_rsts_of_owned_tuples() -> None:
    table = OwnershipTable()
    table.own(LOCAL, 443, REMOTE, 51000)
    assert table.should_drop(tcp_bytes(LOCAL, 443, REMOTE, 51000, "R"))
    assert table.should_drop(tcp_bytes(LOCAL, 443, REMOTE, 51000, "RA"))
    assert not table.should_drop(tcp_bytes(LOCAL, 443, REMOTE, 51000, "SA"))  # not an RST
    assert not table.should_drop(tcp_bytes(LOCAL, 443, REMOTE, 51001, "R"))  # other remote port
    assert not table.should_drop(tcp_bytes(LOCAL, 443, "10.1.0.3", 51000, "R"))  # other host
    assert not table.should_drop(tcp_bytes(REMOTE, 51000, LOCAL, 443, "R"))  # inbound direction
    assert not table.should_drop(b"\x00garbage")
    table.disown(LOCAL, 443, REMOTE, 51000)
    assert not table.should_drop(tcp_bytes(LOCAL, 443, REMOTE, 51000, "R"))


def test_listener_owns_every_remote_on_its_address() -> None:
    table = OwnershipTable()
    table.own_port(LOCAL, 80)
    assert table.should_drop(tcp_bytes(LOCAL, 80, REMOTE, 1234, "R"))
    assert table.should_drop(tcp_bytes(LOCAL, 80, "192.0.2.9", 4321, "R"))
    assert not table.should_drop(tcp_bytes("10.1.0.9", 80, REMOTE, 1234, "R"))  # other address
    assert not table.should_drop(tcp_bytes(LOCAL, 81, REMOTE, 1234, "R"))


def test_wildcard_listener_owns_every_local_address() -> None:
    table = OwnershipTable()
    table.own_port("0.0.0.0", 80)
    assert table.should_drop(tcp_bytes(LOCAL, 80, REMOTE, 1234, "R"))
    assert table.should_drop(tcp_bytes("127.0.0.1", 80, "127.0.0.1", 1234, "R"))
    assert not table.should_drop(tcp_bytes(LOCAL, 8080, REMOTE, 1234, "R"))


ports = st.integers(1, 65535)
ips = st.sampled_from(["10.1.0.1", "10.1.0.2", "127.0.0.1"])
four_tuples = st.tuples(ips, ports, ips, ports)


@given(owned=st.sets(four_tuples, max_size=5), probe=four_tuples, rst=st.booleans())
def test_decision_matches_a_model(
    owned: set[tuple[str, int, str, int]], probe: tuple[str, int, str, int], rst: bool
) -> None:
    table = OwnershipTable()
    for entry in owned:
        table.own(*entry)
    src, sport, dst, dport = probe
    packet = tcp_bytes(src, sport, dst, dport, "R" if rst else "A")
    assert table.should_drop(packet) == (rst and probe in owned)


def test_port_refcount_says_when_rules_change() -> None:
    table = OwnershipTable()
    assert table.own(LOCAL, 443, REMOTE, 1) is True  # first owner of 443: add the rule
    assert table.own(LOCAL, 443, REMOTE, 1) is False  # same tuple again: nothing new
    assert table.own(LOCAL, 443, REMOTE, 2) is False
    assert table.own_port("0.0.0.0", 443) is False
    assert table.own_port(LOCAL, 80) is True
    assert table.ports == [80, 443]
    assert table.disown(LOCAL, 443, REMOTE, 9) is False  # never owned: no-op
    assert table.disown(LOCAL, 443, REMOTE, 1) is False
    assert table.disown(LOCAL, 443, REMOTE, 2) is False
    assert table.disown_port("0.0.0.0", 443) is True  # last owner gone: remove the rule
    assert table.ports == [80]


@pytest.mark.parametrize(
    "args",
    [
        ("10.1.0", 1, REMOTE, 2),
        (LOCAL, 0, REMOTE, 2),
        (LOCAL, 1, REMOTE, 65536),
        ("::1", 1, REMOTE, 2),
    ],
)
def test_bad_tuples_are_rejected(args: tuple[str, int, str, int]) -> None:
    with pytest.raises(ValueError):
        OwnershipTable().own(*args)


# -- rule arguments and comments -------------------------------------------------------


def _follows(words: list[str], *run: str) -> bool:
    return any(tuple(words[i : i + len(run)]) == run for i in range(len(words)))


def test_rule_spec() -> None:
    spec = iptables.rst_rule_spec(443, 0x7C5, 10123, 4242)
    assert _follows(spec, "-p", "tcp", "--sport", "443", "--tcp-flags", "RST", "RST")
    assert _follows(spec, "-m", "mark", "!", "--mark", "0x7c5")
    assert _follows(spec, "-m", "comment", "--comment", "tcpscapy pid=4242")
    assert spec[-5:] == ["-j", "NFQUEUE", "--queue-num", "10123", "--queue-bypass"]


@pytest.mark.parametrize(("port", "queue"), [(0, 1), (65536, 1), (80, -1), (80, 65536)])
def test_rule_spec_range_checks(port: int, queue: int) -> None:
    with pytest.raises(ValueError):
        iptables.rst_rule_spec(port, 0x7C5, queue, 1)


# What `iptables -S` prints back for our rule (nft and legacy both add "-m tcp").
LISTED = (
    "-A OUTPUT -p tcp -m tcp --sport 443 --tcp-flags RST RST -m mark ! --mark 0x7c5 "
    '-m comment --comment "tcpscapy pid={pid}" -j NFQUEUE --queue-num 10123 --queue-bypass'
)


def test_parse_owner_pid() -> None:
    assert iptables.parse_owner_pid(LISTED.format(pid=31337)) == 31337
    assert iptables.parse_owner_pid('-A OUTPUT -m comment --comment "someone else" -j DROP') is None
    assert iptables.parse_owner_pid("-P OUTPUT ACCEPT") is None


def test_parse_rules_reads_listing() -> None:
    listing = "\n".join(
        [
            "-P INPUT ACCEPT",
            "-P OUTPUT ACCEPT",
            "-A OUTPUT -p tcp -j ACCEPT",
            LISTED.format(pid=os.getpid()),
            LISTED.format(pid=2**22 + 1).replace("443", "80", 1),  # above pid_max: dead
        ]
    )
    alive, dead = iptables.parse_rules("legacy", listing)
    assert (alive.backend, alive.chain, alive.pid, alive.alive) == (
        "legacy", "OUTPUT", os.getpid(), True,
    )  # fmt: skip
    assert (alive.port, alive.queue_num) == (443, 10123)
    assert (dead.port, dead.alive) == (80, False)
    # The spec round-trips: it is what `iptables -D OUTPUT ...` needs.
    assert list(alive.spec) == shlex.split(LISTED.format(pid=os.getpid()))[2:]
    assert "stale" in dead.describe() and "alive" in alive.describe()


def test_balanced_rule_spec_spreads_over_a_queue_range() -> None:
    spec = iptables.rst_rule_spec(8080, 0x7C5, 10000, 4242, queue_last=10003)
    assert spec[-5:] == ["-j", "NFQUEUE", "--queue-balance", "10000:10003", "--queue-bypass"]
    assert _follows(spec, "-m", "comment", "--comment", "tcpscapy pid=4242")
    for last in (10000, 9999, 65536):
        with pytest.raises(ValueError):
            iptables.rst_rule_spec(8080, 0x7C5, 10000, 1, queue_last=last)


def test_parse_rules_reads_a_balanced_rule() -> None:
    listed = LISTED.format(pid=os.getpid()).replace("--queue-num 10123",
                                                    "--queue-balance 10123:10124")
    (rule,) = iptables.parse_rules("nft", listed)
    assert (rule.port, rule.queue_num, rule.queue_last) == (443, 10123, 10124)
    assert "queue=10123:10124" in rule.describe()
    assert list(rule.spec) == shlex.split(listed)[2:]
    (single,) = iptables.parse_rules("nft", LISTED.format(pid=os.getpid()))
    assert (single.queue_num, single.queue_last) == (10123, None)


def test_balanced_rule_needs_a_range_of_queues() -> None:
    for queues in (range(10000, 10001), range(10000, 10004, 2)):
        with pytest.raises(ValueError):
            guard_mod.BalancedRule(8080, queues)
    rule = guard_mod.BalancedRule(8080, range(10000, 10002))
    assert not rule.installed
    rule.remove()  # nothing installed: nothing to do


class FakeSets:
    """Stands in for the netlink ipset socket: records members, or fails every call."""

    def __init__(self, *, fail: bool = False) -> None:
        self.members: set[int] = set()
        self.fail = fail

    def add(self, name: str, port: int) -> None:
        if self.fail:
            raise ipset.IpsetError(1, f"ipset add {port} to {name}: Operation not permitted")
        self.members.add(port)

    def delete(self, name: str, port: int) -> None:
        self.members.discard(port)


def started_on(guard: RstGuard, sets: FakeSets) -> RstGuard:
    """As start() leaves a guard whose rule is in: only the set changes from here on."""
    guard._backend, guard._queue_num = iptables.Backend("nft", "/bin/false"), 10001
    guard._sets, guard._set_name = sets, "tcpscapy-1-10001"  # type: ignore[assignment]
    guard._rule = ["(installed)"]
    return guard


def test_shared_ports_get_verdicts_but_no_member_of_their_own() -> None:
    sets = FakeSets()
    guard = started_on(RstGuard(queue_num=10001, shared_ports={8080}), sets)
    guard.own_port("0.0.0.0", 8080)
    assert sets.members == set() and guard.ports == []
    assert guard._table.should_drop(tcp_bytes(LOCAL, 8080, REMOTE, 40000, "R"))
    guard.own_port(LOCAL, 9090)  # not shared: a member of our own set, as ever
    assert sets.members == {9090} and guard.ports == [9090]
    guard.disown_port(LOCAL, 9090)
    assert sets.members == set() and guard.ports == []


def test_set_rule_spec_matches_the_set_by_source_port() -> None:
    spec = iptables.set_rule_spec("tcpscapy-42-10001", 0x7C5, 10001, 42)
    assert spec[spec.index("--match-set") + 1:spec.index("--match-set") + 3] == [
        "tcpscapy-42-10001", "src"]
    assert "--queue-bypass" in spec and "tcpscapy pid=42" in spec
    line = "-A OUTPUT " + " ".join(f'"{w}"' if " " in w else w for w in spec)
    (rule,) = iptables.parse_rules("nft", line)
    assert rule.set_name == "tcpscapy-42-10001" and rule.queue_num == 10001 and rule.pid == 42


def test_set_names_carry_the_owner_pid() -> None:
    assert ipset.owner_pid(ipset.set_name(4194304, 65535)) == 4194304
    assert len(ipset.set_name(4194304, 65535)) <= ipset.NAME_MAX
    assert ipset.owner_pid("tcpscapy-x-1") is None and ipset.owner_pid("other-12-3") is None


def test_pid_alive_treats_zombies_as_dead() -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while iptables.pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.01)  # exited but not reaped: a zombie
        assert not iptables.pid_alive(child)
        assert os.path.exists(f"/proc/{child}")  # still a zombie, not yet gone
    finally:
        os.waitpid(child, 0)
    assert iptables.pid_alive(os.getpid())
    assert not iptables.pid_alive(0)


def test_queue_candidates_are_distinct_and_in_range() -> None:
    found = list(guard_mod._queue_candidates(12345))
    assert len(set(found)) == len(found) == guard_mod.QUEUE_TRIES
    assert all(0 <= q < 65536 for q in found)
    assert found[0] != next(guard_mod._queue_candidates(12346))


# -- errors for the user ------------------------------------------------------------------


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "has_net_admin", lambda: False)


@pytest.mark.usefixtures("not_root")
@pytest.mark.parametrize(
    "argv", [["guard", "status"], ["guard", "cleanup"], ["guard", "cleanup", "--all"]]
)
def test_cli_not_root_exits_4(argv: list[str]) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 4
    assert "root" in result.output and len(result.output.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.usefixtures("not_root")
def test_guard_start_not_root() -> None:
    with pytest.raises(NotRootError):
        RstGuard().start()


def test_cli_iptables_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "has_net_admin", lambda: True)
    monkeypatch.setattr(iptables.shutil, "which", lambda *a, **k: None)
    iptables.default_backend.cache_clear()
    try:
        result = CliRunner().invoke(main, ["guard", "status"])
    finally:
        iptables.default_backend.cache_clear()
    assert result.exit_code == 1
    assert "iptables not found" in result.output and len(result.output.strip().splitlines()) == 1


def test_unstarted_guard() -> None:
    guard = RstGuard()
    guard.own(LOCAL, 443, REMOTE, 1)  # recorded; start() would install the rule
    guard.stop()  # nothing to undo
    assert guard.ports == [] and not guard.running
    with pytest.raises(iptables.GuardError):
        guard.fileno()


def test_failed_member_add_leaves_nothing_owned() -> None:
    guard = started_on(RstGuard(), FakeSets(fail=True))  # every set change fails
    with pytest.raises(iptables.GuardError):
        guard.own(LOCAL, 443, REMOTE, 1)
    with pytest.raises(iptables.GuardError):
        guard.own_port(LOCAL, 80)
    assert guard.ports == [] and guard._table.ports == []


# -- signals --------------------------------------------------------------------------------


class CountingGuard(RstGuard):
    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1
        super().stop()


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("handlers")
@pytest.mark.parametrize(
    ("signum", "default", "code"),
    [
        (signal.SIGTERM, signal.SIG_DFL, EXIT_SIGTERM),
        (signal.SIGINT, signal.default_int_handler, EXIT_SIGINT),
    ],
)
def test_signal_stops_guard_then_exits(signum: int, default: object, code: int) -> None:
    signal.signal(signum, default)  # type: ignore[arg-type]
    guard = CountingGuard()
    stop_on_signals(guard)
    with pytest.raises(SystemExit) as exited:
        signal.raise_signal(signum)
    assert exited.value.code == code
    assert guard.stops == 1


@pytest.mark.usefixtures("handlers")
def test_signal_chains_to_callers_handler_and_restores() -> None:
    calls: list[int] = []

    def mine(signum: int, _frame: object) -> None:
        calls.append(signum)

    signal.signal(signal.SIGTERM, mine)
    guard = CountingGuard()
    restore = stop_on_signals(guard)
    signal.raise_signal(signal.SIGTERM)  # no exit: the caller's handler decides
    assert (calls, guard.stops) == ([signal.SIGTERM], 1)
    restore()
    assert signal.getsignal(signal.SIGTERM) is mine


@pytest.mark.usefixtures("handlers")
def test_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_on_signals(CountingGuard())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.usefixtures("handlers")
def test_signal_mid_operation_waits_for_it() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    guard = CountingGuard()
    stop_on_signals(guard)
    finished = []
    with pytest.raises(SystemExit), guard._critical():
        signal.raise_signal(signal.SIGTERM)
        finished.append("rest of the operation")  # the handler must not cut in here
        assert guard.stops == 0
    assert finished and guard.stops == 1


def test_rule_and_set_come_with_the_first_port_of_our_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that only serves the group's shared port never installs a rule (a
    SIGKILLed worker then leaves nothing behind)."""
    guard = RstGuard(queue_num=10001, shared_ports={8080})
    guard._backend, guard._queue_num = iptables.Backend("nft", "/bin/false"), 10001
    installs: list[int] = []

    def install() -> None:
        installs.append(1)
        started_on(guard, FakeSets())

    monkeypatch.setattr(guard, "_install", install)
    guard.own_port("0.0.0.0", 8080)
    assert installs == []
    guard.own(LOCAL, 9090, REMOTE, 1)
    guard.own(LOCAL, 9091, REMOTE, 1)
    assert installs == [1] and guard.ports == [9090, 9091]
