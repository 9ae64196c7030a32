"""Ranking rules: per-request diversity caps (items per direct category, per brand) and boosts by category or brand.

They re-rank the best candidates of the model's ranking (the engine fetches them: ``Engine._search``):

- a boost scales the served score ``s`` (an inner product, possibly negative) by its multiplier ``m`` as
  ``s * m`` when ``s >= 0`` and ``s / m`` when ``s < 0``: for ``m > 1`` the item always moves up, for ``m < 1``
  down, and the order among items with the same multipliers is the model's. Several matching boosts multiply.
  A category boost matches the category and its subcategories (as the filter reads categories);
- the items are then ordered by boosted score, best first, ties by item id, and taken greedily: an item whose
  direct category (any of them, for an item filed under several) or brand already has its cap's worth in the
  answer is skipped. Items without a category or brand are never capped by it.

Everything here is a pure function of the candidates and the facets, so the same index state gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from server.facets import FacetStore


@dataclass(frozen=True)
class Boost:
    kind: Literal["category", "brand"]
    id: str
    multiplier: float


@dataclass(frozen=True)
class RankingRules:
    max_per_category: int = 0  # 0: no cap
    max_per_brand: int = 0
    boosts: tuple[Boost, ...] = ()

    @property
    def capped(self) -> bool:
        return self.max_per_category > 0 or self.max_per_brand > 0


def boosted(scores: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Scores moved by their boost factors: up for factors above 1 whatever the score's sign (see the module)."""
    out: np.ndarray = np.where(scores >= 0, scores * factors, scores / factors).astype(np.float32)
    return out


def boost_factors(facets: FacetStore, labels: np.ndarray, boosts: Sequence[Boost]) -> np.ndarray:
    """Per candidate (label, -1 for an item without one), the product of the multipliers of the boosts it matches."""
    factors = np.ones(len(labels), np.float32)
    for b in boosts:
        bits = facets.members_bits(b.kind, b.id)
        known = (labels >= 0) & (labels < 8 * len(bits))
        lab = labels[known]
        hit = np.zeros(len(labels), bool)
        hit[known] = (bits[lab >> 3] >> (lab & 7).astype(np.uint8)) & 1
        factors[hit] *= np.float32(b.multiplier)
    return factors


def apply_rules(
    facets: FacetStore, rules: RankingRules, labels: np.ndarray, scores: np.ndarray, k: int, id_of: Callable[[int], str]
) -> list[tuple[str, float]]:
    """The best ``k`` candidates (their ``labels`` and model ``scores``; ``id_of(j)``: candidate j's item id, asked
    only of the answer and of ties) under ``rules``, as (id, score)."""
    if len(labels) == 0:
        return []
    sc = np.asarray(scores, np.float32)
    if rules.boosts:
        sc = boosted(sc, boost_factors(facets, labels, rules.boosts))
    order = np.argsort(-sc, kind="stable")
    ranked = sc[order]
    if np.any(ranked[1:] == ranked[:-1]):  # ties (rare): break them by item id
        order = np.asarray(sorted(order.tolist(), key=lambda j: (-float(sc[j]), id_of(j))), np.int64)
    if not rules.capped:
        return [(id_of(j), float(sc[j])) for j in order[:k].tolist()]
    return _capped(facets, rules, labels, sc, order, k, id_of)


def _capped(
    facets: FacetStore, rules: RankingRules, labels: np.ndarray, sc: np.ndarray, order: np.ndarray, k: int, id_of: Callable[[int], str]
) -> list[tuple[str, float]]:
    max_cat = rules.max_per_category or k
    max_brand = rules.max_per_brand or k
    per_cat: dict[str, int] = {}
    per_brand: dict[str, int] = {}
    out: list[tuple[str, float]] = []
    labs = labels.tolist()
    for j in order.tolist():
        cats, brands = facets.cap_keys(labs[j])
        if any(per_cat.get(c, 0) >= max_cat for c in cats) or any(per_brand.get(b, 0) >= max_brand for b in brands):
            continue
        for c in cats:
            per_cat[c] = per_cat.get(c, 0) + 1
        for b in brands:
            per_brand[b] = per_brand.get(b, 0) + 1
        out.append((id_of(j), float(sc[j])))
        if len(out) == k:
            break
    return out
