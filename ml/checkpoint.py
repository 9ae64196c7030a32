"""Model checkpoints: weights + model version, settings, id vocabularies and metrics, in a model directory.

Layout: ``<model_dir>/<version>/checkpoint.pt`` (loaded with ``weights_only=True``: tensors and plain
containers only) and ``meta.json`` (the same metadata, readable without torch); ``<model_dir>/LATEST`` names the
newest version. The model directory lives outside git (``var/models`` by default).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graphdb.errors import InvalidInput, NotFound
from ml.encoders.hetero_gnn import HeteroGNN
from ml.encoders.spectral_sage import SpectralSAGE
from ml.files import atomic_write
from ml.interaction_graph import InteractionGraph
from ml.kinds import MODEL_KINDS

FORMAT = 1
EmbeddingModel = SpectralSAGE | HeteroGNN


def model_kind(model: EmbeddingModel) -> str:
    return f"hetero-{model.conv_name}" if isinstance(model, HeteroGNN) else "spectral-sage"


@dataclass
class Checkpoint:
    model: EmbeddingModel
    version: str
    model_settings: dict
    train_settings: dict
    user_ids: list[str]
    item_ids: list[str]
    category_names: list[str]
    brand_names: list[str]
    metrics: dict
    item_text: torch.Tensor | None = None
    # Training-time item metadata ([2, C] (item, category) pairs, [I] brand or -1): a known item's vector is
    # fixed for its model version, so serving recomputes it exactly from these.
    item_category: torch.Tensor | None = None
    item_brand: torch.Tensor | None = None
    # [I] bool: items with interactions in the training graph (the others were embedded from metadata alone).
    item_trained: torch.Tensor | None = None
    # [dim]: per-dimension scale from the mean base of an item's shoppers' other items to its own base, fitted
    # on the trained items (`ml.fold.fit_fold_scale`); the fold-in of new items applies it.
    fold_scale: torch.Tensor | None = None
    # The users' ego-graph encoder trained with this version (`ml.train_ego`): {"hparams", "state_dict"}.
    ego: dict | None = None

    def item_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.item_ids)}


def new_version(name: str = "spectral-sage") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    salt = hashlib.sha1(f"{stamp}{time.perf_counter_ns()}".encode()).hexdigest()[:6]
    return f"{name}-{stamp}-{salt}"


def save_checkpoint(
    model_dir: Path,
    model: EmbeddingModel,
    graph: InteractionGraph,
    model_settings: dict,
    train_settings: dict,
    metrics: dict,
    item_text: torch.Tensor | None = None,
    version: str | None = None,
    fold_scale: torch.Tensor | None = None,
    ego: dict | None = None,
) -> Path:
    """Write a checkpoint (the model kind and its constructor arguments included) and point LATEST at it;
    returns the checkpoint file."""
    kind = model_kind(model)
    version = version or new_version(kind)
    folder = Path(model_dir) / version
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": version,
        "model": kind,
        "hparams": model.hparams(),
        "model_settings": _plain(model_settings),
        "train_settings": _plain(train_settings),
        "metrics": _plain(metrics),
    }
    payload = {
        **meta,
        "state_dict": model.state_dict(),
        "user_ids": list(graph.user_ids),
        "item_ids": list(graph.item_ids),
        "category_names": list(graph.category_names),
        "brand_names": list(graph.brand_names),
        "item_text": item_text,
        "item_category": graph.item_category,
        "item_brand": graph.item_brand,
        "item_trained": torch.from_numpy(np.asarray(graph.interactions().sum(0)).ravel() > 0),
        "fold_scale": fold_scale,
        "ego": ego,
    }
    path = folder / "checkpoint.pt"
    # Write then rename: a process killed mid-save leaves no half checkpoint behind a valid name.
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    atomic_write(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    atomic_write(Path(model_dir) / "LATEST", lambda tmp: tmp.write_text(version + "\n"))
    return path


def resolve(model_dir: Path, ref: str = "latest") -> Path:
    """``latest``, a version name or a file path -> checkpoint file (`NotFound` when absent)."""
    p = Path(ref)
    if p.is_file():
        return p
    if ref == "latest":
        latest = Path(model_dir) / "LATEST"
        if not latest.exists():
            raise NotFound(f"no checkpoint in {model_dir}")
        ref = latest.read_text().strip()
    path = Path(model_dir) / ref / "checkpoint.pt"
    if not path.exists():
        raise NotFound(f"checkpoint {ref!r} not found in {model_dir}")
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    data = torch.load(path, map_location="cpu", weights_only=True)
    kind = data.get("model", "spectral-sage")
    if kind not in MODEL_KINDS:
        raise InvalidInput(f"checkpoint {path} holds an unknown model kind {kind!r}")
    model = (SpectralSAGE if kind == "spectral-sage" else HeteroGNN)(**data["hparams"])
    model.load_state_dict(data["state_dict"])
    model.eval()
    return Checkpoint(
        model,
        data["version"],
        data["model_settings"],
        data["train_settings"],
        data["user_ids"],
        data["item_ids"],
        data["category_names"],
        data["brand_names"],
        data["metrics"],
        data.get("item_text"),
        data.get("item_category"),
        data.get("item_brand"),
        data.get("item_trained"),
        data.get("fold_scale"),
        data.get("ego"),
    )


def _plain(obj):
    """JSON-safe copy (paths and other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))
