"""`tcpscapy lab` for the routed lab: its status table (and `lab path`, the impairment)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from tcpscapy.cli.lab import _EXIT_CODES, EXIT_LAB_ERROR, _fail, _guard, _make_lab, prefix_option
from tcpscapy.impair.model import PathError, parse_fraction, parse_rate, parse_time
from tcpscapy.routed import RoutedLab


def _state(part: dict[str, Any]) -> str:
    if not part.get("present", True):
        return "absent"
    if part["link_up"] and part["has_address"]:
        return "up"
    return "down" if not part["link_up"] else "no address"


def print_routed_status(info: dict[str, Any]) -> None:
    click.echo(f"lab {info['prefix']}: {info['state']} (routed)")
    router = info["router"]
    if router["present"]:
        extras = ["forwarding" if router["forwarding"] else "NOT forwarding"]
        extras += ["nat" if router["nat"] else "no nat"]
        extras += ["drops frag-needed" if router["drop_icmp"] else "icmp passes"]
        click.echo(f"  {'router':<9} {router['namespace']:<28} {', '.join(extras)}")
        for host, link in router["links"].items():
            where = f"{link['interface']} {link['address']}"
            mtu = f"mtu {link['mtu']}" if link["mtu"] else ""
            click.echo(f"    {'→ ' + host:<16} {where:<30} {mtu:<9} {_state(link)}")
    else:
        click.echo(f"  {'router':<9} {router['namespace']:<28} absent")
    for host, h in info["hosts"].items():
        where = f"{h['interface']} {h['address']}"
        click.echo(f"  {host:<9} {h['namespace']:<28} {where:<20} {_state(h)}")
    if router["present"]:
        print_path(info["path"])


OWN_DELAY_GOAL_US = 1000.0


def print_path(path: dict[str, Any] | None) -> None:
    if path is None:
        click.echo(f"  {'path':<9} no impairment process (the kernel forwards alone)")
        return
    if "error" in path:
        click.echo(f"  {'path':<9} {path['error']}")
        return
    own, wait = path["own_delay_us"], path["kernel_wait_us"]
    drops = sum(v["queue_full"] for v in path["kernel_drops"].values())
    click.echo(f"  {'path':<9} pid {path['pid']}, {path['scheduling']}, {path['held']} packets "
               f"held, {path['rate_pps']} packets/s now, {drops} dropped by a full kernel queue")
    if own["samples"]:
        verdict = "yes" if own["p99"] < OWN_DELAY_GOAL_US else "NO"
        click.echo(f"  {'':<9} own delay p50 {own['p50']:g} µs, p99 {own['p99']:g} µs, max "
                   f"{own['max']:g} µs over the last {own['samples']} packets (p99 under "
                   f"1 ms: {verdict}); before it read them p50 {wait['p50']:g} µs, "
                   f"p99 {wait['p99']:g} µs")
    else:
        click.echo(f"  {'':<9} own delay: no packets since the last change")
    for direction, d in path["directions"].items():
        c = d["counters"]
        click.echo(f"    {direction:<10} {d['describe']}")
        click.echo(f"    {'':<10} {c['packets']} packets: {c['sent']} sent, {c['lost']} lost, "
                   f"{c['queue_drops']} queue drops, {c['duplicated']} duplicated, "
                   f"{c['reordered']} reordered, {c['ce_marked']} CE")


def _unit(parse: Callable[[str], float]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse(value)
        except PathError as e:
            raise click.BadParameter(str(e)) from None
    return convert


def _time(name: str, what: str) -> Callable[[Any], Any]:
    return click.option(name, callback=_unit(parse_time), metavar="TIME", help=what)


def _fraction(name: str, what: str) -> Callable[[Any], Any]:
    return click.option(name, callback=_unit(parse_fraction), metavar="P", help=what)


@click.command(epilog=_EXIT_CODES)
@prefix_option
@click.option("--direction", type=click.Choice(["both", "to-server", "to-client"]),
              default="both", show_default=True, help="Which way the settings apply.")
@_time("--delay", "Added one-way delay, e.g. 25ms (a bare number is ms).")
@_time("--jitter", "± uniform around the delay; packets stay in order.")
@_fraction("--loss", "Packets lost, e.g. 1% or 0.01.")
@click.option("--burst", type=click.FloatRange(1), metavar="N",
              help="Mean loss burst in packets (Gilbert model, same average loss); 1 = random.")
@_fraction("--reorder", "Packets held back by --reorder-gap so later ones overtake them.")
@_time("--reorder-gap", "How long a reordered packet is held back (default 2ms).")
@_fraction("--duplicate", "Packets sent twice.")
@click.option("--rate", callback=_unit(parse_rate), metavar="RATE",
              help="Rate limit, e.g. 10mbit (0 = none), with a queue of --queue packets.")
@click.option("--queue", type=int, metavar="N", help="Rate limiter's queue in packets "
              "(default 1000); more is tail-dropped.")
@_time("--ce-threshold", "Mark ECT packets CE when they queued this long in the rate limiter.")
@_fraction("--ce", "Mark this fraction of ECT packets CE.")
@click.option("--seed", type=int, help="Seed of the random streams (default 1): a setting "
              "with the same seed meets the same packets with the same fate.")
@click.option("--clear", is_flag=True, help="Start from no impairment, then apply the options.")
@click.option("--off", is_flag=True,
              help="Stop the impairment process: the router's kernel forwards alone again.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def path(prefix: str, direction: str, clear: bool, off: bool, as_json: bool,
         **params: Any) -> None:
    """Impair the routed lab's path: delay, loss, reordering, duplication, rate, ECN CE.

    A process on the router forwards what passes between client and server (and the
    attacker) and applies the settings of each direction. Settings not given keep their
    value; with none, this prints the current state. Changes apply at once, while the lab
    is up; `lab down` stops the process.

    \b
    Examples:
      tcpscapy lab path --delay 25ms --loss 1%
      tcpscapy lab path --direction to-server --loss 2% --burst 4 --seed 7
      tcpscapy lab path --rate 10mbit --queue 50 --ce-threshold 5ms
      tcpscapy lab path --clear          (no impairment, process kept)
      tcpscapy lab path --off
    """
    the_lab = _make_lab(prefix)
    state = _guard(the_lab.status)["state"]  # first: without root, exit 4 says so
    if not isinstance(the_lab, RoutedLab):
        _fail(f"lab {prefix!r} is not a routed lab: run `tcpscapy lab up --routed "
              f"--prefix {prefix}`", EXIT_LAB_ERROR)
    if state != "up":
        _fail(f"lab {prefix!r} is {state}: run `tcpscapy lab up --routed --prefix {prefix}`",
              EXIT_LAB_ERROR)
    given = {k: v for k, v in params.items() if v is not None}
    if off:
        if given or clear:
            raise click.UsageError("--off takes no other settings")
        _guard(the_lab.path_off)
        click.echo(f"lab {prefix}: path impairment off")
        return
    if given or clear:
        info = _guard(lambda: the_lab.path(direction, clear, **given))
        info.pop("ok", None)
    else:
        info = _guard(the_lab.path_status)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_path(info)
