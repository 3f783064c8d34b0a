"""`tcpscapy connect` / `tcpscapy listen` usage errors, without root and without a network.

Bad input exits 2 with one line on stderr. The privilege check is replaced by a
stub that refuses (exit 4), so a command line that parses never reaches the
network, whoever runs the tests; a real unprivileged run is checked by
dropping to user nobody with setpriv (or as is, when not root).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tcpscapy import errors
from tcpscapy.cli import _common, main
from tcpscapy.cli._common import parse_address, unescape

REPO = Path(__file__).resolve().parents[1]
STUB = "stub: no network in this test"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise errors.NeedsRoot(STUB)

    for command in ("connect", "listen"):  # the modules; the package names the commands
        module = importlib.import_module(f"tcpscapy.cli.{command}")
        monkeypatch.setattr(module, "require_net_admin", refuse)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- connect --------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "message"), [
    ("10.77.0.2", "expected HOST:PORT"),
    ("10.77.0.2:", "bad port ''"),
    (":80", "the host is empty"),
    ("10.77.0.2:0", "bad port '0'"),
    ("10.77.0.2:65536", "bad port '65536'"),
    ("10.77.0.2:nosuchservice", "bad port 'nosuchservice'"),
    ("10.77.0.2:-1", "bad port '-1'"),
    ("[::1]:80", "IPv6 is not supported"),
    ("::1:80", "IPv6 is not supported"),
])
def test_connect_rejects_a_bad_target(target: str, message: str) -> None:
    result = run("connect", target)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("tcpscapy connect: bad ") or "IPv6" in line or "empty" in line
    assert message in line


@pytest.mark.parametrize(("args", "message"), [
    (["--mss", "10"], "Invalid value for '--mss'"),
    (["--wscale", "15"], "bad --wscale '15'"),
    (["--wscale", "big"], "bad --wscale 'big'"),
    (["--window", "0"], "Invalid value for '--window'"),
    (["--retries", "-1"], "Invalid value for '--retries'"),
    (["--timeout", "0"], "Invalid value for '--timeout'"),
    (["--sport", "70000"], "Invalid value for '--sport'"),
    (["--send", "tab\\q"], "bad escape \\q"),
    (["--send", "end\\"], "bad escape a trailing \\"),
    (["--json", "-q"], "--json and -q exclude each other"),
    (["--no-such-flag"], "No such option"),  # click words the rest by version
])
def test_connect_rejects_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = run("connect", "10.77.0.2:80", *args)
    assert result.exit_code == 2
    assert message in one_line(result)


def test_a_missing_argument_is_one_line_too() -> None:
    result = run("connect")
    assert result.exit_code == 2
    assert one_line(result) == "tcpscapy connect: Missing argument 'HOST:PORT'. (see --help)"


@pytest.mark.parametrize("args", [
    ["--send", "GET / HTTP/1.1\\r\\n\\r\\n", "--json"],  # --send with --json is fine
    ["--wscale", "off", "--no-sack", "--no-timestamps", "--mss", "536", "--window", "8192"],
    ["--retries", "2", "--rto", "0.2", "--timeout", "3", "--sport", "4000", "--absolute", "-q"],
])
def test_good_connect_options_get_as_far_as_the_privilege_check(args: list[str]) -> None:
    result = run("connect", "192.0.2.1:80", *args)  # not a lab address: see test_first_hour
    assert result.exit_code == 4
    assert one_line(result).endswith(STUB) or STUB in result.stderr


def test_a_pcap_path_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    result = run("connect", "10.77.0.2:80", "--pcap", str(tmp_path / "no" / "such" / "dir.pcap"))
    assert result.exit_code == 2
    assert "cannot write --pcap" in one_line(result)


def test_connect_help_lists_the_exit_codes() -> None:
    result = run("connect", "--help")
    assert result.exit_code == 0
    for code in ("3  connection refused", "4  needs root", "5  timed out", "6  connection reset",
                 "7  unknown host", "8  host unreachable", "130/143"):
        assert code in result.output


# -- listen ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["70000"], "bad port '70000'"),
    (["http"], "bad port 'http'"),
    (["10.77.0.2:"], "bad port ''"),
    ([":8080"], "the host is empty"),
    (["8080", "--echo", "--discard"], "--echo and --discard exclude each other"),
    (["8080", "--echo", "--file", "x"], "--echo and --file exclude each other"),
    (["8080", "--file", "x", "--http", "."], "--file and --http exclude each other"),
    (["8080", "--file", "/no/such/file"], "--file /no/such/file: no such file"),
    (["8080", "--http", "/no/such/dir"], "--http /no/such/dir: no such directory"),
    (["8080", "--syncookies", "sometimes"], "Invalid value for '--syncookies'"),
    (["8080", "--backlog", "0"], "Invalid value for '--backlog'"),
    (["8080", "--max-conns", "0"], "Invalid value for '--max-conns'"),
    (["8080", "--wscale", "x"], "bad --wscale 'x'"),
])
def test_listen_rejects_bad_usage_in_one_line(args: list[str], message: str) -> None:
    result = run("listen", *args)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("tcpscapy listen: ") and message in line


@pytest.mark.parametrize("args", [
    ["0"], ["8080", "--discard"], ["10.77.0.2:80", "--http", "."],
    ["8080", "--file", __file__, "--once", "-v", "--json", "--syncookies", "always", "--tfo"],
])
def test_good_listen_options_get_as_far_as_the_privilege_check(args: list[str]) -> None:
    result = run("listen", *args)
    assert result.exit_code == 4
    assert STUB in one_line(result)


# -- helpers ----------------------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("example.test:80", host_optional=False) == ("example.test", 80)
    assert parse_address("10.0.0.1:65535", host_optional=False) == ("10.0.0.1", 65535)
    assert parse_address("8080", host_optional=True) == (None, 8080)
    assert parse_address("0", host_optional=True) == (None, 0)
    assert parse_address("127.0.0.1:0", host_optional=True) == ("127.0.0.1", 0)
    with pytest.raises(errors.BadAddress):
        parse_address("8080", host_optional=False)


def test_unescape() -> None:
    assert unescape(r"GET / HTTP/1.1\r\n\r\n") == b"GET / HTTP/1.1\r\n\r\n"
    assert unescape(r"a\tb\\n\0\x7f\xff") == b"a\tb\\n\x00\x7f\xff"
    assert unescape("héllo") == "héllo".encode()
    assert unescape("plain") == b"plain"


def test_stream_width_and_colour_without_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as f:
        monkeypatch.delenv("COLUMNS", raising=False)
        assert _common.stream_width(f) == _common.DEFAULT_WIDTH
        monkeypatch.setenv("COLUMNS", "90")
        assert _common.stream_width(f) == 90
        assert not _common.wants_color(f)


# -- really unprivileged ---------------------------------------------------------------


def unprivileged(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run argv as user nobody (dropping root with setpriv), or as is when not root."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] \
        if os.geteuid() == 0 else []
    return subprocess.run([*drop, *argv], capture_output=True, text=True, timeout=30, cwd=REPO)


@pytest.mark.parametrize("argv", [
    ["-m", "tcpscapy", "connect", "127.0.0.1:9"],
    ["-m", "tcpscapy", "listen", "127.0.0.1:0"],
    ["examples/demo.py"],
])
def test_without_root_the_exit_code_is_4_with_one_line(argv: list[str]) -> None:
    result = unprivileged([sys.executable, *argv])
    assert result.returncode == 4
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "root" in lines[0], result.stderr
    assert result.stdout == ""
