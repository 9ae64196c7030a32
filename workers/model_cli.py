"""``interest model ...``: ``train``, ``evaluate``, ``embed-all`` of the model package (`ml`) on dataset files.

    python -m workers.model_cli train --dataset amazon-office --budget-min 5 [--model hetero-gin]
    python -m workers.model_cli evaluate --dataset amazon-office            # the LATEST checkpoint
    python -m workers.model_cli embed-all --dataset amazon-office --out var/vectors.npz

Settings come from the environment once, here (IG_EMBEDDING_DIM, IG_MODEL_*, IG_TRAIN_*, IG_WORKER_*); options
override them. Checkpoints go to IG_WORKER_OFFLINE_MODEL_DIR, never to the live service's IG_WORKER_MODEL_DIR.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from graphdb.errors import InterestError
from ml.kinds import MODEL_KINDS

# torch and PyG take seconds to import (pydantic a few tenths): each command imports what it needs, so
# `interest --help` answers at once.
if TYPE_CHECKING:
    import torch

    from ml.dataset_files import Split
    from workers.settings import WorkerSettings

app = typer.Typer(help="Train, evaluate and export the served GNN embeddings.", no_args_is_help=True)
console = Console(stderr=True)


def _load(dataset: str, ws: WorkerSettings) -> tuple[Split, torch.Tensor | None]:
    from graphdb.settings import DataSettings
    from ml.dataset_files import load_split
    from workers.training import item_texts

    split = load_split(dataset, DataSettings().dataset_dir(dataset))
    return split, item_texts(split.train, ws, progress=True)


@app.command()
def train(
    dataset: str = typer.Option("amazon-office", help="gowalla | amazon-office | amazon-hin"),
    model: str = typer.Option(
        "spectral-sage",
        help=f"{' | '.join(MODEL_KINDS)} (only the first is served; the K-layer encoders take IG_MODEL_HIDDEN / LAYERS / AGGR)",
    ),
    budget_min: float = typer.Option(None, help="training budget, minutes"),
    epochs: int = typer.Option(None, help="fine-tune epochs (0 = spectral start only)"),
    dim: int = typer.Option(None, help="embedding width"),
    model_dir: Path = typer.Option(None, help="where checkpoints go (default IG_WORKER_OFFLINE_MODEL_DIR)"),
):
    """Train an encoder on a dataset's training split, evaluate it, save a checkpoint."""
    from ml.runtime import set_threads
    from ml.settings import ModelSettings, TrainSettings
    from workers.settings import WorkerSettings
    from workers.training import train_and_save

    if model not in MODEL_KINDS:
        raise typer.BadParameter(f"unknown model {model!r} (one of {', '.join(MODEL_KINDS)})")
    ms, ts, ws = ModelSettings(), TrainSettings(), WorkerSettings()
    if dim is not None:
        ms = ms.model_copy(update={"dim": dim})
    # Offline checkpoints never share a folder (or its LATEST) with the live service's versions.
    ws = ws.model_copy(update={"model_dir": model_dir or ws.offline_model_dir})
    upd = {k: v for k, v in {"budget_min": budget_min, "max_epochs": epochs}.items() if v is not None}
    ts = ts.model_copy(update=upd)
    set_threads(ts.threads)
    split, text = _load(dataset, ws)
    out = train_and_save(split.train, split.test, ms, ts, ws, source=dataset, item_text=text, model=model)
    console.print(f"saved {out.pop('checkpoint')}")
    out["dataset"] = dataset
    typer.echo(json.dumps(out))


@app.command()
def evaluate(
    dataset: str = typer.Option("amazon-office"), checkpoint: str = typer.Option("latest"), model_dir: Path = typer.Option(None)
):
    """Recall@K / NDCG@K of a checkpoint (any model kind) on a dataset's test split."""
    from ml.checkpoint import load_checkpoint, model_kind, resolve
    from ml.embed import served_scorer
    from ml.ranking_metrics import rank_metrics
    from ml.runtime import set_threads
    from ml.settings import TrainSettings
    from workers.settings import WorkerSettings

    ws, ts = WorkerSettings(), TrainSettings()
    set_threads(ts.threads)
    ck = load_checkpoint(resolve(model_dir or ws.offline_model_dir, checkpoint))
    split, text = _load(dataset, ws)
    if split.train.item_ids != ck.item_ids:
        raise typer.BadParameter("checkpoint was trained on another item vocabulary")
    m = rank_metrics(served_scorer(ck.model, split.train, text), split.train.interactions(), split.test, k=ts.eval_k)
    typer.echo(json.dumps({"version": ck.version, "model": model_kind(ck.model), "dataset": dataset, **m}))


@app.command("embed-all")
def embed_all_cmd(
    dataset: str = typer.Option("amazon-office"),
    checkpoint: str = typer.Option("latest"),
    out: Path = typer.Option(Path("var/vectors.npz"), help="output .npz"),
    model_dir: Path = typer.Option(None),
):
    """Write every user and item vector of a dataset, with the model version, to a file.

    To write the served vectors into Neo4j use `interest worker rebuild`: it embeds the live graph (whose
    user ids are pseudonyms, unlike the dataset files' ids) and switches the servers to the version.
    """
    from ml.checkpoint import load_checkpoint, resolve
    from ml.embed import embed_all, write_vectors
    from ml.runtime import set_threads
    from ml.settings import TrainSettings
    from workers.settings import WorkerSettings

    ws = WorkerSettings()
    set_threads(TrainSettings().threads)
    ck = load_checkpoint(resolve(model_dir or ws.offline_model_dir, checkpoint))
    split, text = _load(dataset, ws)
    if split.train.item_ids != ck.item_ids:
        raise typer.BadParameter("checkpoint was trained on another item vocabulary")
    n = write_vectors(out, embed_all(ck.model, split.train, text), ck.version)
    typer.echo(json.dumps({"version": ck.version, "vectors": n, "out": str(out)}))


def main() -> None:
    try:
        app()
    except InterestError as exc:
        console.print(f"[red]{type(exc).__name__}[/red]: {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
