"""The item index: a FAISS base index (IVF, or flat when small) plus an exact delta with tombstones.

Items are ranked by inner product with the query, the served model's own score (its item vectors carry the
popularity prior ``d^b`` in their norm: normalising them would rank by another model). Every item gets a
shared ``LabelMap`` once and keeps it for the life of the process; the catalog's filter sets are label arrays.

The base index is never mutated after it is built (so it can be searched while a new one is built in a
thread). Upserts and deletes go to the delta (a dense matrix searched exactly) and mark the base copy as a
tombstone (``where[label] != BASE``). Compaction folds the delta into a new base built off the event loop;
changes that land meanwhile stay in the delta, detected by a per-label change counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import faiss
import numpy as np

from server.ann import Base, IndexParams, LabelMap, build_base, normalise, tune

__all__ = ["ABSENT", "BASE", "DELTA", "Base", "headroom", "IndexParams", "ItemIndex", "LabelMap", "build_base", "normalise"]

ABSENT, BASE, DELTA = 0, 1, 2

Hits = list[tuple[np.ndarray, np.ndarray]]  # per query: (labels, scores), best first


def headroom(n: int) -> int:
    """Capacity for n labels plus room for new items, so upserts rarely copy the arrays on the event loop
    (growing 1M x 64 float32 rows costs ~1 s; measured in bench.serving)."""
    return n + max(1024, n // 8)


def _grow(arr: np.ndarray, size: int, fill: Any = 0) -> np.ndarray:
    if size <= arr.shape[0]:
        return arr
    new = np.full((max(size, headroom(arr.shape[0])),) + arr.shape[1:], fill, dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


@dataclass
class _FilterState:
    ok: np.ndarray  # bool over labels: live and allowed
    cand: np.ndarray  # sorted labels where ok
    n: int
    vecs: np.ndarray | None  # vectors of cand (exact path)
    bits: np.ndarray | None  # IVF selector bitmap over base positions (large filters)


class ItemIndex:
    """One model version's item vectors. Not thread-safe: mutate and search from one thread (the event loop)."""

    def __init__(self, dim: int, model_version: str, labels: LabelMap, params: IndexParams) -> None:
        self.dim = dim
        self.model_version = model_version
        self.labels = labels
        self.params = params
        self._vec = np.zeros((0, dim), np.float32)
        self._where = np.zeros(0, np.int8)
        self._ts = np.zeros(0, np.float64)
        # per label: the served model's s_j (0 = unknown), with which sessions are embedded (workers.user_side)
        self._scale = np.zeros(0, np.float32)
        self._ver = np.zeros(0, np.uint32)
        self._base = build_base(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), params)
        self._tomb = 0
        self._live_bits: np.ndarray | None = None  # bitmap of live base positions; None: rebuild when needed
        self._dvec = np.zeros((1024, dim), np.float32)
        self._dlab = np.full(1024, -1, np.int64)
        self._dslot = np.zeros(0, np.int64)
        self._dn = 0
        self._live = 0
        self._gen = 0  # bumped by every change; invalidates cached filter states and unlocked searches
        self.stale_searches = 0  # unlocked searches done again because the index changed meanwhile
        self._fcache: dict[int, tuple[np.ndarray, int, _FilterState]] = {}

    # -- bulk load ---------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        dim: int,
        model_version: str,
        labels: LabelMap,
        params: IndexParams,
        ids: list[str],
        vectors: np.ndarray,
        updated_at: np.ndarray | None = None,
        in_scale: np.ndarray | None = None,
    ) -> ItemIndex:
        """A fresh index holding ``vectors`` in its base (CPU heavy; fine to call in a worker thread);
        ``in_scale`` [n]: each item's s_j (0 = unknown)."""
        self = cls(dim, model_version, labels, params)
        vecs = np.ascontiguousarray(vectors.reshape(len(ids), dim), dtype=np.float32)
        lab = np.fromiter((labels.assign(i) for i in ids), np.int64, len(ids))
        if len(np.unique(lab)) != len(lab):
            raise ValueError("duplicate item ids")
        self._ensure(headroom(len(labels)))
        self._vec[lab] = vecs
        self._where[lab] = BASE
        self._ts[lab] = updated_at if updated_at is not None else 0.0
        self._scale[lab] = in_scale if in_scale is not None else 0.0
        self._base = build_base(vecs, lab, params)
        self._live = len(lab)
        return self

    def _ensure(self, n: int) -> None:
        self._vec = _grow(self._vec, n)
        self._where = _grow(self._where, n)
        self._ts = _grow(self._ts, n)
        self._scale = _grow(self._scale, n)
        self._ver = _grow(self._ver, n)
        self._dslot = _grow(self._dslot, n, -1)

    # -- introspection -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live

    @property
    def delta_rows(self) -> int:
        return self._dn

    @property
    def tombstones(self) -> int:
        return self._tomb

    @property
    def base_size(self) -> int:
        return len(self._base.labels)

    def label_of(self, item_id: str) -> int | None:
        label = self.labels.get(item_id)
        if label is None or label >= len(self._where) or self._where[label] == ABSENT:
            return None
        return label

    def vector(self, label: int) -> tuple[np.ndarray, float]:
        return self._vec[label].copy(), float(self._ts[label])

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        """The vectors of ``labels`` (rows, copied in one gather)."""
        return self._vec[np.asarray(labels, np.int64)]

    def live_labels(self, item_ids: Sequence[str]) -> list[int]:
        """``label_of`` of each of ``item_ids``, -1 for an item without a vector here, in one pass."""
        get, where, n = self.labels.get, self._where, len(self._where)
        out = []
        for item_id in item_ids:
            label = get(item_id)
            out.append(-1 if label is None or label >= n or where[label] == ABSENT else label)
        return out

    def user_side(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(served vectors [n, dim], in_scale [n]) of live labels: what a session is embedded from."""
        return self._vec[labels], self._scale[labels]  # fancy indexing copies

    def live_mask(self) -> np.ndarray:
        return self._where > ABSENT

    # -- mutation ------------------------------------------------------------------------------------------
    def upsert(self, item_id: str, vector: np.ndarray, ts: float = 0.0, in_scale: float = 0.0) -> None:
        label = self.labels.assign(item_id)
        self._ensure(label + 1)
        vec = np.asarray(vector, np.float32).reshape(self.dim)
        where = self._where[label]
        if where == BASE:
            self._bury(label)
        if where == DELTA:
            slot = self._dslot[label]
        else:
            slot = self._dn
            if slot >= len(self._dlab):
                self._dvec = _grow(self._dvec, slot + 1)
                self._dlab = _grow(self._dlab, slot + 1, -1)
            self._dn += 1
            self._dslot[label] = slot
            self._dlab[slot] = label
        if where == ABSENT:
            self._live += 1
        self._dvec[slot] = vec
        self._vec[label] = vec
        self._where[label] = DELTA
        self._ts[label] = ts
        self._scale[label] = in_scale
        self._ver[label] += 1
        self._gen += 1

    def delete(self, item_id: str) -> bool:
        label = self.label_of(item_id)
        if label is None:
            return False
        if self._where[label] == BASE:
            self._bury(label)
        else:
            self._dlab[self._dslot[label]] = -1
            self._dslot[label] = -1
        self._where[label] = ABSENT
        self._ver[label] += 1
        self._gen += 1
        self._live -= 1
        return True

    def _bury(self, label: int) -> None:
        """The base copy of ``label`` becomes a tombstone (its bit in the live bitmap too, if it is built)."""
        self._tomb += 1
        if self._live_bits is not None:
            pos = int(self._base.pos_of()[label])
            self._live_bits[pos >> 3] &= np.uint8(~(1 << (pos & 7)) & 0xFF)

    def _base_live_bits(self) -> np.ndarray:
        """Packed bitmap over base positions, set where the base copy is live; kept up to date by ``_bury``
        once built (building it is O(items): once per base)."""
        if self._live_bits is None:
            labels = self._base.labels
            self._live_bits = np.packbits(self._where[labels] == BASE, bitorder="little")
        return self._live_bits

    # -- search --------------------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        unlocked: Callable[[], ContextManager[Any]] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k (labels, scores) per query (nq, dim) by inner product, best first.

        ``allowed``: bool mask over labels (None = every item); ``exclude``: labels never returned.
        ``unlocked``: for a caller holding the lock that guards this index against changes, a context that
        releases it. An unfiltered search then runs FAISS over the base (immutable) without the lock, so other
        threads' work overlaps it; if the index changed meanwhile (an upsert, delete or compaction: tombstones
        and the live bitmap the search read may be stale), it searches again, holding the lock.
        """
        excl = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        if allowed is not None:
            fs = self._filter_state(allowed)
            if fs.vecs is not None:
                return self._exact(queries, k, fs, excl)
            ok, bits = fs.ok, fs.bits
            assert bits is not None  # a filter not answered exactly has its bitmap
            if len(excl):
                ok = ok.copy()
                ok[excl[excl < len(ok)]] = False
                bits = self._clear_bits(bits, excl)
            base = self._base_selected(queries, k, fs.n, bits)
            return self._merge(base, self._delta(queries, k, ok, excl, _floors(base, k)), k)
        while True:
            gen = self._gen
            kf = k + len(excl) + self._tomb
            if kf <= self.params.overfetch_max or len(self._base.labels) == 0:
                base = self._base_overfetch(queries, kf, excl, unlocked=unlocked)
            else:  # tombstones skipped inside FAISS: the cost stays flat however many items were re-embedded
                base = self._base_overfetch(queries, k + len(excl), excl, self._base_live_bits(), unlocked)
            if self._gen == gen:
                if self._dn == 0:  # no delta rows: the base's answer as it is
                    return [(lab[:k], sc[:k]) for lab, sc in base]
                return self._merge(base, self._delta(queries, k, None, excl, _floors(base, k)), k)
            self.stale_searches += 1
            unlocked = None

    def _filter_state(self, allowed: np.ndarray) -> _FilterState:
        """What a filter mask needs at query time, cached per mask object until the index changes.

        Small filters keep a contiguous copy of their vectors (exact search = one matrix product; of the leading
        components when the IVF holds fewer, the best ``refine`` then re-ranked at the full width: at 1,024 components
        a 20,000-item filter served 295 calls/s at full width, against 1,933 unfiltered, bench.serving); large
        ones keep the IVF selector bitmap.
        Both are rebuilt after any upsert, delete or compaction.
        """
        hit = self._fcache.get(id(allowed))
        if hit is not None and hit[0] is allowed and hit[1] == self._gen:
            return hit[2]
        n = min(len(allowed), len(self._where))
        ok = np.zeros(len(self._where), bool)
        ok[:n] = allowed[:n] & (self._where[:n] > ABSENT)
        cand = np.flatnonzero(ok)
        if len(cand) <= self.params.exact_filter_max or not self._base.is_ivf:
            # the leading components the IVF holds, when it holds fewer: `_exact` re-ranks its best at full width
            width = self._base.width if self._base.is_ivf else self.dim
            state = _FilterState(ok, cand, len(cand), vecs=np.ascontiguousarray(self._vec[cand, :width]), bits=None)
        else:
            labels = self._base.labels
            ok_pos = ok[labels] & (self._where[labels] == BASE)
            state = _FilterState(ok, cand, len(cand), vecs=None, bits=np.packbits(ok_pos, bitorder="little"))
        if len(self._fcache) >= 16:
            self._fcache.pop(next(iter(self._fcache)))
        self._fcache[id(allowed)] = (allowed, self._gen, state)  # holding `allowed` keeps its id unique
        return state

    def _clear_bits(self, bits: np.ndarray, excl: np.ndarray) -> np.ndarray:
        pos_of = self._base.pos_of()
        excl = excl[excl < len(pos_of)]
        pos = pos_of[excl]
        pos = pos[pos >= 0]
        if len(pos) == 0:
            return bits
        bits = bits.copy()
        np.bitwise_and.at(bits, pos >> 3, ~(np.uint8(1) << (pos & 7).astype(np.uint8)))
        return bits

    def _exact(self, queries: np.ndarray, k: int, fs: _FilterState, excl: np.ndarray) -> Hits:
        if fs.n == 0 or fs.vecs is None:
            return _no_hits(queries)
        width = fs.vecs.shape[1]
        scores = fs.vecs @ queries[:, :width].T  # (ncand, nq)
        if len(excl):
            pos = np.minimum(np.searchsorted(fs.cand, excl), fs.n - 1)
            scores[pos[fs.cand[pos] == excl]] = -np.inf
        kc = k if width == self.dim else max(k, self.params.refine)
        out = []
        for j in range(len(queries)):
            labs, sc = _topk(fs.cand, scores[:, j], kc)
            fin = np.isfinite(sc)
            out.append((labs[fin], sc[fin]))
        return out if width == self.dim else [_topk(lab, self._scores(q, lab), k) for q, (lab, _) in zip(queries, out)]

    def _base_overfetch(
        self,
        queries: np.ndarray,
        kf: int,
        excl: np.ndarray,
        live_bits: np.ndarray | None = None,
        unlocked: Callable[[], ContextManager[Any]] | None = None,
    ) -> Hits:
        """The base's best ``kf`` per query less tombstones and exclusions; with ``live_bits``, FAISS skips the
        tombstones itself (an id selector). With ``unlocked``, FAISS and the re-rank run under it (``search``)."""
        base = self._base
        if len(base.labels) == 0:
            return _no_hits(queries)
        params = None
        if live_bits is not None:
            sel = faiss.IDSelectorBitmap(len(base.labels), faiss.swig_ptr(live_bits))
            # FAISS's stubs know neither the keyword constructors nor the IVF's attributes
            params = (
                faiss.SearchParametersIVF(sel=sel, nprobe=base.index.nprobe)  # type: ignore[call-arg, attr-defined]
                if base.is_ivf
                else faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
            )
        if unlocked is None:
            return self._overfetched(base, queries, kf, excl, live_bits, params)
        # The exact re-rank runs unlocked too (a third of a call's search): `search` retries if anything changed.
        with unlocked():  # `base` and `live_bits` stay referenced here, whatever changes meanwhile
            return self._overfetched(base, queries, kf, excl, live_bits, params)

    def _overfetched(
        self, base: Base, queries: np.ndarray, kf: int, excl: np.ndarray, live_bits: np.ndarray | None, params: Any
    ) -> Hits:
        q, kc = self._candidates(base, queries, kf)
        dist, pos = base.index.search(q, min(kc, len(base.labels)), params=params)
        refined = _refined(base, self.dim)
        tombs = self._tomb and live_bits is None  # without tombstones every base copy is live: skip the lookups
        out: list[Any] = []  # per query: its candidates' labels (re-ranked below) or (labels, scores)
        for d, p in zip(dist, pos):
            if len(p) and p.min() < 0:  # fewer hits than asked (FAISS pads with -1): the mask only then
                keep = p >= 0
                p, d = p[keep], d[keep]
            lab = base.labels[p]
            if len(excl) or tombs:
                valid = _not_in(lab, excl)
                if tombs:
                    valid &= self._where[lab] == BASE
                lab = lab[valid]
                if not refined:  # a re-rank replaces the approximate scores: no need to select them
                    d = d[valid]
            out.append(lab if refined else (lab, d))
        if refined:
            return [_topk(lab, self._scores(q, lab), kf) for q, lab in zip(queries, out)]
        return out

    def _candidates(self, base: Base, queries: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """(queries as the base holds them, how many to fetch): an IVF over the leading components, or over
        codes, fetches ``params.refine`` candidates (at least ``k``) for `_refine` to re-rank exactly."""
        if not _refined(base, self.dim):
            return queries, k
        return np.ascontiguousarray(queries[:, : base.width]), max(k, self.params.refine)

    def _refine(self, base: Base, queries: np.ndarray, results: Hits, k: int) -> Hits:
        """Exact full-width scores of the candidates (live base copies: ``_vec`` holds them), best ``k`` kept."""
        if not _refined(base, self.dim):
            return results
        return [_topk(lab, self._scores(q, lab), k) for q, (lab, _) in zip(queries, results)]

    def _scores(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Full-width inner products of ``query`` with the vectors of ``labels``, read in place by FAISS
        (numpy's gather copies the rows first: 137 against 70 us for 300 rows of 1024 at 1M items)."""
        out = np.empty(len(labels), np.float32)
        if len(labels):
            q = np.ascontiguousarray(query, np.float32)
            lab = np.ascontiguousarray(labels, np.int64)
            vec = self._vec  # held here: an upsert may grow (replace) the array while an unlocked search reads it
            # not in FAISS's stubs
            faiss.fvec_inner_products_by_idx(  # type: ignore[attr-defined]
                faiss.swig_ptr(out),
                faiss.swig_ptr(q),
                faiss.swig_ptr(vec),
                faiss.swig_ptr(lab),
                self.dim,
                1,
                len(lab),
            )
        return out

    def _base_selected(self, queries: np.ndarray, k: int, n_ok: int, bits: np.ndarray) -> Hits:
        """The base's best k per query among the positions set in ``bits`` (``n_ok`` of the live items)."""
        base = self._base
        if len(base.labels) == 0:
            return _no_hits(queries)
        sel = faiss.IDSelectorBitmap(len(base.labels), faiss.swig_ptr(bits))
        selectivity = max(n_ok / max(self._live, 1), 1e-6)
        boost = min(1.0 / selectivity, self.params.filter_probe_boost_max)
        nprobe = int(min(base.index.nlist, max(self.params.nprobe, self.params.nprobe * boost)))  # type: ignore[attr-defined]
        sp = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
        q, kc = self._candidates(base, queries, k)
        dist, pos = base.index.search(q, min(kc, len(base.labels)), params=sp)
        del bits  # the selector reads it during search only
        return self._refine(base, queries, [(base.labels[p[p >= 0]], d[p >= 0]) for d, p in zip(dist, pos)], k)

    def _delta(
        self, queries: np.ndarray, k: int, ok_labels: np.ndarray | None, excl: np.ndarray, floors: np.ndarray | None = None
    ) -> Hits:
        """Top-k of the delta per query. ``floors``: per query, the score a delta row must reach to enter the
        answer (the base's k-th); when no row reaches it, the delta's own top-k and the merge are skipped, which
        saves most of a 200-row delta's cost per query (bench.serving)."""
        if self._dn == 0:
            return _no_hits(queries)
        scores = self._dvec[: self._dn] @ queries.T
        if floors is not None and not (scores.max(axis=0) >= floors).any():  # >=: ties break by label
            return _no_hits(queries)
        lab = self._dlab[: self._dn]
        valid = lab >= 0
        if ok_labels is not None:
            valid &= ok_labels[np.where(valid, lab, 0)]
        elif len(excl):
            valid &= _not_in(lab, excl)
        scores[~valid] = -np.inf
        out = []
        for j in range(len(queries)):
            labs, sc = _topk(lab, scores[:, j], k)
            fin = np.isfinite(sc)
            out.append((labs[fin], sc[fin]))
        return out

    @staticmethod
    def _merge(a: Hits, b: Hits, k: int) -> Hits:
        return [
            _topk(np.concatenate([la, lb]), np.concatenate([sa, sb]), k) if len(lb) else (la[:k], sa[:k])
            for (la, sa), (lb, sb) in zip(a, b)
        ]

    # -- compaction ----------------------------------------------------------------------------------------
    def compaction_input(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(labels, vectors, change counters, IVF centroids) to build a new base from, copied on the loop."""
        live = np.flatnonzero(self._where > ABSENT)
        return live, self._vec[live].copy(), self._ver[live].copy(), self._base.centroids

    def apply_compaction(self, base: Base, versions: np.ndarray) -> None:
        """Installs a base built from ``compaction_input``; changes since then stay in the delta."""
        labels = base.labels
        same = (self._ver[labels] == versions) & (self._where[labels] > ABSENT)
        self._where[labels[same]] = BASE
        self._tomb = int(len(labels) - same.sum())
        self._base = base
        self._live_bits = None
        self._gen += 1
        self._rebuild_delta()

    def _rebuild_delta(self) -> None:
        lab = np.flatnonzero(self._where == DELTA)
        cap = max(1024, 2 * len(lab))
        self._dvec = np.zeros((cap, self.dim), np.float32)
        self._dlab = np.full(cap, -1, np.int64)
        self._dslot[:] = -1
        self._dvec[: len(lab)] = self._vec[lab]
        self._dlab[: len(lab)] = lab
        self._dslot[lab] = np.arange(len(lab))
        self._dn = len(lab)

    # -- snapshots -------------------------------------------------------------------------------------------
    def state(self, base: Base | None = None) -> dict[str, np.ndarray]:
        """Arrays describing the index with ``base`` (default: the current one), serialised separately.

        May run in a thread while the loop applies deltas: the snapshot then holds some changes newer than
        its stream position, which is harmless because replaying upserts and deletes is idempotent.
        """
        base = base or self._base
        n = len(self.labels)
        return {
            "vec": self._vec[:n].copy(),
            "where": self._where[:n].copy(),
            "ts": self._ts[:n].copy(),
            "in_scale": self._scale[:n].copy(),
            "base_labels": base.labels,
            "centroids": base.centroids if base.centroids is not None else np.zeros((0, self.dim), np.float32),
        }

    @property
    def base(self) -> Base:
        return self._base

    @classmethod
    def from_state(
        cls, dim: int, model_version: str, labels: LabelMap, params: IndexParams, state: dict[str, np.ndarray], base_index: faiss.Index
    ) -> ItemIndex:
        self = cls(dim, model_version, labels, params)
        n = len(state["where"])
        if n >= headroom(len(labels)) and state["vec"].dtype == np.float32:  # sized for it: adopt, not copy
            self._vec, self._where, self._ts = state["vec"], state["where"].astype(np.int8, copy=False), state["ts"]
            self._scale = state["in_scale"].astype(np.float32, copy=False)
            self._ver = np.zeros(n, np.uint32)
            self._dslot = np.full(n, -1, np.int64)
        else:
            self._ensure(headroom(n))
            self._vec[:n] = state["vec"]
            self._where[:n] = state["where"]
            self._ts[:n] = state["ts"]
            self._scale[:n] = state["in_scale"]
        cents = state["centroids"]
        self._base = Base(base_index, state["base_labels"].astype(np.int64), cents if len(cents) else None)
        if self._base.is_ivf:
            tune(faiss.extract_index_ivf(base_index), params)
        self._tomb = int((self._where[self._base.labels] != BASE).sum())
        self._live = int((self._where > ABSENT).sum())
        self._rebuild_delta()
        return self


def _refined(base: Base, dim: int) -> bool:
    """Whether the base's scores are approximate (fewer components or codes) and need the exact re-rank."""
    return base.width < dim or base.codes != "flat"


def _no_hits(queries: np.ndarray) -> Hits:
    return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]


def _floors(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Per query, the k-th best score of ``results`` (-inf when it has fewer than k)."""
    return np.array([float(sc[k - 1]) if len(sc) >= k else -np.inf for _, sc in results])


def _not_in(labels: np.ndarray, excl: np.ndarray) -> np.ndarray:
    """Bool mask: labels not in excl. A few comparisons beat np.isin (~15 us) for the usual 0-4 exclusions
    (the query item itself); with a 200-row delta np.isin was a third of a query's cost (bench.serving)."""
    if len(excl) > 4:
        return ~np.isin(labels, excl)
    if len(excl) == 0:
        return np.ones(len(labels), bool)
    first, *rest = excl.tolist()
    keep: np.ndarray = labels != first
    for e in rest:
        keep &= labels != e
    return keep


def _topk(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k by score (ties by label, for determinism)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        labels, scores = labels[part], scores[part]
    order = np.lexsort((labels, -scores))
    return labels[order], scores[order]
