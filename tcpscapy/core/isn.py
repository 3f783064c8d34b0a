"""Initial sequence numbers (RFC 6528) and per-connection timestamp offsets.

ISN = M + F(4-tuple, secret): M is a 4-microsecond clock taken from `now`, F a
keyed hash, so that ISNs of one 4-tuple keep increasing while different
4-tuples cannot be predicted from each other.
"""

from __future__ import annotations

import hashlib

from .seq import MASK


def _keyed_hash(secret: bytes, purpose: bytes, *parts: object) -> int:
    h = hashlib.blake2s(key=secret[:32], digest_size=4, person=purpose)
    h.update("|".join(map(str, parts)).encode())
    return int.from_bytes(h.digest(), "big")


def initial_sequence_number(
    now: float, local: tuple[str, int], remote: tuple[str, int], secret: bytes
) -> int:
    clock = int(now * 250_000)  # one tick every 4 µs (RFC 9293 §3.4.1)
    return (clock + _keyed_hash(secret, b"isn", *local, *remote)) & MASK


def timestamp_offset(local: tuple[str, int], remote: tuple[str, int], secret: bytes) -> int:
    """Random-looking TSval origin per connection, so TSval leaks no host uptime."""
    return _keyed_hash(secret, b"tsoff", *local, *remote)
