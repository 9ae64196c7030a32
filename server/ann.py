"""Building blocks of the item index: ids as dense labels, index parameters, the immutable base index.

The base is FAISS IVF-Flat with inner product (exact flat below ``ann_min_items``). Its lists hold the leading
``ivf_dim`` components of each vector; `server.index.ItemIndex` re-ranks the candidates at the full width. IVF
rather than HNSW: HNSW cannot remove vectors, and an IVF base can be rebuilt during compaction from its trained
centroids in seconds, where 1M-item HNSW builds take minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


class LabelMap:
    """External item id <-> dense int label; labels are never reused, so arrays indexed by label stay valid."""

    def __init__(self) -> None:
        self._labels: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, item_id: str) -> int | None:
        return self._labels.get(item_id)

    def assign(self, item_id: str) -> int:
        label = self._labels.get(item_id)
        if label is None:
            label = len(self._ids)
            self._labels[item_id] = label
            self._ids.append(item_id)
        return label

    def id_of(self, label: int) -> str:
        return self._ids[label]

    def ids(self) -> list[str]:
        return self._ids


@dataclass(frozen=True)
class IndexParams:
    nlist: int = 0
    nprobe: int = 64
    ivf_dim: int = 256  # components an IVF base holds (0 = all); candidates are re-ranked at the full width
    refine: int = 1000  # candidates re-ranked per query when the IVF holds fewer components than the vectors
    ann_min_items: int = 20_000
    exact_filter_max: int = 20_000
    # Unfiltered queries over-fetch k + exclusions + tombstones from the base when that stays below this;
    # beyond it FAISS skips the tombstones itself (an id selector over a bitmap kept up to date). At 1M items the
    # selector costs ~40 us more per query and over-fetching ~0.17 us more per tombstone: even at ~250.
    overfetch_max: int = 256
    # Filtered IVF search probes nprobe / selectivity lists, at most this many times nprobe.
    filter_probe_boost_max: int = 16


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return v / norms


def _nlist_for(n: int, params: IndexParams) -> int:
    if params.nlist:
        return min(params.nlist, max(1, n // 39))
    return int(max(1, min(65536, 4 * np.sqrt(n), n // 39)))


@dataclass
class Base:
    """An immutable base index over positions 0..n-1; ``labels[pos]`` is the item label."""

    index: faiss.Index
    labels: np.ndarray
    centroids: np.ndarray | None  # kept to rebuild IVF without retraining

    @property
    def width(self) -> int:
        """Components the FAISS index holds (the leading ones of each vector)."""
        return int(self.index.d)

    _pos_of: np.ndarray | None = None

    @property
    def is_ivf(self) -> bool:
        return self.centroids is not None

    def pos_of(self) -> np.ndarray:
        """label -> position in this base (-1: not in it)."""
        if self._pos_of is None:
            pos = np.full(int(self.labels.max()) + 1 if len(self.labels) else 0, -1, np.int64)
            pos[self.labels] = np.arange(len(self.labels))
            self._pos_of = pos
        return self._pos_of


def build_base(vectors: np.ndarray, labels: np.ndarray, params: IndexParams,
               centroids: np.ndarray | None = None) -> Base:
    """Builds a base index (CPU heavy: run it off the event loop)."""
    n, dim = vectors.shape
    if n < max(params.ann_min_items, 1):
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return Base(index, labels.astype(np.int64), None)
    width = min(params.ivf_dim or dim, dim)
    vectors = np.ascontiguousarray(vectors[:, :width])
    if centroids is None or centroids.shape[1] != width or not (len(centroids) * 20 <= n <= len(centroids) * 200):
        nlist = _nlist_for(n, params)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        km = faiss.Kmeans(width, nlist, niter=12, spherical=True, seed=1, max_points_per_centroid=64)
        km.train(sample)
        centroids = km.centroids.copy()
    quantizer = faiss.IndexFlatIP(width)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, width, len(centroids), faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add(vectors)
    index.nprobe = params.nprobe
    assert quantizer in getattr(index, "referenced_objects", [quantizer])  # faiss keeps it alive
    return Base(index, labels.astype(np.int64), centroids)
