"""The served path, in process: the server's `Engine` at its default settings ranks the model's vectors.

`bench.quality` and `bench.cold_start` score the served model through this, not through an offline scorer: the
vectors are the ones the worker writes (`ml.embed.served_vectors`, equal to a full recompute on the live
graph), the engine indexes them as the server does (FAISS at the default `ServerSettings`: flat below
``IG_SERVER_ANN_MIN_ITEMS`` items, IVF above), and each test user's top K comes from
``Engine.recommend_for_user``, the call behind the RecommendForUser RPC, with their training items excluded
through the request's own ``exclude_item_ids``, and with ranking rules (``server.rules``) when asked: the engine then
holds the catalogue's facets (`graph_facets`) as a server loads them from Neo4j.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from graphdb.catalog import ItemFacets
from graphdb.pseudonym import pseudonymise
from graphdb.settings import GraphSettings
from graphdb.subgraph import EdgeRow
from ml.interaction_graph import InteractionGraph
from ml.ranking_metrics import top_k_metrics
from server.engine import Engine, ItemFilter
from server.rules import RankingRules
from server.settings import ServerSettings


def served_engine(item_ids: Sequence[str], item_vectors: np.ndarray, version: str, settings: ServerSettings | None = None) -> Engine:
    """An engine serving ``item_vectors`` (no Neo4j, no Redis: nothing else differs from a server's)."""
    settings = settings or ServerSettings(snapshot_dir=None, redis_url=None)
    graph = GraphSettings(embedding_dim=int(item_vectors.shape[1]))
    engine = Engine(settings, graph, None)
    engine.install(engine.load_vectors(list(item_ids), np.asarray(item_vectors, np.float32), version))
    return engine


def graph_facets(graph: InteractionGraph) -> list[ItemFacets]:
    """Each item's facets as ``graphdb.catalog`` reads them: categories with their ancestors (the datasets' names
    are paths "A > B > C", every level listed), the direct ones (those no other of the item's categories lies
    under), and the brand."""
    cats: list[list[str]] = [[] for _ in range(graph.num_items)]
    if graph.item_category is not None:
        for item, c in graph.item_category.T.tolist():
            cats[item].append(graph.category_names[c])
    brands = graph.item_brand.tolist() if graph.item_brand is not None else [-1] * graph.num_items
    out = []
    for j, item_id in enumerate(graph.item_ids):
        mine = sorted(set(cats[j]))
        direct = tuple(c for c in mine if not any(d.startswith(c + " > ") for d in mine))
        brand = (graph.brand_names[brands[j]],) if brands[j] >= 0 else ()
        out.append(ItemFacets(item_id, tuple(mine), brand, direct))
    return out


def index_config(engine: Engine) -> dict:
    """What ranks: the FAISS index kind and parameters the engine chose for its catalogue."""
    serving = engine.serving
    base = serving.index.base
    out = {"dim": engine.dim, "index": f"ivf-{base.codes}" if base.is_ivf else "flat", "metric": "inner_product"}
    if base.is_ivf:
        refined = base.width < engine.dim or base.codes != "flat"
        out.update(
            nlist=int(base.index.nlist),
            nprobe=int(base.index.nprobe),
            ivf_dim=base.width,
            refine=serving.index.params.refine if refined else 0,
        )
    return out


def engine_top_k(
    engine: Engine,
    user_ids: Sequence[str],
    user_vectors: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[str]] | None = None,
    progress: bool = False,
    rules: RankingRules | None = None,
) -> list[list[str]]:
    """Each user's top ``k`` item ids from ``Engine.recommend_for_user`` (their vector as the delta stream
    delivers it, keyed by pseudonym), excluding ``exclude[u]``."""
    serving = engine.serving
    key = engine.graph.pseudonym_key.get_secret_value()
    out = []
    for n, uid in enumerate(tqdm(user_ids, desc="engine", disable=not progress, leave=False)):
        pseudonym = pseudonymise(key, uid)
        serving.users.put(pseudonym, user_vectors[n], 0.0)
        flt = ItemFilter(exclude_item_ids=tuple(exclude[n]) if exclude is not None else ())
        answer = engine.recommend_for_user(uid, k, flt, include_seen=True, rules=rules)
        out.append([item for item, _ in answer.items])
        serving.users.delete(pseudonym)  # one user at a time: the cache stays small
    return out


def recent_source(graph: InteractionGraph, users: Sequence[int], keys: Sequence[str]) -> dict[str, tuple[list[EdgeRow], int]]:
    """The edges of ``users`` (graph rows) as the server reads a shopper's recent edges from Neo4j
    (``graphdb.recent``: one row per item and behaviour type, newest first, and their number of distinct items),
    keyed by ``keys`` (the users' pseudonyms): what ``Engine.recent_source`` serves the short-term interest from."""
    key_of = dict(zip((int(u) for u in users), keys))
    rows, cols, weights, times = graph.interaction_edges()
    wanted = np.zeros(graph.num_users, bool)
    wanted[list(key_of)] = True
    keep = wanted[rows]
    rows, cols, weights, times = rows[keep], cols[keep], weights[keep], times[keep]
    order = np.lexsort((cols, -times, rows))  # per user: newest first, ties by item
    out: dict[str, tuple[list[EdgeRow], int]] = {}
    bounds = np.r_[0, np.flatnonzero(np.diff(rows[order])) + 1, len(order)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        p = key_of[int(rows[idx[0]])]
        edges = [EdgeRow(p, graph.item_ids[c], float(w), float(t)) for c, w, t in zip(cols[idx], weights[idx], times[idx])]
        out[p] = (edges, len(set(cols[idx].tolist())))
    return out


def use_recent(engine: Engine, source: dict[str, tuple[list[EdgeRow], int]] | None) -> None:
    """The engine reads shoppers' recent edges from ``source`` (``recent_source``), or has none (short-term off)."""
    engine.recent_source = None if source is None else (lambda pseudonym: source.get(pseudonym, ([], 0)))


def engine_metrics(
    engine: Engine,
    user_vectors: np.ndarray,
    item_ids: Sequence[str],
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int = 20,
    progress: bool = True,
    rules: RankingRules | None = None,
    recent: InteractionGraph | None = None,
) -> dict[str, float]:
    """Recall@k / NDCG@k of the engine's answers for every user with test items (training items excluded).

    ``recent``: the training graph, whose edges the engine reads as a server reads a shopper's recent edges from
    Neo4j (the short-term interest, ``server.short_term``); without it the engine has none (short-term off)."""
    train, test = sp.csr_matrix(train), sp.csr_matrix(test, copy=True)
    test.eliminate_zeros()  # an explicit zero is no test item (and would make its row a test user)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    key = engine.graph.pseudonym_key.get_secret_value()
    use_recent(engine, None if recent is None else recent_source(recent, users, [pseudonymise(key, f"u{u}") for u in users]))
    ids = np.asarray(item_ids, dtype=object)
    exclude = [ids[train.indices[train.indptr[u] : train.indptr[u + 1]]].tolist() for u in users]
    tops = engine_top_k(engine, [f"u{u}" for u in users], user_vectors[users], k, exclude, progress, rules)
    col = {iid: j for j, iid in enumerate(item_ids)}
    top = np.full((len(users), k), -1, np.int64)
    for n, items in enumerate(tops):
        top[n, : len(items)] = [col[i] for i in items]
    return top_k_metrics(top, test[users], k)
