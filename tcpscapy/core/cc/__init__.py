"""Congestion controllers behind one interface (base.CongestionControl)."""

from __future__ import annotations

from .base import AckSample, CongestionControl
from .bbr import Bbr
from .cubic import Cubic
from .newreno import NewReno

CONTROLLERS: dict[str, type[CongestionControl]] = {
    "newreno": NewReno, "cubic": Cubic, "bbr": Bbr}
NAMES = tuple(CONTROLLERS)
DEFAULT = "cubic"


def make(name: str, mss: int, initial_window: int, *, hystart: bool = True
         ) -> CongestionControl:
    """A fresh controller; ValueError for an unknown name."""
    try:
        cls = CONTROLLERS[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} "
                         f"(choose from {', '.join(NAMES)})") from None
    cc = cls(mss, initial_window)
    if not hystart and isinstance(cc, Cubic):
        cc.hystart.enabled = False
    return cc


__all__ = [
    "CONTROLLERS",
    "DEFAULT",
    "NAMES",
    "AckSample",
    "Bbr",
    "CongestionControl",
    "Cubic",
    "NewReno",
    "make",
]
