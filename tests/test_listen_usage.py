"""`tcpscapy listen`'s usage as a user meets it (no root, no network), and nodelay."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from tcpscapy import errors
from tcpscapy.api import _build_config
from tcpscapy.cli import main
from tcpscapy.core.config import Config


def test_help_lists_only_the_exit_codes_listen_can_give() -> None:
    shown = CliRunner().invoke(main, ["listen", "--help"])
    assert shown.exit_code == 0
    codes = re.findall(r"^\s+(\d+(?:/\d+)?)\s{2}", shown.output.split("Exit codes:")[1], re.M)
    assert codes == ["0", "1", "2", "4", "7", "9", "130/143"]
    assert "refused" not in shown.output and "unreachable" not in shown.output
    assert "-q, --quiet" in shown.output and "--nodelay" in shown.output


@pytest.mark.parametrize("other", ["--json", "-v"])
def test_quiet_excludes_json_and_verbose(other: str) -> None:
    done = CliRunner().invoke(main, ["listen", "-q", other, "7"])
    assert done.exit_code == 2
    assert "exclude each other" in done.output


def test_connect_takes_nodelay() -> None:
    shown = CliRunner().invoke(main, ["connect", "--help"])
    assert shown.exit_code == 0 and "--nodelay" in shown.output


def test_nodelay_turns_nagle_off_and_contradictions_are_refused() -> None:
    base = Config()
    assert base.nagle  # on by default, as in the kernel
    assert not _build_config({"nodelay": True}, None, base, listening=False).nagle
    assert _build_config({"nodelay": False}, None, base, listening=True).nagle
    with pytest.raises(errors.BadOption):
        _build_config({"nodelay": True, "nagle": True}, None, base, listening=False)
