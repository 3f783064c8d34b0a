"""The host is never harmed: no shell, literal iptables arguments, clear refusals.

- Static: nothing in tcpscapy/ runs a shell (no shell=True, os.system, os.popen,
  getoutput, create_subprocess_shell; no command given as a string).
- A rule whose comment is full of shell metacharacters and quotes goes to
  iptables literally, is listed back exactly, and `tcpscapy guard cleanup`
  removes it (both backends); no command hidden in it ever runs.
- Without root, every subcommand (found by walking the CLI, so a new one cannot
  be forgotten) says so in one line with exit code 4; the shell starts (it is
  useful without a network) and each call that needs root prints one line.
- Bad input, as root in a lab: bad HOST:PORT, port 0 or 65536, a missing
  interface, conflicting options exit 2 with one line; an unknown host exits 7,
  as documented (README, `connect --help`); nothing is left behind.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tcpscapy.cli import main
from tcpscapy.io import iptables
from tcpscapy.lab import Lab
from tests.wire.cli_helpers import assert_clean, tcpscapy_run

LAB_PREFIX = "tsm"
REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "tcpscapy"
wire = pytest.mark.wire

# -- no shell, statically ---------------------------------------------------------------

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell")}
RUNNERS = {"run", "Popen", "call", "check_call", "check_output"}


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(
        node, ast.Attribute) else ""


def shell_uses(source: str) -> list[str]:
    """Places in `source` that could hand a string to a shell."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"line {node.lineno}"
        if isinstance(func, ast.Attribute) and (_name(func.value), func.attr) in SHELL_CALLS:
            found.append(f"{where}: {_name(func.value)}.{func.attr}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{where}: shell={ast.unparse(kw.value)}")
        if _name(func) in RUNNERS and node.args:
            first = node.args[0]
            if isinstance(first, ast.JoinedStr | ast.BinOp) or (
                    isinstance(first, ast.Constant) and isinstance(first.value, str)):
                found.append(f"{where}: command as a string: {ast.unparse(first)[:40]}")
    return found


def test_the_checker_finds_what_it_looks_for() -> None:
    bad = ("import os, subprocess\nos.system('ls')\nsubprocess.run('ls -l', shell=True)\n"
           "subprocess.Popen(f'ip {x}')\nsubprocess.run(['ls'], shell=flag)\n")
    assert len(shell_uses(bad)) == 5
    assert shell_uses("subprocess.run(['iptables', '-S'], shell=False)\n") == []


def test_nothing_in_the_package_runs_a_shell() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30
    found = {str(p.relative_to(REPO)): uses for p in sources
             if (uses := shell_uses(p.read_text()))}
    assert found == {}
    assert not any("shell=True" in p.read_text() for p in sources)


# -- iptables arguments are literal -------------------------------------------------------


@pytest.fixture
def net(lab: Lab) -> Iterator[Lab]:
    yield lab
    assert_clean(lab)


@pytest.fixture
def marker() -> Iterator[Path]:
    """A path a command hidden in a comment would create (short: comments hold 255 bytes)."""
    path = Path(f"/tmp/tsm{secrets.token_hex(3)}")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@wire
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_comment_full_of_shell_metacharacters_is_passed_literally(
        net: Lab, marker: Path, backend: str) -> None:
    comment = (f"{iptables.comment_for(dead_pid())}; touch {marker} $(touch {marker}) "
               f"`touch {marker}` | & > < * ? ' \" \\ ${{IFS}} end")
    spec = ["-p", "tcp", "--sport", "4321", "-m", "comment", "--comment", comment,
            "-j", "ACCEPT"]
    with net.enter("server"):
        chosen = iptables.backend_named(backend)
        iptables.insert_rule(chosen, spec)
        (rule,) = iptables.list_rules(chosen)
    assert rule.spec[rule.spec.index("--comment") + 1] == comment  # read back exactly
    assert not rule.alive and rule.port == 4321
    shown = tcpscapy_run(net, "server", "guard", "status")
    assert shown.returncode == 0 and f"pid={rule.pid} (stale)" in shown.stdout.decode()
    cleaned = tcpscapy_run(net, "server", "guard", "cleanup")
    assert cleaned.returncode == 0 and b"removed" in cleaned.stdout
    with net.enter("server"):
        assert iptables.list_rules(chosen) == []
    assert not marker.exists()


