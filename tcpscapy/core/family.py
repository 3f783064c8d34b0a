"""What TCP does differently over IPv4 and IPv6: header room and the assumed MSS.

Addresses reach the engine as text (the codecs write IPv6 the way inet_ntop
does), so the family is told by the colon no IPv4 address has.
"""

from __future__ import annotations

HEADERS_V4 = 40  # IPv4 (20) + TCP (20), no options
HEADERS_V6 = 60  # IPv6 (40) + TCP (20): RFC 8200 §8.3 "maximum packet size minus 60"
DEFAULT_MSS_V4 = 536  # RFC 9293 MUST-15: assumed when the peer sends no MSS option
DEFAULT_MSS_V6 = 1280 - HEADERS_V6  # RFC 8200 §5: every IPv6 link carries 1280 bytes (Linux too)
MIN_MSS = 64  # the engine's floor for any MSS it uses


def is_ipv6(addr: str) -> bool:
    return ":" in addr


def default_mss(peer: str) -> int:
    """The MSS to assume for `peer` when its SYN carries no MSS option."""
    return DEFAULT_MSS_V6 if ":" in peer else DEFAULT_MSS_V4


def mss_for_mtu(mtu: int, peer: str) -> int:
    """The MSS to advertise on a link of `mtu` bytes towards `peer`: the MTU less the
    fixed IP and TCP headers (40 for IPv4, 60 for IPv6, as Linux's tcp_mtu_to_mss)."""
    return max(mtu - (HEADERS_V6 if ":" in peer else HEADERS_V4), MIN_MSS)
