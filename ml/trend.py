"""A new item's popularity prior from its interaction rate (issue 16, the item side).

The served score carries a popularity prior: an item's vector is scaled by ``d^b`` (`item_out`), ``d`` its
training degree. A new item's fold-in degree is the number of its first shoppers, so an item bought by 20
shoppers within a minute ranks below its interest's best sellers, each bought by hundreds over months, and
stays there until a retrain. Here a folded item's degree is what its first shoppers' rate would give over
``horizon_s``: ``n * horizon / (span + prior)``, ``span`` the time from its first shopper's first interaction to
its n-th's, ``prior`` a pseudo-time that keeps a burst of a few seconds from reading as an infinite rate. It never
falls below ``n`` (a slow item keeps its count), applies only from ``min_shoppers`` on (two purchases in a second
are not a trend), and is capped at ``cap``, the version's largest training degree, so a trending item is at
most as popular as the best seller. It depends only on the first shoppers' first times, which the fold-in reads
already (`workers.live.fold_sets`), so incremental and full recompute agree (invariant 3) and it settles with
the fold-in once the item has ``fold_users`` shoppers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TrendParams:
    horizon_s: float  # 0: off (the degree is the first shoppers' count)
    prior_s: float
    min_shoppers: int


def trend_degree(first_times: Sequence[float], params: TrendParams, cap: float) -> float:
    """The degree of a new item whose first shoppers first met it at ``first_times`` (any order)."""
    n = len(first_times)
    if params.horizon_s <= 0 or n < max(1, params.min_shoppers):
        return float(n)
    span = max(first_times) - min(first_times)
    rate_degree = n * params.horizon_s / (span + params.prior_s)
    return float(max(n, min(cap, rate_degree)))
