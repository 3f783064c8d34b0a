from hypothesis import given
from hypothesis import strategies as st

from tcpscapy.core.seq import (
    between,
    in_window,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_le,
    seq_lt,
    seq_max,
)

u32 = st.integers(0, 2**32 - 1)


def test_comparisons_across_the_wrap() -> None:
    top = 2**32 - 10
    assert seq_lt(top, 5) and seq_gt(5, top) and seq_le(top, top) and seq_ge(5, top)
    assert seq_add(top, 20) == 10 and seq_add(5, -10) == 2**32 - 5
    assert seq_diff(5, top) == 15 and seq_diff(top, 5) == -15
    assert seq_max(top, 3) == 3


def test_windows_across_the_wrap() -> None:
    start = 2**32 - 100
    assert in_window(start, start, 1) and in_window(50, start, 200)
    assert not in_window(100, start, 200) and not in_window(start - 1, start, 200)
    assert not in_window(start, start, 0)
    assert between(start, 20, 40) and not between(start, 41, 40)


@given(u32, st.integers(0, 2**31 - 1))
def test_adding_moves_forward(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_diff(b, a) == n and seq_le(a, b) and in_window(b, a, n + 1)
