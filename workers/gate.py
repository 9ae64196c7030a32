"""The quality gate of a retrain: a new version is rolled out only if it answers at least as well as the active
one, both measured on the same split through the served encoding (`workers.live`, as the recompute embeds).

The split holds out the user-item pairs first met after the active version's data ends (``data_until``, recorded
with every version trained on the live graph), for shoppers who had a history before it. Neither model has seen
those pairs, so the comparison is fair to both; a split on each shopper's latest items would favour the active
version, which was trained on most of them. The candidate is trained on everything else, and it is what rolls
out when it passes: the version measured is the version served.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.subgraph import EdgeRow, ItemRow
from ml.ranking_metrics import rank_metrics
from workers.hetero_live import HeteroLive
from workers.live import LiveEncoder, capped_neighbours, latest_times
from workers.user_side import pair_strengths


@dataclass(frozen=True)
class GateSplit:
    train: list[EdgeRow]
    held: dict[str, set[str]]  # user -> items first met after ``cut``
    cut: float


def data_until(edges: Sequence[EdgeRow]) -> float:
    """When the data a model is trained on ends: the latest first meeting of a user and an item."""
    return max((e.first for e in edges), default=0.0)


def split_after(edges: Sequence[EdgeRow], cut: float) -> GateSplit:
    """Hold out the pairs first met after ``cut`` (every behaviour of the pair), for users with a pair before."""
    first: dict[tuple[str, str], float] = {}
    for e in edges:
        key = (e.user, e.item)
        first[key] = min(first.get(key, np.inf), e.first)
    known_users = {u for (u, _), t in first.items() if t <= cut}
    held: dict[str, set[str]] = defaultdict(set)
    for (u, i), t in first.items():
        if t > cut and u in known_users:
            held[u].add(i)
    train = [e for e in edges if e.item not in held.get(e.user, ())]
    return GateSplit(train, dict(held), cut)


def served_recall(enc: LiveEncoder | HeteroLive, split: GateSplit, items: Sequence[ItemRow], k: int = 20) -> float:
    """Recall@k over the held-out users, ranking every item of the graph with ``enc``'s vectors: items as the
    recompute embeds them (known to the version, or new from their metadata and first shoppers), users from their training edges
    (capped, recency-weighted). Training items are masked, as the server leaves bought items out."""
    if isinstance(enc, HeteroLive):
        return _hetero_recall(enc, split, items, k)
    ids = [r.id for r in items]
    col = {iid: j for j, iid in enumerate(ids)}
    known = [r.id for r in items if enc.is_fixed(r.id)]
    new_rows = [r for r in items if not enc.is_fixed(r.id)]
    table = torch.zeros(len(ids), enc.dim, device=enc.device)
    if known:
        table[[col[i] for i in known]] = enc.known_vectors(known)
    new_out, new_in = enc.new_items(new_rows, split.train)
    if new_rows:
        table[[col[r.id] for r in new_rows]] = new_out
    users = sorted(split.held)
    if not users:
        return 0.0
    neighbours = capped_neighbours(split.train, enc.user_cap, enc.half_life_days)
    u = enc.users(
        neighbours,
        users,
        dict(zip([r.id for r in new_rows], new_in)),
        latest_times(split.train),
        pair_strengths(split.train, enc.behaviour_weights),
    )
    row = {user: n for n, user in enumerate(users)}
    seen = {(e.user, e.item) for e in split.train if e.user in row}
    train = _matrix([(row[a], col[b]) for a, b in seen], len(users), len(ids))
    test = _matrix([(row[a], col[b]) for a, held in split.held.items() for b in held], len(users), len(ids))
    u, table = u.cpu(), table.cpu()
    return rank_metrics(lambda b: u[b] @ table.T, train, test, k=k)[f"recall@{k}"]


def _matrix(pairs: list[tuple[int, int]], rows: int, cols: int) -> sp.csr_matrix:
    rc = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return sp.csr_matrix((np.ones(len(rc), np.float32), (rc[:, 0], rc[:, 1])), shape=(rows, cols))


def _hetero_recall(enc: HeteroLive, split: GateSplit, items: Sequence[ItemRow], k: int) -> float:
    """`served_recall` of a K-layer encoder: every vector from one forward over the training edges."""
    users = sorted(split.held)
    if not users:
        return 0.0
    enc_out = enc.encode(users, split.train, items)
    u_vecs, i_vecs = enc_out.users, enc_out.items
    ids = sorted(i_vecs)
    col = {iid: j for j, iid in enumerate(ids)}
    row = {user: n for n, user in enumerate(users)}
    u = torch.from_numpy(np.stack([u_vecs[x] for x in users]))
    table = torch.from_numpy(np.stack([i_vecs[i] for i in ids]))
    seen = {(e.user, e.item) for e in split.train if e.user in row}
    train = _matrix([(row[a], col[b]) for a, b in seen], len(users), len(ids))
    test = _matrix([(row[a], col[b]) for a, held in split.held.items() for b in held if b in col], len(users), len(ids))
    return rank_metrics(lambda b: u[b] @ table.T, train, test, k=k)[f"recall@{k}"]
