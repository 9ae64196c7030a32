"""`ml.trend`: a new item's popularity prior from its first shoppers' rate."""

from __future__ import annotations

import pytest

from ml.trend import TrendParams, trend_degree

DAY = 86400.0
ON = TrendParams(horizon_s=30 * DAY, prior_s=DAY, min_shoppers=10)


def test_off_or_too_few_shoppers_is_the_count() -> None:
    burst = [1000.0 + s for s in range(20)]
    assert trend_degree(burst, TrendParams(0.0, DAY, 10), cap=500.0) == 20.0
    assert trend_degree(burst[:9], ON, cap=500.0) == 9.0
    assert trend_degree([], ON, cap=500.0) == 0.0


def test_a_burst_reads_as_its_rate_over_the_horizon_up_to_the_cap() -> None:
    burst = [1000.0 + s for s in range(20)]  # 20 shoppers within 19 s
    assert trend_degree(burst, ON, cap=10_000.0) == pytest.approx(20 * 30 * DAY / (19 + DAY))
    assert trend_degree(burst, ON, cap=300.0) == 300.0
    # half a day for the same shoppers: a third less
    spread = [1000.0 + s * DAY / 38 for s in range(20)]
    assert trend_degree(spread, ON, cap=10_000.0) == pytest.approx(20 * 30 / 1.5)


def test_a_slow_item_keeps_its_count_and_order_does_not_matter() -> None:
    slow = [s * 10 * DAY for s in range(12)]  # 12 shoppers over 110 days
    assert trend_degree(slow, ON, cap=10_000.0) == 12.0
    burst = [1000.0 + s for s in range(15)]
    assert trend_degree(burst, ON, cap=900.0) == trend_degree(list(reversed(burst)), ON, cap=900.0)
