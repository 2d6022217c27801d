"""The size grid a DP size estimate is rounded down to (``oralfed.client.public_size``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oralfed.client.public_size import SIZE_GRID_BITS, on_size_grid

counts = st.integers(min_value=1, max_value=10**9)


@given(counts)
def test_a_size_on_the_grid_is_at_most_a_thirty_second_below_it(count: int) -> None:
    rounded = on_size_grid(count)
    assert rounded <= count
    assert count - rounded < count / 2 ** (SIZE_GRID_BITS - 1)
    assert on_size_grid(rounded) == rounded  # a point of the grid stays where it is


@given(counts, counts)
def test_the_grid_keeps_the_order_of_sizes(first: int, second: int) -> None:
    low, high = sorted((first, second))
    assert on_size_grid(low) <= on_size_grid(high)


def test_small_sizes_are_kept_and_larger_ones_share_points() -> None:
    assert [on_size_grid(n) for n in (1, 2, 63)] == [1, 2, 63]
    assert on_size_grid(1000) == on_size_grid(1007) == 992
    assert on_size_grid(1008) == 1008
    # Sizes of a few hundred to two thousand fall on about a hundred points.
    assert len({on_size_grid(n) for n in range(200, 2001)}) == 109
