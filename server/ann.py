"""Building blocks of the item index: ids as dense labels, index parameters, the immutable base index.

The base is a FAISS IVF with inner product (exact flat below ``ann_min_items``). Its lists hold the leading
``ivf_dim`` components of each vector, as 4-bit product-quantizer codes scanned with SIMD (``ivf_codes="pq4"``,
IVF-PQ fast scan: 32 bytes an item at 256 components) or as floats (``"flat"``); `server.index.ItemIndex`
re-ranks the candidates exactly at the full width, so the codes only have to find them. IVF
rather than HNSW: HNSW cannot remove vectors, and an IVF base can be rebuilt during compaction from its trained
centroids in seconds, where 1M-item HNSW builds take minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    nprobe: int = 112
    ivf_dim: int = 256  # components an IVF base holds (0 = all); candidates are re-ranked at the full width
    refine: int = 200  # candidates re-ranked per query when the IVF holds fewer components than the vectors
    ivf_codes: str = "pq4"  # "pq4": 4-bit PQ codes (one sub-quantizer per 4 components), "flat": floats
    ann_min_items: int = 20_000
    exact_filter_max: int = 20_000
    # Unfiltered queries over-fetch k + exclusions + tombstones from the base when that stays below this;
    # beyond it FAISS skips the tombstones itself (an id selector over a bitmap kept up to date). At 1M items the
    # selector costs ~40 us more per query and over-fetching ~0.17 us more per tombstone: even at ~250.
    overfetch_max: int = 256
    # Filtered IVF search probes nprobe / selectivity lists, at most this many times nprobe.
    filter_probe_boost_max: int = 16


# Narrower IVFs keep floats: their lists cost little, and a few 4-bit sub-quantizers blur the candidates more
# than a re-rank of a few hundred makes up for (16 components: recall@10 0.68 against 0.9, tests/server).
PQ_MIN_WIDTH = 64


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: np.ndarray = v / norms
    return normalised


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
    # Read once: each query asks both several times, and a SWIG attribute or isinstance costs a microsecond.
    width: int = field(init=False)  # components the FAISS index holds (the leading ones of each vector)
    codes: str = field(init=False)  # "flat" (floats) or "pq4" (product-quantizer codes: approximate scores)
    _pos_of: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.width = int(self.index.d)
        self.codes = "pq4" if isinstance(self.index, faiss.IndexIVFPQFastScan) else "flat"

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


# From this many lists the coarse quantizer is approximate (``coarse_quantizer``); fewer cost little held exactly.
APPROX_COARSE_MIN_LISTS = 1024
# Lists the approximate coarse quantizer's codes shortlist per list it returns, then scored exactly.
COARSE_SHORTLIST = 2


def coarse_quantizer(centroids: np.ndarray) -> faiss.Index:
    """The IVF's list assignment. Few lists: the centroids held as float16 (the same nprobe lists as float32,
    overlap 1.000 on 4,000 x 256 unit centroids, in 121 against 179 us a query). Many lists: their 4-bit PQ codes
    scanned with SIMD shortlist ``COARSE_SHORTLIST`` lists per list wanted, whose exact scores (float centroids)
    pick the lists and give the scans their exact bias. At 4,000 x 256 that picks 64 % of the exact best 64 lists
    in 33 against 97 us; probing 112 of its lists and re-ranking 150 found more true neighbours at 1M x 1024
    (recall@10 0.769) than 64 exact lists and 300 (0.755), for 232 against ~300 us of FAISS work a query
    (docs/benchmarks.md, "Serving at the served width")."""
    n, width = centroids.shape
    cents = np.ascontiguousarray(centroids, np.float32)
    if n < APPROX_COARSE_MIN_LISTS or width % 4 or width < PQ_MIN_WIDTH:
        quantizer = faiss.IndexScalarQuantizer(width, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        quantizer.train(cents)  # fp16 needs no statistics; FAISS still wants the call
        quantizer.add(cents)
        return quantizer
    codes = faiss.IndexPQFastScan(width, width // 4, 4, faiss.METRIC_INNER_PRODUCT)
    codes.train(cents)
    refined = faiss.IndexRefineFlat(codes)  # holds the float centroids too: 4 MB at 4,000 x 256
    refined.add(cents)
    refined.k_factor = COARSE_SHORTLIST
    return refined


def tune(index: faiss.IndexIVF, params: IndexParams) -> None:
    """Search settings, which FAISS does not save with the index: ``nprobe``, and for PQ fast scan, the
    one-query-at-a-time scan with a reservoir of candidates (``implem`` 11) rather than the default's scan built
    for batches of queries: for the server's single queries of a few hundred candidates 97 against 115 us at
    200k items, the same candidates up to the order of equal code scores."""
    index.nprobe = params.nprobe
    concrete = faiss.downcast_index(index)  # FAISS's extract_index_ivf hands back the base class
    if isinstance(concrete, faiss.IndexIVFFastScan):
        concrete.implem = 11


def ivf_index(quantizer: faiss.Index, width: int, nlist: int, codes: str) -> faiss.IndexIVF:
    """An empty IVF over ``quantizer``'s trained centroids, its lists holding ``codes``."""
    if codes == "flat":
        index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
        return index
    if codes == "pq4":
        if width % 4 or width < PQ_MIN_WIDTH:  # a sub-quantizer spans 4 components: other widths keep floats
            return ivf_index(quantizer, width, nlist, "flat")
        return faiss.IndexIVFPQFastScan(quantizer, width, nlist, width // 4, 4, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown ivf_codes {codes!r} (pq4 or flat)")


def build_base(vectors: np.ndarray, labels: np.ndarray, params: IndexParams, centroids: np.ndarray | None = None) -> Base:
    """Builds a base index (CPU heavy: run it off the event loop)."""
    n, dim = vectors.shape
    if n < max(params.ann_min_items, 1):
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return Base(flat, labels.astype(np.int64), None)
    width = min(params.ivf_dim or dim, dim)
    vectors = np.ascontiguousarray(vectors[:, :width])
    if centroids is None or centroids.shape[1] != width or not (len(centroids) * 20 <= n <= len(centroids) * 200):
        nlist = _nlist_for(n, params)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        km = faiss.Kmeans(width, nlist, niter=12, spherical=True, seed=1, max_points_per_centroid=64)
        km.train(sample)
        assert km.centroids is not None  # set by train()
        centroids = km.centroids.copy()
    quantizer = coarse_quantizer(centroids)
    index = ivf_index(quantizer, width, len(centroids), params.ivf_codes)
    if not index.is_trained:  # the PQ codebooks (fast: 16 centroids per sub-quantizer); the lists are kept
        rng = np.random.default_rng(2)
        index.train(vectors[rng.choice(n, size=min(n, 64 * len(centroids)), replace=False)])
    index.add(vectors)
    tune(index, params)
    assert quantizer in getattr(index, "referenced_objects", [quantizer])  # faiss keeps it alive
    return Base(index, labels.astype(np.int64), centroids)
