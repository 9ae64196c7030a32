"""Item facets (categories with their ancestors, brands) held in memory as label sets, for filtered search, and
each item's direct categories and brands, for the caps of the ranking rules (server.rules).

A filter keeps items in any of the requested categories AND (when brands are given) of any of the requested
brands; unknown category or brand ids simply match nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from graphdb.catalog import ItemFacets
from server.index import LabelMap

_NONE: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


class FacetStore:
    def __init__(self, labels: LabelMap) -> None:
        self.labels = labels
        self._of_item: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._caps: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # label -> (direct categories, brands)
        self._by_category: dict[str, set[int]] = defaultdict(set)
        self._by_brand: dict[str, set[int]] = defaultdict(set)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}  # cache, dropped on change
        # Recent filters' masks: the same mask object lets the index reuse its per-filter state.
        self._masks: dict[tuple[Any, ...], np.ndarray] = {}
        self._bits: dict[tuple[str, str], np.ndarray] = {}  # boosts' membership bitmaps, dropped on change

    def __len__(self) -> int:
        return len(self._of_item)

    def update(self, facets: Iterable[ItemFacets]) -> int:
        n = 0
        for f in facets:
            label = self.labels.assign(f.id)
            self._caps[label] = (f.direct_category_ids, f.brand_ids)
            old = self._of_item.get(label)
            if old == (f.category_ids, f.brand_ids):
                continue
            if old:
                self._unlink(label, *old)
            self._of_item[label] = (f.category_ids, f.brand_ids)
            for c in f.category_ids:
                self._by_category[c].add(label)
                self._arrays.pop(("c", c), None)
            for b in f.brand_ids:
                self._by_brand[b].add(label)
                self._arrays.pop(("b", b), None)
            n += 1
        if n:
            self._masks.clear()
            self._bits.clear()
        return n

    def _unlink(self, label: int, cats: Sequence[str], brands: Sequence[str]) -> None:
        for c in cats:
            self._by_category[c].discard(label)
            self._arrays.pop(("c", c), None)
        for b in brands:
            self._by_brand[b].discard(label)
            self._arrays.pop(("b", b), None)

    def facets_of(self, item_id: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        label = self.labels.get(item_id)
        return None if label is None else self._of_item.get(label)

    def members_bits(self, kind: str, key: str) -> np.ndarray:
        """Packed bitmap over labels (little bit order) of the items in category ``key`` or its subcategories
        (``kind`` "category"), or of brand ``key``: a boost's lookup per candidate is then one vector operation.
        Cached per facet (an eighth of a byte per item) until the facets change."""
        bits = self._bits.get((kind, key))
        if bits is None:
            mask = np.zeros(len(self.labels), bool)
            mask[self._array("c" if kind == "category" else "b", key)] = True
            bits = np.packbits(mask, bitorder="little")
            if len(self._bits) >= 256:
                self._bits.pop(next(iter(self._bits)))
            self._bits[(kind, key)] = bits
        return bits

    def cap_keys(self, label: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(direct categories, brands) of the item with ``label``; empty for an item without facets."""
        return self._caps.get(label, _NONE)

    def _array(self, kind: str, key: str) -> np.ndarray:
        arr = self._arrays.get((kind, key))
        if arr is None:
            members = (self._by_category if kind == "c" else self._by_brand).get(key, ())
            arr = np.fromiter(members, np.int64, len(members))
            self._arrays[(kind, key)] = arr
        return arr

    def mask(self, category_ids: Sequence[str], brand_ids: Sequence[str]) -> np.ndarray | None:
        """Bool mask over labels of the items the filter keeps, or None when it keeps everything."""
        if not category_ids and not brand_ids:
            return None
        key = (tuple(category_ids), tuple(brand_ids))
        cached = self._masks.get(key)
        if cached is not None:
            return cached
        n = len(self.labels)
        result: np.ndarray | None = None
        for kind, keys in (("c", category_ids), ("b", brand_ids)):
            if not keys:
                continue
            m = np.zeros(n, bool)
            for facet in keys:
                m[self._array(kind, facet)] = True
            result = m if result is None else result & m
        if len(self._masks) >= 64:
            self._masks.pop(next(iter(self._masks)))
        assert result is not None  # one of the two lists is not empty
        self._masks[key] = result
        return result
