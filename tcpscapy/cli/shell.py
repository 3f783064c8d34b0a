"""`tcpscapy shell`: Scapy's interactive prompt with tcpscapy loaded (tcpscapy.shell)."""

from __future__ import annotations

import importlib.util
import sys

import click

from tcpscapy import __version__
from tcpscapy.cli._common import Command

_EPILOG = """\b
At the prompt:
  lab_up(); echo_server(7); lab_enter("client")
  c = connect("10.77.0.2:7"); c.send("hello"); c.recv()
  c.inject(TCP(flags="PA")/"hi"); c.ladder(); c.trace.summary()
  c.close(); lab_down()

\b
The same from any Scapy or Python session: from tcpscapy.shell import *"""


@click.command("shell", cls=Command, epilog=_EPILOG)
@click.option("--no-banner", is_flag=True, help="Start without the tcpscapy banner.")
def shell(no_banner: bool) -> None:
    """Scapy's interactive prompt with tcpscapy preloaded: open connections, inject
    hand-made segments into them, look at their ladders. Connections need root."""
    from scapy.config import conf
    from scapy.main import interact

    import tcpscapy
    from tcpscapy import shell as tshell

    names = {name: getattr(tshell, name) for name in tshell.__all__}
    names["tcpscapy"] = tcpscapy
    if not no_banner:
        print(tshell.BANNER.format(version=__version__), flush=True)
    if not any(importlib.util.find_spec(name) for name in ("IPython", "bpython", "ptpython")):
        conf.interactive_shell = "python"  # what Scapy falls back to, without its warning
    sys.excepthook = tshell.excepthook  # one-line errors for tcpscapy's own exceptions
    # -H: Scapy's plain banner and quiet start-up; our argv is not Scapy's to parse.
    interact(mydict=names, argv=["tcpscapy shell", "-H"])
