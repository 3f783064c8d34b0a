"""What a new user hit in the first hour (issue 16), checked without a network.

The privilege check is stubbed to refuse (exit 4), as in test_cli_usage, so a
command line that passes every earlier check never reaches the network.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tcpscapy
from tcpscapy import errors
from tcpscapy import lab as labmod
from tcpscapy.cli import main
from tcpscapy.cli.connect import _target

REPO = Path(__file__).resolve().parents[1]
STUB = "stub: no network in this test"
LAB_SERVER = labmod.ADDRESSES["server"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise errors.NeedsRoot(STUB)

    for command in ("connect", "listen"):
        module = importlib.import_module(f"tcpscapy.cli.{command}")
        monkeypatch.setattr(module, "require_net_admin", refuse)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- 1. a lab address from outside the lab ------------------------------------------------


def test_the_host_namespace_is_not_in_the_lab() -> None:
    """The premise of the tests below: this process has no address on a lab subnet."""
    assert labmod.outside_lab(LAB_SERVER) == labmod.LAB_SUBNETS[0]
    assert labmod.outside_lab("192.0.2.1") is None  # not a lab address at all
    assert "127.0.0.1" in tcpscapy.netns.local_ipv4_addresses()


def test_inside_a_routed_lab_its_other_subnets_are_inside_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tcpscapy import routed

    hosts = [*routed.SUBNETS]
    for host in hosts:  # every routed address is in the one list connect() checks
        for addr in (routed.host_addr(host), routed.gateway_addr(host)):
            assert labmod.outside_lab(addr) is not None, addr
    client = routed.host_addr("client")
    monkeypatch.setattr(labmod.netns, "local_ipv4_addresses", lambda: {"127.0.0.1", client})
    monkeypatch.setattr(labmod, "_INSIDE", set())  # what it learns here is not for later
    assert labmod.outside_lab(routed.host_addr("server")) is None  # through the router
    assert labmod.outside_lab(LAB_SERVER) is not None  # the flat lab is another lab


def test_connect_to_a_lab_address_from_outside_shows_the_lab_exec_command() -> None:
    result = run("connect", f"{LAB_SERVER}:80", "--send", "GET / HTTP/1.0\\r\\n\\r\\n")
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("tcpscapy connect: ")
    assert (f"run `tcpscapy lab exec client -- tcpscapy connect {LAB_SERVER}:80 --send "
            "'GET / HTTP/1.0\\r\\n\\r\\n'`") in line
    assert "--no-lab-check" in line


def test_no_lab_check_lets_it_through_to_the_privilege_check() -> None:
    result = run("connect", f"{LAB_SERVER}:80", "--no-lab-check")
    assert result.exit_code == 4
    assert STUB in one_line(result)


def test_as_a_user_would_run_it_the_lab_check_comes_first() -> None:
    """A real process (as nobody when root, so no packet could go out even before the fix)."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.geteuid() == 0 else []
    result = subprocess.run([*drop, sys.executable, "-m", "tcpscapy", "connect", LAB_SERVER,
                             "7", "-q"], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"tcpscapy lab exec client -- tcpscapy connect {LAB_SERVER} 7 -q" in result.stderr


class _NoDriver:
    """A driver in this (the host's) namespace that fails the test if connect() gets as far
    as using it."""

    def _in_namespace(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"connect() used the driver ({name}) for a lab address")


def test_the_api_and_the_shell_refuse_a_lab_address_from_outside_too() -> None:
    with pytest.raises(errors.OutsideLab, match=r"lab_enter\(\"client\"\)"):
        tcpscapy.connect(LAB_SERVER, 80, driver=_NoDriver())  # type: ignore[arg-type]
    from tcpscapy import shell
    with pytest.raises(errors.OutsideLab):
        shell.connect(f"{LAB_SERVER}:7", driver=_NoDriver())
    with pytest.raises(AssertionError, match="used the driver"):
        tcpscapy.connect(LAB_SERVER, 80, driver=_NoDriver(),  # type: ignore[arg-type]
                         lab_check=False)


# -- 7. netcat habits ----------------------------------------------------------------------


def test_host_and_port_as_two_arguments_and_service_names() -> None:
    assert _target("example.test", "8080") == ("example.test", 8080)
    assert _target("example.test", "http") == ("example.test", 80)
    assert _target("example.test:https", None) == ("example.test", 443)
    with pytest.raises(errors.BadAddress, match="not both"):
        _target("example.test:80", "80")
    with pytest.raises(errors.BadAddress, match="no such TCP service"):
        _target("example.test", "nosuchservice")


@pytest.mark.parametrize("args", [["192.0.2.1", "http"], ["192.0.2.1:http"],
                                  ["192.0.2.1", "80", "--no-fin", "--send", "x"]])
def test_the_netcat_forms_get_as_far_as_the_privilege_check(args: list[str]) -> None:
    result = run("connect", *args)
    assert result.exit_code == 4, result.stderr
    assert STUB in one_line(result)


# -- 6. an unwritable --tfo-cache ---------------------------------------------------------


@pytest.mark.parametrize(("where", "message"), [
    ("no/such/dir/tfo.json", "no directory"),
    ("a-dir", "it is a directory"),
])
def test_a_tfo_cache_that_cannot_be_kept_fails_in_one_line_and_creates_nothing(
        tmp_path: Path, where: str, message: str) -> None:
    (tmp_path / "a-dir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = run("connect", "192.0.2.1:80", "--tfo", "--tfo-cache", str(tmp_path / where))
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith(f"tcpscapy connect: cannot use --tfo-cache {tmp_path / where}: ")
    assert message in line
    assert sorted(tmp_path.rglob("*")) == before


def test_a_cache_verdict_that_was_not_saved_says_so(tmp_path: Path) -> None:
    from tcpscapy.core.tfo import FastOpen
    from tcpscapy.io.tfo_cache import TfoCache

    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    cache = TfoCache(blocker / "tfo.json")
    note = cache.learn("10.0.0.1", FastOpen(cookie_sent=b"", cookie_received=b"12345678"),
                       1460)
    assert note.startswith("cookie 3132333435363738 cached for 10.0.0.1; not saved: ")
    assert f"cannot write {blocker / 'tfo.json'}" in note
    good = TfoCache(tmp_path / "tfo.json")
    assert "not saved" not in good.learn("10.0.0.1", FastOpen(cookie_sent=b""), 1460)


# -- 8. a long --ladder-svg ----------------------------------------------------------------


def _long_trace(rows: int) -> list[Any]:
    """A short conversation with `rows` copies of its first data-less ACK in the middle."""
    from dataclasses import replace

    from tests.test_svg import conversation

    short = list(conversation())
    middle = [replace(short[2], time=short[2].time + i * 1e-4) for i in range(rows)]
    return [*short[:3], *middle, *short[3:]]


def test_a_long_ladder_svg_leaves_out_its_middle_with_a_marker(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from tcpscapy.svg import MAX_ROWS, ROW, write_ladder_svg

    trace = _long_trace(5000)
    short, full = tmp_path / "short.svg", tmp_path / "full.svg"
    write_ladder_svg(trace, short, title="long")
    write_ladder_svg(trace, full, title="long", max_rows=None)
    root = ET.parse(short).getroot()
    assert int(root.get("height", "0")) <= ROW * (MAX_ROWS + 10)
    texts = [e.text or "" for e in root.iter()]
    omitted = len(trace) - MAX_ROWS + 1
    assert f"… {omitted:,} rows omitted …" in texts
    assert "SYN-SENT → ESTABLISHED" in texts and "TIME-WAIT → CLOSED" in texts  # both ends
    assert int(ET.parse(full).getroot().get("height", "0")) > ROW * len(trace)
    png = subprocess.run(["rsvg-convert", "-o", str(tmp_path / "short.png"), str(short)],
                         capture_output=True, text=True, timeout=60)
    assert png.returncode == 0, png.stderr
    assert (tmp_path / "short.png").stat().st_size > 0


def test_ladder_svg_full_needs_ladder_svg() -> None:
    result = run("connect", "192.0.2.1:80", "--ladder-svg-full")
    assert result.exit_code == 2
    assert one_line(result) == "tcpscapy connect: --ladder-svg-full needs --ladder-svg"


# -- 10. labs, shell, error lines ----------------------------------------------------------


def test_a_ladder_excerpt_says_how_many_rows_it_left_out() -> None:
    from tcpscapy.trace import ladder

    entries = _long_trace(10)
    text = ladder(entries[:4] + entries[-3:], omitted={4: len(entries) - 7, 7: 2})
    lines = text.splitlines()
    marker = next(i for i, line in enumerate(lines) if "rows omitted" in line)
    assert lines[marker].strip() == f"… {len(entries) - 7} rows omitted …"
    assert "TIME-WAIT → CLOSED" in lines[marker + 3]  # then the last three entries
    assert lines[marker + 4].strip() == "… 2 rows omitted …"  # and what came after them
    assert ".. 2 rows omitted .." in ladder(entries[:1], omitted={1: 2}, ascii_only=True)


def test_lab_errors_are_worded_like_every_other_command() -> None:
    result = run("lab", "exec", "nosuch", "--", "true")
    assert result.exit_code == 2
    assert result.stderr.startswith("tcpscapy lab exec: unknown host 'nosuch': choose one of "
                                    "client, server, attacker")
    assert result.stderr.count("\n") == 1
    connect = run("connect", "192.0.2.1:80", "--tfo-cache", "x")
    assert one_line(connect) == "tcpscapy connect: --tfo-cache needs --tfo"  # the same shape