# -- without root ---------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
PREFIX = "tsmnoroot"  # never created: every command is refused first
UNPRIVILEGED: dict[str, list[str]] = {
    "connect": ["connect", "127.0.0.1:9"],
    "listen": ["listen", "127.0.0.1:0"],
    "guard status": ["guard", "status"],
    "guard cleanup": ["guard", "cleanup"],
    "lab up": ["lab", "up", "--prefix", PREFIX],
    "lab down": ["lab", "down", "--prefix", PREFIX],
    "lab status": ["lab", "status", "--prefix", PREFIX],
    "lab exec": ["lab", "exec", "--prefix", PREFIX, "client", "--", "true"],
    "lab flood": ["lab", "flood", "--prefix", PREFIX, "--count", "1"],
    "lab path": ["lab", "path", "--prefix", PREFIX, "--delay", "10ms"],
}
# Commands that work without root and refuse only the calls that need it.
WORKS_WITHOUT_ROOT = {"shell", "plot", "ladder"}


def subcommands(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from subcommands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


def as_nobody(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    drop = NOBODY if os.geteuid() == 0 else []
    return subprocess.run([*drop, sys.executable, "-m", "tcpscapy", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_every_subcommand_is_covered() -> None:
    assert set(subcommands(main)) == set(UNPRIVILEGED) | WORKS_WITHOUT_ROOT


@pytest.mark.parametrize("command", sorted(UNPRIVILEGED))
def test_without_root_a_command_says_so_in_one_line(command: str) -> None:
    done = as_nobody(UNPRIVILEGED[command])
    assert done.returncode == 4, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "root" in lines[0] and lines[0].startswith("tcpscapy "), lines
    assert done.stdout == ""


@pytest.mark.parametrize("command", ["plot", "ladder"])
def test_without_root_the_capture_readers_work(command: str) -> None:
    missing = f"/tmp/tsm-missing-{secrets.token_hex(4)}.pcap"  # a name nobody can read: no root
    done = as_nobody([command, missing])
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "root" not in lines[0] and lines[0].startswith(f"tcpscapy {command}:"), lines


def test_without_root_the_shell_refuses_each_privileged_call_in_one_line() -> None:
    done = as_nobody(["shell", "--no-banner"],
                     stdin='c = connect("127.0.0.1:9")\nlab_up()\nprint("still here")\n')
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 2 and all("root" in line for line in errors), errors
    assert "still here" in output


# -- bad input, as root ---------------------------------------------------------------------

BAD_INPUT = [
    (["connect", "10.77.0.2"], 2, "expected HOST:PORT"),
    (["connect", "10.77.0.2:0"], 2, "bad port '0'"),
    (["connect", "10.77.0.2:65536"], 2, "bad port '65536'"),
    (["connect", "10.77.0.2:80", "--sport", "65536"], 2, "Invalid value for '--sport'"),
    (["connect", "10.77.0.2:80", "--iface", "nosuchif"], 2, "no such interface 'nosuchif'"),
    (["connect", "10.77.0.2:80", "--json", "-q"], 2, "exclude each other"),  # as JSON
    (["connect", "no-such-host.invalid:80"], 7, "cannot resolve 'no-such-host.invalid'"),
    (["listen", "65536"], 2, "bad port '65536'"),
    (["listen", "10.77.0.2:99999"], 2, "bad port '99999'"),
    (["listen", "8080", "--echo", "--discard"], 2, "exclude each other"),
    (["listen", "no-such-host.invalid:80"], 7, "cannot resolve 'no-such-host.invalid'"),
    (["lab", "up", "--prefix", "x;touch /tmp/tsm-pwned"], 2, "bad lab prefix"),
    (["lab", "exec", "--prefix", "tsmnope", "nosuchhost", "--", "true"], 2, "unknown host"),
]


@wire
@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUT,
                         ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_as_root_is_one_line(net: Lab, args: list[str], code: int,
                                       message: str) -> None:
    done = tcpscapy_run(net, "client", *args, timeout=30)
    assert done.returncode == code, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith(f"tcpscapy {args[0]}") or json.loads(lines[0])["type"] == "error"
    assert done.stdout == b""
    assert not Path("/tmp/tsm-pwned").exists()


ONE_LINE_GAPS = [
    ["lab", "flood", "--prefix", "tsmnope", "--count", "0"],
    ["guard", "cleanup", "--bogus"],
    ["guard", "nosuch"],
]


@pytest.mark.parametrize("args", ONE_LINE_GAPS, ids=[" ".join(a) for a in ONE_LINE_GAPS])
def test_option_errors_of_lab_and_guard_are_one_line(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "tcpscapy", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_saved_rules_are_unquoted_as_iptables_restore_does() -> None:
    line = ('-A OUTPUT -p tcp -m mark ! --mark 0x7c5 -m comment --comment '
            r'"tcpscapy pid=7; $(id) \' \" \\ end" -m comment --comment "" -j ACCEPT')
    assert iptables.split_saved(line) == [
        "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "!", "--mark", "0x7c5", "-m", "comment",
        "--comment", "tcpscapy pid=7; $(id) ' \" \\ end", "-m", "comment", "--comment", "",
        "-j", "ACCEPT"]
