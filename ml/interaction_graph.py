"""The tensor container every model, trainer and benchmark receives.

`InteractionGraph` is the one hand-over format between storage and models: the dataset loaders in
`ml.dataset_files` build it from files, and the graphdb reader builds the same object from Neo4j. Model code
never sees anything else (no Cypher, no file formats).

Conventions (all tensors on CPU; trainers move what they need):

* Node indices are dense, 0-based and per type: users ``0..num_users-1``, items ``0..num_items-1``,
  categories, brands and queries likewise. ``*_ids`` lists map index -> external id (strings), and
  ``index_of(kind, id)`` maps back. User ids are the pseudonymised ids stored in the graph.
* ``edges`` is keyed by a PyG edge type ``(src_type, relation, dst_type)``, e.g. ``("user", "clicked",
  "item")``. Every `EdgeSet` holds ``index`` [2, E] int64 (row 0 = source index, row 1 = target index),
  ``weight`` [E] float32 (event strength: click 1, cart 2, purchase 3, rating value, ...), and
  ``time`` [E] int64 unix seconds (0 when unknown). Only forward relations are stored; models add the
  reverse direction themselves.
* Interaction relations are those with ``src_type == "user"`` and ``dst_type == "item"``; `interactions()`
  merges them (weights summed) into one scipy CSR matrix [num_users, num_items].
* Item metadata: ``item_category`` [2, C] int64 (item, category) pairs, multi-label; ``item_brand`` [num_items]
  int64, -1 = unknown; ``item_text`` list of str (title + description, "" when none).
* Search queries: ``query_text`` list of str, one per ``Query`` node; edges such as ``("user", "searched",
  "query")`` and ``("query", "led_to", "item")`` live in ``edges`` like any other relation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.errors import InvalidInput

EdgeType = tuple[str, str, str]


@dataclass(frozen=True)
class EdgeSet:
    """One typed relation: ``index`` [2, E] int64, ``weight`` [E] float32, ``time`` [E] int64."""

    index: torch.Tensor
    weight: torch.Tensor
    time: torch.Tensor

    @classmethod
    def build(cls, src, dst, weight=None, time=None) -> "EdgeSet":
        src = torch.as_tensor(np.asarray(src), dtype=torch.long)
        dst = torch.as_tensor(np.asarray(dst), dtype=torch.long)
        n = src.numel()
        w = torch.ones(n) if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        t = torch.zeros(n, dtype=torch.long) if time is None else torch.as_tensor(np.asarray(time), dtype=torch.long)
        return cls(torch.stack([src, dst]), w, t)

    @property
    def num_edges(self) -> int:
        return int(self.index.size(1))

    def select(self, mask: torch.Tensor) -> "EdgeSet":
        return EdgeSet(self.index[:, mask], self.weight[mask], self.time[mask])


@dataclass
class InteractionGraph:
    """Heterogeneous user-item graph as dense-indexed tensors (see the module docstring)."""

    num_users: int
    num_items: int
    edges: dict[EdgeType, EdgeSet]
    user_ids: list[str]
    item_ids: list[str]
    num_categories: int = 0
    num_brands: int = 0
    item_category: torch.Tensor = field(default_factory=lambda: torch.empty(2, 0, dtype=torch.long))
    item_brand: torch.Tensor | None = None
    item_text: list[str] | None = None
    category_names: list[str] = field(default_factory=list)
    brand_names: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    query_text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.item_brand is None:
            self.item_brand = torch.full((self.num_items,), -1, dtype=torch.long)
        self.validate()

    # ------------------------------------------------------------------ checks and lookups
    def num_nodes(self, kind: str) -> int:
        return {
            "user": self.num_users,
            "item": self.num_items,
            "category": self.num_categories,
            "brand": self.num_brands,
            "query": len(self.query_ids),
        }[kind]

    def validate(self) -> None:
        """Raise `InvalidInput` when an index is out of range or shapes disagree."""
        if len(self.user_ids) != self.num_users or len(self.item_ids) != self.num_items:
            raise InvalidInput("user_ids/item_ids must have num_users/num_items entries")
        for et, es in self.edges.items():
            s, _, d = et
            if es.index.dim() != 2 or es.index.size(0) != 2:
                raise InvalidInput(f"{et}: index must be [2, E]")
            if es.weight.numel() != es.num_edges or es.time.numel() != es.num_edges:
                raise InvalidInput(f"{et}: weight/time length differs from edge count")
            if es.num_edges and (
                es.index.min() < 0 or es.index[0].max() >= self.num_nodes(s) or es.index[1].max() >= self.num_nodes(d)
            ):
                raise InvalidInput(f"{et}: node index out of range")
        if self.item_brand.numel() != self.num_items:
            raise InvalidInput("item_brand must have one entry per item")
        if self.item_text is not None and len(self.item_text) != self.num_items:
            raise InvalidInput("item_text must have one entry per item")

    def index_of(self, kind: str, ext_id: str) -> int:
        """External id -> dense index; `InvalidInput` when unknown."""
        vocab = self._vocab(kind)
        try:
            return vocab[str(ext_id)]
        except KeyError as exc:
            raise InvalidInput(f"unknown {kind} id {ext_id!r}") from exc

    def _vocab(self, kind: str) -> dict[str, int]:
        cache = self.__dict__.setdefault("_vocab_cache", {})
        if kind not in cache:
            ids = {"user": self.user_ids, "item": self.item_ids, "query": self.query_ids}[kind]
            cache[kind] = {s: i for i, s in enumerate(ids)}
        return cache[kind]

    # ------------------------------------------------------------------ derived views
    def interaction_types(self) -> list[EdgeType]:
        return [et for et in self.edges if et[0] == "user" and et[2] == "item"]

    def interaction_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every user->item edge of every relation: (users, items, weights, times), concatenated."""
        sets = [self.edges[et] for et in self.interaction_types()]
        if not sets:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
        return (
            np.concatenate([es.index[0].numpy() for es in sets]),
            np.concatenate([es.index[1].numpy() for es in sets]),
            np.concatenate([es.weight.numpy() for es in sets]),
            np.concatenate([es.time.numpy() for es in sets]),
        )

    def interactions(self, binary: bool = True) -> sp.csr_matrix:
        """All user->item relations merged: CSR [num_users, num_items] float32 (1.0 per pair if binary)."""
        rows, cols, vals, _ = self.interaction_edges()
        m = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(self.num_users, self.num_items))
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def interaction_times(self) -> sp.csr_matrix:
        """The latest time of each (user, item) pair, with `interactions`' sparsity pattern (int64 CSR)."""
        rows, cols, _, times = self.interaction_edges()
        return latest_per_pair(rows, cols, times, (self.num_users, self.num_items))

    def item_features(self) -> dict[str, torch.Tensor]:
        """Category pairs and brand ids, the inputs of the learned metadata embeddings."""
        return {"item_category": self.item_category, "item_brand": self.item_brand}

    def with_interactions(
        self, matrix: sp.spmatrix, relation: str | None = None, times: sp.spmatrix | None = None
    ) -> "InteractionGraph":
        """A copy whose user->item relations are replaced by one relation built from ``matrix`` (named
        ``relation``, default the graph's first interaction relation, else "interacted"), its edges timed by
        ``times`` (same sparsity pattern; default 0)."""
        if relation is None:
            types = self.interaction_types()
            relation = types[0][1] if types else "interacted"
        coo = sp.coo_matrix(matrix)
        edge_times = None
        if times is not None:
            tc = sp.coo_matrix(times)
            if not (np.array_equal(tc.row, coo.row) and np.array_equal(tc.col, coo.col)):
                raise ValueError("with_interactions: times must have the matrix's sparsity pattern")
            edge_times = tc.data
        edges = {et: es for et, es in self.edges.items() if not (et[0] == "user" and et[2] == "item")}
        edges[("user", relation, "item")] = EdgeSet.build(coo.row, coo.col, coo.data, edge_times)
        return InteractionGraph(
            num_users=matrix.shape[0],
            num_items=self.num_items,
            edges=edges,
            user_ids=self.user_ids[: matrix.shape[0]]
            if matrix.shape[0] <= self.num_users
            else self.user_ids + [f"new-{i}" for i in range(matrix.shape[0] - self.num_users)],
            item_ids=self.item_ids,
            num_categories=self.num_categories,
            num_brands=self.num_brands,
            item_category=self.item_category,
            item_brand=self.item_brand,
            item_text=self.item_text,
            category_names=self.category_names,
            brand_names=self.brand_names,
            query_ids=self.query_ids,
            query_text=self.query_text,
        )


def latest_per_pair(rows: np.ndarray, cols: np.ndarray, times: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Each (row, col) pair's largest time, as a canonical int64 CSR (the pattern scipy gives the pairs)."""
    t = np.asarray(times).astype(np.int64)
    order = np.lexsort((t, cols, rows))  # per pair, its latest time last
    r, c, t = rows[order], cols[order], t[order]
    last = np.r_[(r[1:] != r[:-1]) | (c[1:] != c[:-1]), True] if len(r) else np.zeros(0, bool)
    m = sp.csr_matrix((t[last], (r[last], c[last])), shape=shape, dtype=np.int64)
    m.sort_indices()
    return m


def csr_to_torch(m: sp.spmatrix, dtype=torch.float32) -> torch.Tensor:
    """scipy sparse -> torch sparse CSR (the fast sparse x dense matmul path on CPU)."""
    m = sp.csr_matrix(m)
    with warnings.catch_warnings():  # "sparse CSR is beta": it is the fastest CPU path, on purpose
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data).to(dtype),
            size=m.shape,
        )
