"""`tcpscapy lab` for the routed lab: its status table (and `lab path`, the impairment)."""

from __future__ import annotations

from typing import Any

import click


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
