"""32-bit sequence-number arithmetic (RFC 9293 §3.4), safe across wraparound.

Sequence numbers are plain ints in [0, 2**32). Comparisons look at the signed
difference modulo 2**32, so they hold as long as the two numbers are less than
2**31 apart, which TCP's windows guarantee.
"""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """a + n, wrapped into 32 bits (n may be negative)."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b, in [-2**31, 2**31)."""
    return ((a - b + HALF) & MASK) - HALF


# The four comparisons look at (a - b) mod 2**32 directly rather than through seq_diff: they
# sit on every segment's path, and one Python call less each is measurable.


def seq_lt(a: int, b: int) -> bool:
    return (a - b) & MASK >= HALF


def seq_le(a: int, b: int) -> bool:
    d = (a - b) & MASK
    return d == 0 or d >= HALF


def seq_gt(a: int, b: int) -> bool:
    return 0 < (a - b) & MASK < HALF


def seq_ge(a: int, b: int) -> bool:
    return (a - b) & MASK < HALF


def seq_max(a: int, b: int) -> int:
    return a if seq_ge(a, b) else b


def seq_min(a: int, b: int) -> int:
    return a if seq_le(a, b) else b


def in_window(seq: int, start: int, size: int) -> bool:
    """start <= seq < start + size, modulo 2**32."""
    return 0 <= ((seq - start) & MASK) < size


def between(low: int, seq: int, high: int) -> bool:
    """low <= seq <= high, modulo 2**32 (RFC 9293's `=<` chains)."""
    return ((seq - low) & MASK) <= ((high - low) & MASK)
