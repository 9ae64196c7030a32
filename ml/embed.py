"""Node vectors of a trained model: user/item/query towers of the served model, scoring, export to a file.

`embed_all` yields ``(label, id, vector)`` for every node; `write_vectors` stores them in a file with the model
version. Writing the served vectors into Neo4j is the roll-out's job (`workers.recompute.rebuild`, the
``interest worker rebuild`` command): it reads the live graph, whose user ids are pseudonyms.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.errors import InvalidInput
from ml.cold import cold_bases
from ml.encoders.hetero_gnn import HeteroGNN
from ml.encoders.spectral_sage import SpectralSAGE
from ml.interaction_graph import InteractionGraph, csr_to_torch
from ml.ranking_metrics import Scorer
from ml.recency import recency_weights, weigh_by_recency
from ml.signals import blend_cold, half_life_seconds, signal_weights, weigh_by_signals
from ml.train_hetero import encode

VectorRow = tuple[str, str, np.ndarray]
"""(node label, external id, float32 vector)."""


@torch.no_grad()
def item_bases(model: SpectralSAGE, graph: InteractionGraph, item_text: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` [I, dim] for the graph's items. Items appended after training (index >= the model's table) have
    no ID row: their vector comes from their metadata alone (a new item with only metadata)."""
    if graph.num_items < model.num_items:
        raise InvalidInput(f"graph has {graph.num_items} items, the model was trained with {model.num_items}")
    meta = model.meta(graph.item_category, graph.item_brand, item_text, graph.num_items)
    x = model.item_base(None)
    if graph.num_items > model.num_items:
        x = torch.cat([x, x.new_zeros(graph.num_items - model.num_items, x.size(1))])
    return x if meta is None else x + meta


@torch.no_grad()
def served_vectors(
    model: SpectralSAGE, graph: InteractionGraph, item_text: torch.Tensor | None = None, adj: sp.spmatrix | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors [U, dim], item vectors [I, dim]); ``adj`` defaults to the graph's interactions, weighted by
    the model's recency weights of the graph's times (`ml.recency`)."""
    model.eval()
    x = item_bases(model, graph, item_text)
    meta = model.meta(graph.item_category, graph.item_brand, item_text, graph.num_items)
    if adj is None:
        r = graph.interactions()
        if model.recency_boost:  # the times only matter with a boost (sorting every edge is not free)
            r = weigh_by_recency(r, graph.interaction_times(), model.recency_boost, model.recency_scale)
        r = weigh_by_signals(
            r,
            graph.interactions(binary=False) if model.behaviour_power else None,
            graph.interaction_times() if model.decay_half_life_days else None,
            model.behaviour_power,
            half_life_seconds(model.decay_half_life_days),
        )
    else:
        r = adj
    deg = model.item_degree
    n_new = graph.num_items - model.num_items
    if n_new > 0:  # items appended after training: metadata neighbours, as at training time
        deg = torch.cat([deg, deg.new_ones(n_new)])
        if item_text is not None:
            n = model.num_items
            x_nb, deg[n:] = cold_bases(item_text[n:], item_text[:n], x[:n], model.item_degree)
            x[n:] = blend_cold(x_nb, meta[n:] if meta is not None else None, model.cold_meta_blend)
    return (csr_to_torch(r) @ model.item_in(x, deg)) * model.user_scale(), model.item_out(x, deg)


@torch.no_grad()
def user_vector(
    model: SpectralSAGE, item_index: np.ndarray, strength: np.ndarray | None, x: torch.Tensor, times: np.ndarray | None = None
) -> torch.Tensor:
    """One user's vector [dim] from their items, their behaviour ``strength`` and, for the recency and decay
    weights, their latest times (the incremental path: reads only that user's edges)."""
    n = len(item_index)
    w = signal_weights(
        np.ones(n) if strength is None else np.asarray(strength, np.float64),
        np.zeros(n) if times is None else np.asarray(times, np.float64),
        model.behaviour_power if strength is not None else 0.0,
        half_life_seconds(model.decay_half_life_days) if times is not None else 0.0,
    )
    if times is not None:
        w = w * recency_weights(times, model.recency_boost, model.recency_scale)
    row = sp.csr_matrix((w, (np.zeros(n, int), np.asarray(item_index))), shape=(1, x.size(0)))
    return model.users(csr_to_torch(row), x)[0]


@torch.no_grad()
def model_vectors(
    model: SpectralSAGE | HeteroGNN, graph: InteractionGraph, item_text: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors [U, d], item vectors [I, d]) of the served encoder or a K-layer heterogeneous one."""
    if isinstance(model, HeteroGNN):
        model.eval()
        out = encode(model, graph, model.neighbour_cap, item_text)
        return out["user"].cpu(), out["item"].cpu()
    return served_vectors(model, graph, item_text)


def served_scorer(model: SpectralSAGE | HeteroGNN, graph: InteractionGraph, item_text: torch.Tensor | None = None) -> Scorer:
    users, items = model_vectors(model, graph, item_text)
    return lambda b: users[b] @ items.T


def embed_all(
    model: SpectralSAGE | HeteroGNN,
    graph: InteractionGraph,
    item_text: torch.Tensor | None = None,
    query_text: torch.Tensor | None = None,
) -> Iterator[VectorRow]:
    """Every user, item (and query, when the served model reads text) vector with its label and external id.

    A query is embedded like an item that has only its text, so "items near this search" is one FAISS lookup.
    """
    users, items = model_vectors(model, graph, item_text)
    for i, uid in enumerate(graph.user_ids):
        yield "User", uid, users[i].numpy()
    for i, iid in enumerate(graph.item_ids):
        yield "Item", iid, items[i].numpy()
    if isinstance(model, SpectralSAGE) and query_text is not None and model.text is not None and graph.query_ids:
        with torch.no_grad():
            q = model.item_out(model.text(query_text), torch.ones(len(graph.query_ids)))
        for i, qid in enumerate(graph.query_ids):
            yield "Query", qid, q[i].numpy()


def write_vectors(path: Path, rows: Iterable[VectorRow], model_version: str) -> int:
    """Write rows to ``path`` (.npz: labels, ids, vectors [N, dim], model_version); returns the count."""
    labels, ids, vecs = [], [], []
    for label, nid, vec in rows:
        labels.append(label)
        ids.append(nid)
        vecs.append(np.asarray(vec, np.float32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        labels=np.asarray(labels),
        ids=np.asarray(ids),
        vectors=np.stack(vecs) if vecs else np.zeros((0, 0), np.float32),
        model_version=np.asarray(model_version),
    )
    return len(ids)
