"""Offline quality: the served encoder against standard baselines, measured in the same run.

Protocol (LightGCN / NGCF / GF-CF papers): rank all items for every test user, mask the user's training items,
Recall@20 and NDCG@20 averaged over test users. Every trainable model gets the same wall-clock CPU budget.

    python -m bench.quality --dataset gowalla [--budget-min 20] [--out docs/results/quality-gowalla.json]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer
from rich.console import Console

from bench._common import emit_result, rounded
from workers.baselines import fit_gfcf, fit_itemknn, fit_popularity
from workers.datasets import Split, load_gowalla
from workers.metrics import rank_metrics
from workers.models.lightgcn import LightGCN
from workers.models.mf import MF
from workers.runtime import pick_device, set_threads
from workers.embed import served_scorer
from workers.settings import ModelSettings, TrainSettings
from workers.train_bpr import fit_bpr
from workers.train_served import fit_served

SERVED = "spectral-sage"
ALL_MODELS = (SERVED, "gf-cf", "popularity", "itemknn", "mf-bpr", "lightgcn")
console = Console(stderr=True)


def _embedding_scorer(users: torch.Tensor, items: torch.Tensor):
    return lambda b: users[b] @ items.T


def run_quality(split: Split, budget_s: float, models: tuple[str, ...] = ALL_MODELS,
                model_settings: ModelSettings | None = None, train_settings: TrainSettings | None = None,
                baseline_dim: int = 64, gfcf_rank: int = 256, progress: bool = True,
                on_model: Callable[[dict], None] | None = None) -> dict:
    """Fit and evaluate ``models`` on ``split``; returns the RESULT dictionary."""
    ms = model_settings or ModelSettings()
    ts = train_settings or TrainSettings()
    r = split.train.interactions()
    # BPR baselines (Adam, d=64, one uniform negative per positive), settings chosen by validation Recall@20
    # on ceil(20%) of each user's training items within a few minutes (docs/benchmarks.md): LightGCN gains
    # most per CPU-second from large batches with a larger step; MF overfits with the published L2 1e-4.
    mf_ts = ts.model_copy(update={"batch_size": 8192, "lr": 5e-3, "max_epochs": 10_000})
    lgcn_ts = ts.model_copy(update={"batch_size": 65536, "lr": 2e-2, "max_epochs": 10_000})
    fits: dict[str, Callable[[], tuple[Callable, dict]]] = {
        "popularity": lambda: (fit_popularity(r), {}),
        "itemknn": lambda: (fit_itemknn(r), {}),
        "gf-cf": lambda: (fit_gfcf(r, k=min(gfcf_rank, *r.shape), seed=ts.seed), {}),
        "mf-bpr": lambda: _bpr(MF(r.shape[0], r.shape[1], baseline_dim), r, mf_ts, 1e-3, budget_s, progress),
        "lightgcn": lambda: _bpr(LightGCN(r.shape[0], r.shape[1], baseline_dim, 3), r, lgcn_ts, 1e-4, budget_s,
                                 progress),
        SERVED: lambda: _served(split, ms, ts, budget_s, progress),
    }
    out: dict[str, dict] = {}

    def result() -> dict:
        return {"bench": "quality", "dataset": split.name, "served": SERVED, "models": out,
                "budget_min": round(budget_s / 60, 3), "device": str(pick_device(ts.device)),
                "threads": torch.get_num_threads()}

    for name in models:
        console.print(f"[bold]{name}[/bold]: fitting")
        t0 = time.perf_counter()
        scorer, info = fits[name]()
        train_s = info.pop("train_s", time.perf_counter() - t0)
        t1 = time.perf_counter()
        metrics = rank_metrics(scorer, r, split.test, k=ts.eval_k)
        out[name] = rounded({**metrics, "train_s": train_s, "eval_s": time.perf_counter() - t1, **info})
        console.print(f"{name}: {out[name]}")
        if on_model is not None:
            on_model(result())
    return result()


def _bpr(model, r, ts: TrainSettings, reg: float, budget_s: float, progress: bool):
    users, items, info = fit_bpr(model, r, ts, budget_s, reg=reg, progress=progress)
    return _embedding_scorer(users, items), {"train_s": info["train_s"], "epochs": info["epochs"],
                                             "batch": ts.batch_size, "lr": ts.lr, "reg": reg}


def _served(split: Split, ms: ModelSettings, ts: TrainSettings, budget_s: float, progress: bool):
    fitted = fit_served(split.train, ms, ts, budget_s=budget_s, progress=progress)
    sel = next((h for h in fitted.history if "selected" in h), {})
    info = {"train_s": fitted.train_s, "dim": ms.dim, **sel.get("selected", {}),
            "selection": sel.get("tried", []),
            "fine_tune_epochs": max((h["epoch"] for h in fitted.history if h.get("best")), default=0)}
    return served_scorer(fitted.model, split.train), info


def main(dataset: str = typer.Option("gowalla", help="benchmark dataset (gowalla)"),
         data_dir: Path = typer.Option(Path("../shared/datasets"), help="folder holding the datasets"),
         budget_min: float = typer.Option(20.0, help="training budget per trainable model, minutes"),
         models: str = typer.Option(",".join(ALL_MODELS), help="comma-separated subset to run"),
         dim: int = typer.Option(1536, help="served embedding width (the start of the selection)"),
         select: bool = typer.Option(True, help="choose the served width and filter on a validation split"),
         # Off: in the last full run the fine-tune lowered validation recall from its first epoch on.
         epochs: int = typer.Option(0, help="served fine-tune epochs"),
         lr: float = typer.Option(2e-4, help="served fine-tune learning rate"),
         threads: int = typer.Option(2), out: Path = typer.Option(None, help="also write RESULT JSON here")):
    set_threads(threads)
    if dataset != "gowalla":
        raise typer.BadParameter(f"unknown dataset {dataset!r} (supported: gowalla)")
    split = load_gowalla(data_dir / "gowalla")
    ms = ModelSettings(dim=dim, select_filter=select)
    # served fine-tune: 1024 users per step against 4096 shared sampled negatives
    ts = TrainSettings(threads=threads, budget_min=budget_min, batch_size=1024, lr=lr, negatives=4096,
                       max_epochs=epochs)
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = set(names) - set(ALL_MODELS)
    if unknown:
        raise typer.BadParameter(f"unknown models {sorted(unknown)}")
    partial = None if out is None else out.with_suffix(".partial.json")

    def save_partial(res: dict) -> None:  # a long run keeps what it measured if it is stopped
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(res, indent=2) + "\n")

    emit_result(run_quality(split, budget_min * 60, names, ms, ts, on_model=save_partial), out)
    if partial is not None and partial.exists():
        partial.unlink()


if __name__ == "__main__":
    typer.run(main)
