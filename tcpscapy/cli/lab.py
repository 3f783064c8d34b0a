"""`tcpscapy lab`: build, inspect, use and remove the namespace topology (tcpscapy.lab)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from tcpscapy.cli._common import Group
from tcpscapy.cli._forward import run_forwarding_signals
from tcpscapy.io import flood as floodlib
from tcpscapy.io.flood import DEFAULT_COUNT, MAX_COUNT, MAX_DURATION
from tcpscapy.lab import BRIDGE, HOSTS, Lab, LabError, LabNeedsRoot, LabUsageError
from tcpscapy.netns import NeedsRoot
from tcpscapy.routed import DEFAULT_MTU, ROUTED_HOSTS, RoutedLab, open_lab

EXIT_LAB_ERROR = 1
EXIT_USAGE = 2
EXIT_NEEDS_ROOT = 4

_EXIT_CODES = f"""
Exit codes: 0 ok, {EXIT_LAB_ERROR} lab operation failed, {EXIT_USAGE} bad usage (unknown host,
bad prefix), {EXIT_NEEDS_ROOT} needs root. `exec` returns the command's own exit code.
"""

T = TypeVar("T")

prefix_option = click.option(
    "--prefix", default="tcpscapy", show_default=True,
    help="Namespace name prefix: namespaces are PREFIX-client, -server, -attacker, -sw.",
)


def _fail(message: str, code: int) -> NoReturn:
    """One line, `tcpscapy lab up: ...`, in the style of every tcpscapy command."""
    names, ctx = [], click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:  # the root is `tcpscapy` itself
        names.append(ctx.command.name or "")
        ctx = ctx.parent
    click.echo(" ".join(["tcpscapy", *reversed(names or ["lab"])]) + f": {message}", err=True)
    sys.exit(code)


def _guard(action: Callable[[], T]) -> T:
    """Run a lab action, turning its errors into a one-line message and an exit code."""
    try:
        return action()
    except LabNeedsRoot as e:
        _fail(str(e), EXIT_NEEDS_ROOT)
    except LabUsageError as e:
        _fail(str(e), EXIT_USAGE)
    except LabError as e:
        _fail(str(e), EXIT_LAB_ERROR)


def _make_lab(prefix: str) -> Lab:
    """The lab as it is: routed if its router namespace exists, else flat."""
    return _guard(lambda: open_lab(prefix))


def _parse_sysctl(spec: str) -> tuple[str, str, str]:
    host, sep, rest = spec.partition(":")
    key, eq, value = rest.partition("=")
    if not (sep and eq and key):
        _fail(f"bad --sysctl {spec!r}: expected HOST:KEY=VALUE", EXIT_USAGE)
    if host not in ROUTED_HOSTS:
        _fail(f"bad --sysctl {spec!r}: unknown host {host!r} ({', '.join(ROUTED_HOSTS)})",
              EXIT_USAGE)
    return host, key, value


@click.group(cls=Group, epilog=_EXIT_CODES)
def lab() -> None:
    """Network-namespace lab: hosts client (10.77.0.1), server (10.77.0.2) and attacker
    (10.77.0.3) on one bridged link; or, with `up --routed`, client (10.78.1.2), server
    (10.78.2.2) and attacker (10.78.3.2) on three subnets behind a router. Needs root."""


@lab.command(epilog=_EXIT_CODES)
@prefix_option
@click.option(
    "--sysctl", "sysctls", multiple=True, metavar="HOST:KEY=VALUE",
    help="Per-host net.* sysctl, e.g. server:net.ipv4.tcp_syncookies=2. Repeatable.",
)
@click.option("--routed", is_flag=True,
              help="Client and server on two subnets with a forwarding router between.")
@click.option("--mtu-client-side", type=int, default=None, metavar="N",
              help="Routed: MTU of the router's route onto the client's link (default 1500).")
@click.option("--mtu-server-side", type=int, default=None, metavar="N",
              help="Routed: MTU of the router's route onto the server's link (default 1500).")
@click.option("--nat", is_flag=True, help="Routed: MASQUERADE toward the server.")
@click.option("--drop-icmp", is_flag=True,
              help="Routed: drop the router's 'fragmentation needed' (a PMTU black hole).")
def up(prefix: str, sysctls: tuple[str, ...], routed: bool, mtu_client_side: int | None,
       mtu_server_side: int | None, nat: bool, drop_icmp: bool) -> None:
    """Create the lab, or repair an existing one, then apply sysctls.

    \b
    Routed: the router's MTUs, NAT and ICMP filter end up as this call says.
    Example: tcpscapy lab up --routed --mtu-server-side 1280 --drop-icmp
    """
    routed_only = {"--mtu-client-side": mtu_client_side is not None,
                   "--mtu-server-side": mtu_server_side is not None,
                   "--nat": nat, "--drop-icmp": drop_icmp}
    given = [name for name, on in routed_only.items() if on]
    if given and not routed:
        _fail(f"{', '.join(given)} need --routed", EXIT_USAGE)
    the_lab: Lab = _guard(lambda: RoutedLab(
        prefix, mtu_client_side=DEFAULT_MTU if mtu_client_side is None else mtu_client_side,
        mtu_server_side=DEFAULT_MTU if mtu_server_side is None else mtu_server_side,
        nat=nat, drop_icmp=drop_icmp,
    )) if routed else _guard(lambda: Lab(prefix))
    parsed = [_parse_sysctl(s) for s in sysctls]
    _guard(lambda: the_lab.up(parsed))
    _print_status(_guard(the_lab.status))


@lab.command(epilog=_EXIT_CODES)
@prefix_option
def down(prefix: str) -> None:
    """Remove every namespace of the lab (nothing to do if it is not there)."""
    the_lab = _make_lab(prefix)
    existed = _guard(the_lab.exists)
    _guard(the_lab.down)
    click.echo(f"lab {prefix}: {'removed' if existed else 'nothing to remove'}")


@lab.command(epilog=_EXIT_CODES)
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(prefix: str, as_json: bool) -> None:
    """Show hosts, namespaces, addresses and whether each part is up."""
    info = _guard(_make_lab(prefix).status)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_status(info)


@lab.command(
    "exec",
    epilog=_EXIT_CODES,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@prefix_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(prefix: str, host: str, command: tuple[str, ...]) -> None:
    """Run a command inside a host's namespace.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP are passed on to the command; exec
    ends when it does, with its exit code (128+N if signal N killed it).

    \b
    Example: tcpscapy lab exec server -- ss -tln
    """
    if host not in ROUTED_HOSTS:  # the lab itself refuses `router` in a flat lab
        _fail(f"unknown host {host!r}: choose one of {', '.join(ROUTED_HOSTS)}", EXIT_USAGE)
    # Options stop at HOST, so click hands us the `--` separator as part of the command.
    argv = list(command[1:] if command[0] == "--" else command)
    if not argv:
        _fail("no command given: tcpscapy lab exec HOST -- CMD...", EXIT_USAGE)
    the_lab = _make_lab(prefix)
    full = _guard(lambda: the_lab.exec_argv(host, argv))
    sys.exit(run_forwarding_signals(full))


@lab.command(epilog=_EXIT_CODES)
@prefix_option
@click.option("--target", type=click.Choice([h for h in HOSTS if h != "attacker"]),
              default="server", show_default=True, help="Lab host to flood.")
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True)
@click.option("--count", type=click.IntRange(1, MAX_COUNT), default=DEFAULT_COUNT,
              show_default=True, help="SYNs to send.")
@click.option("--rate", type=click.FloatRange(0, min_open=True), default=None,
              help="Cap in SYNs per second (default: as fast as the link takes them).")
@click.option("--duration", type=click.FloatRange(0, MAX_DURATION, min_open=True),
              default=None, help=f"Stop after this many seconds (at most {MAX_DURATION:g}).")
@click.option("--seed", type=int, default=None, help="Repeatable sources, ports and ISNs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def flood(prefix: str, target: str, port: int, count: int, rate: float | None,
          duration: float | None, seed: int | None, as_json: bool) -> None:
    """SYN flood from the attacker host: spoofed lab-subnet sources, bounded.

    Runs only inside the attacker namespace of a lab that is up, aims only at a
    lab host, and sends at most --count SYNs for at most --duration seconds.
    Spoofed sources are unused addresses of the lab subnet; the lab has no
    route out, so nothing leaves its namespaces.

    \b
    Example: tcpscapy lab flood --count 20000 --rate 10000
    """
    the_lab = _make_lab(prefix)
    if isinstance(the_lab, RoutedLab):
        _fail("flood needs the flat lab: its spoofed sources are the flat subnet's", EXIT_USAGE)
    state = _guard(the_lab.status)["state"]
    if state != "up":
        _fail(f"lab {prefix!r} is {state}: run `tcpscapy lab up --prefix {prefix}` first",
              EXIT_LAB_ERROR)
    try:
        with the_lab.enter("attacker"):
            result = floodlib.flood(the_lab.addr(target), port, count, rate=rate,
                               duration=duration, seed=seed)
    except (floodlib.FloodRefused, ValueError) as e:
        _fail(str(e), EXIT_LAB_ERROR)
    except NeedsRoot as e:
        _fail(str(e), EXIT_NEEDS_ROOT)
    except LabError as e:
        _fail(str(e), EXIT_LAB_ERROR)
    click.echo(json.dumps(result.as_dict()) if as_json else f"lab {prefix}: {result.summary()}")


def _print_status(info: dict[str, Any]) -> None:
    if info.get("kind") == "routed":
        from tcpscapy.cli.lab_routed import print_routed_status

        print_routed_status(info)
        return
    click.echo(f"lab {info['prefix']}: {info['state']}")
    sw = info["switch"]
    sw_state = "up" if sw["bridge_up"] else "present" if sw["present"] else "absent"
    click.echo(f"  {'switch':<9} {sw['namespace']:<28} {'bridge ' + BRIDGE:<20} {sw_state}")
    for host, h in info["hosts"].items():
        if not h["present"]:
            state = "absent"
        elif h["link_up"] and h["has_address"]:
            state = "up"
        else:
            state = "down" if not h["link_up"] else "no address"
        where = f"{h['interface']} {h['address']}"
        click.echo(f"  {host:<9} {h['namespace']:<28} {where:<20} {state}")
