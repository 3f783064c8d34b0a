"""`tcpscapy guard`: inspect and clean up the RST guard's iptables rules and ipsets."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tcpscapy.cli._common import Group
from tcpscapy.io.iptables import (
    GuardError,
    GuardRule,
    GuardSet,
    NotRootError,
    cleanup_all,
    list_sets,
    status,
)

EXIT_NOT_ROOT = 4
EXIT_ERROR = 1

_T = TypeVar("_T")


def _run(action: Callable[[], _T]) -> _T:
    """Run an iptables action; turn its errors into a one-line message and exit code."""
    try:
        return action()
    except NotRootError as err:
        click.echo(f"tcpscapy guard: {err}", err=True)
        raise SystemExit(EXIT_NOT_ROOT) from None
    except GuardError as err:
        click.echo(f"tcpscapy guard: {err}", err=True)
        raise SystemExit(EXIT_ERROR) from None


@click.group(cls=Group)
def guard() -> None:
    """The RST guard's iptables rules (NFQUEUE, tagged "tcpscapy pid=N") and port sets."""


@guard.command("status")
def status_cmd() -> None:
    """List tcpscapy rules and ipsets in this network namespace: owner pid, alive or stale."""
    rules: list[GuardRule] = _run(status)
    sets: list[GuardSet] = _run(list_sets)
    if not rules and not sets:
        click.echo("no tcpscapy rules")
        return
    for found in [*rules, *sets]:
        click.echo(found.describe())


@guard.command("cleanup")
@click.option("--all", "everything", is_flag=True, help="Also remove rules of live processes.")
def cleanup_cmd(everything: bool) -> None:
    """Remove rules and ipsets whose owner process is gone (nft and legacy backends)."""
    rules, sets = _run(lambda: cleanup_all(everything=everything))
    if not rules and not sets:
        click.echo("nothing to remove")
        return
    for found in [*rules, *sets]:
        click.echo(f"removed {found.describe()}")
