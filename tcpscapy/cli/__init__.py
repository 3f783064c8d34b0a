"""The `tcpscapy` command: parse arguments, call tcpscapy.io, print. No protocol logic."""

from __future__ import annotations

import click

from tcpscapy import __version__
from tcpscapy.cli._common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tcpscapy")
def main() -> None:
    """See and steer TCP segment by segment, from a user-space TCP endpoint."""


# Subcommands register here, one line each.
from tcpscapy.cli.capture import ladder, plot  # noqa: E402
from tcpscapy.cli.connect import connect  # noqa: E402
from tcpscapy.cli.guard import guard  # noqa: E402
from tcpscapy.cli.lab import lab  # noqa: E402
from tcpscapy.cli.listen import listen  # noqa: E402
from tcpscapy.cli.shell import shell  # noqa: E402

main.add_command(guard)
main.add_command(lab)
main.add_command(connect)
main.add_command(listen)
main.add_command(shell)
main.add_command(plot)
main.add_command(ladder)
