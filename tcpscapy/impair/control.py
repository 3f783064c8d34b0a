"""Start, stop and talk to the impairment process of a routed lab (stage 1: stop only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpscapy.routed import RoutedLab


def stop(lab: RoutedLab) -> None:
    """Stop the lab's impairment process, if one runs."""


def path_status(lab: RoutedLab) -> dict[str, Any] | None:
    """The impairment's settings and counters; None when none runs."""
    return None
