"""`tcpscapy guard`: inspect and clean up the RST guard's iptables rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tcpscapy.cli._common import Group
from tcpscapy.io.iptables import GuardError, GuardRule, NotRootError, cleanup, status

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
    """The RST guard's iptables rules (NFQUEUE, tagged "tcpscapy pid=N")."""


@guard.command("status")
def status_cmd() -> None:
    """List tcpscapy rules in this network namespace: backend, owner pid, alive or stale."""
    rules: list[GuardRule] = _run(status)
    if not rules:
        click.echo("no tcpscapy rules")
        return
    for rule in rules:
        click.echo(rule.describe())


@guard.command("cleanup")
@click.option("--all", "everything", is_flag=True, help="Also remove rules of live processes.")
def cleanup_cmd(everything: bool) -> None:
    """Remove rules whose owner process is gone (both nft and legacy backends)."""
    removed: list[GuardRule] = _run(lambda: cleanup(everything=everything))
    if not removed:
        click.echo("nothing to remove")
        return
    for rule in removed:
        click.echo(f"removed {rule.describe()}")
