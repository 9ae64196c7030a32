"""The one training path: fit, evaluate when a test split is given, save a checkpoint.

Used by the CLI (dataset files; any model kind) and by the ``train`` task (the live graph; the served
`spectral-sage`); both hand over the same tensors.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch

from graphdb.errors import InvalidInput
from ml.checkpoint import save_checkpoint
from ml.embed import served_scorer, served_vectors
from ml.encoders.spectral_sage import SpectralSAGE
from ml.fold import fit_fold_scale
from ml.interaction_graph import InteractionGraph
from ml.kinds import MODEL_KINDS
from ml.ranking_metrics import rank_metrics
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from ml.train_ego import fit_served_ego
from ml.train_hetero import fit_hetero
from ml.train_served import fit_served
from workers.settings import WorkerSettings


def item_texts(graph: InteractionGraph, ws: WorkerSettings, progress: bool = False, device: str = "auto") -> torch.Tensor | None:
    """Cached sentence vectors of the item texts (None when the graph has no text), encoded on ``device``
    (`ml.runtime.pick_device`: CUDA when present), returned on the CPU."""
    if not graph.item_text:
        return None
    return TextEncoder(ws.text_cache_dir, device=device).encode(graph.item_text, progress=progress)


def hetero_item_init(
    graph: InteractionGraph, ms: ModelSettings, ts: TrainSettings, text: torch.Tensor | None, progress: bool = False
) -> torch.Tensor | None:
    """The item vectors that start a K-layer encoder's ID rows (`ml.train_hetero.init_item_ids`): the served
    model's, fitted here on the same graph, with ``ms.hetero_id_init == "served"``; else None (random rows)."""
    if ms.hetero_id_init != "served":
        return None
    fitted = fit_served(graph, ms, ts, item_text=text, progress=progress)
    return served_vectors(fitted.model, graph, text)[1]


def train_and_save(
    graph: InteractionGraph,
    test: sp.csr_matrix | None,
    ms: ModelSettings,
    ts: TrainSettings,
    ws: WorkerSettings,
    *,
    source: str,
    progress: bool = True,
    item_text: torch.Tensor | None = None,
    version: str | None = None,
    model: str = "spectral-sage",
    facts: dict | None = None,
) -> dict:
    """Fit a ``model`` (a `ml.kinds.MODEL_KINDS` name) on ``graph``, score ``test`` (held-out
    interactions) when given, save; returns version and metrics. ``facts`` are recorded with the metrics (the
    live graph's ``data_until``, which the quality gate reads)."""
    text = item_text if item_text is not None else item_texts(graph, ws, progress, ts.device)
    if model == "spectral-sage":
        fitted = fit_served(graph, ms, ts, item_text=text, progress=progress)
    elif model in MODEL_KINDS:
        ms = ms.model_copy(update={"encoder": model.removeprefix("hetero-")})  # the checkpoint records it
        init = hetero_item_init(graph, ms, ts, text, progress)
        fitted = fit_hetero(graph, ms, ts, item_text=text, progress=progress, item_init=init)
    else:
        raise InvalidInput(f"unknown model {model!r} (one of {', '.join(MODEL_KINDS)})")
    metrics: dict = {}
    if test is not None:
        metrics = rank_metrics(served_scorer(fitted.model, graph, text), graph.interactions(), test, k=ts.eval_k)
    metrics.update(
        {
            "source": source,
            "train_s": round(fitted.train_s, 2),
            "history": fitted.history,
            "users": graph.num_users,
            "items": graph.num_items,
            **(facts or {}),
        }
    )
    fold_scale = ego = None
    if isinstance(fitted.model, SpectralSAGE):
        with torch.no_grad():
            meta = fitted.model.meta(graph.item_category, graph.item_brand, text, graph.num_items)
            fold_scale = fit_fold_scale(graph.interactions(), fitted.model.item_base(meta))
        if ms.ego_steps > 0:  # the users' ego-graph encoder of this version (SimilarUsers)
            ego, ego_info = fit_served_ego(fitted.model, graph, text, ms, ts)
            metrics["ego"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in ego_info.items()}
    path = save_checkpoint(
        ws.model_dir,
        fitted.model,
        graph,
        ms.model_dump(),
        ts.model_dump(),
        metrics,
        item_text=text,
        version=version,
        fold_scale=fold_scale,
        ego=ego,
    )
    return {"version": path.parent.name, "checkpoint": str(path), **{k: v for k, v in metrics.items() if k != "history"}}
