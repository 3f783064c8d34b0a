"""tcpscapy: a user-space TCP endpoint for seeing and steering TCP segment by segment.

`tcpscapy.connect()` and `tcpscapy.listen()` (tcpscapy.api) are loaded on first
use, so `import tcpscapy.core` stays free of the I/O layer and of Scapy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tcpscapy.api import Connection, Listener, connect, listen

__all__ = ["Connection", "Listener", "__version__", "connect", "listen"]

_LAZY = {"connect", "listen", "Connection", "Listener"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tcpscapy import api

        return getattr(api, name)
    raise AttributeError(f"module 'tcpscapy' has no attribute {name!r}")
