"""Quality of what is served against standard baselines and library peers, measured in the same run.

Protocol (LightGCN / NGCF / GF-CF papers): rank all items for every test user, mask the user's training items,
Recall@20 and NDCG@20 averaged over test users.

The served row is the live configuration: the settings' defaults (IG_EMBEDDING_DIM and IG_MODEL_*, the same
training the ``interest.train`` task runs, validation selection included), its vectors as the worker writes
them, ranked by the server's engine at its default index settings (`bench._served`), each user's training items
excluded through the request. The peers: popularity, GF-CF (ours: no library has it), `implicit`'s ALS, BPR,
item-kNN (cosine) and BM25 item-item, and LightGCN (BPR, a wall-clock budget). The K-layer heterogeneous encoders
(``hetero-sage``, ``hetero-gcn``, ``hetero-gin``: every relation in both directions, item text / categories /
brands, time-decayed weights) train with `ml.train_hetero.fit_hetero` in LightGCN's budget and are ranked
through the same engine as the served row (they are not the served model: their rows say ``"served": false``).

    python -m bench.quality --dataset gowalla [--budget-min 20] [--out docs/results/quality-gowalla.json]
    python -m bench.quality --dataset amazon-office   # or amazon-hin: leave-last-out splits
    python -m bench.quality --dataset amazon-office --models spectral-sage --max-per-category 2 --max-per-brand 2
    python -m bench.quality --dataset amazon-office --models spectral-sage,hetero-sage,hetero-gcn,hetero-gin --budget-min 5

With ``--max-per-category`` / ``--max-per-brand`` the served row is also ranked under those ranking rules (the
RecommendForUser caps, over the catalogue's direct categories and brands), in the same run on the same vectors:
``with_rules`` in its row, beside the figures without.
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
from bench._implicit import fit_implicit
from bench._served import engine_metrics, graph_facets, index_config, served_engine
from bench.baselines.lightgcn import LightGCN
from bench.baselines.train_bpr import fit_bpr
from bench.baselines.training_free import fit_gfcf, fit_popularity
from graphdb.dataset_paths import find_dataset
from ml.dataset_files import Split, load_split
from ml.embed import model_vectors, served_vectors
from ml.ranking_metrics import rank_metrics
from ml.runtime import pick_device, set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.train_hetero import fit_hetero
from ml.train_served import fit_served
from server.rules import RankingRules
from workers.settings import WorkerSettings
from workers.training import hetero_item_init, item_texts

SERVED = "spectral-sage"
IMPLICIT = ("als", "bpr", "itemknn", "bm25")
HETERO = ("hetero-sage", "hetero-gcn", "hetero-gin")
ALL_MODELS = (SERVED, "gf-cf", "popularity", *IMPLICIT, "lightgcn", *HETERO)
DATASETS = ("gowalla", "amazon-office", "amazon-hin")
console = Console(stderr=True)
# Training of the K-layer encoders in this bench (see run_quality); everything else from TrainSettings. Patience 15:
# with 3 (TrainSettings' 2 + 1) validation noise stopped all three on amazon-office after ~9 s of a 5-minute
# budget while the loss still fell (docs/benchmarks.md).
HETERO_TRAIN = {"batch_size": 1024, "lr": 5e-3, "max_epochs": 10_000, "patience": 15}
HETERO_STEPS = 32


def _embedding_scorer(users: torch.Tensor, items: torch.Tensor):
    return lambda b: users[b] @ items.T


def run_quality(
    split: Split,
    budget_s: float,
    models: tuple[str, ...] = ALL_MODELS,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
    baseline_dim: int = 64,
    gfcf_rank: int = 256,
    progress: bool = True,
    on_model: Callable[[dict], None] | None = None,
    rules: RankingRules | None = None,
) -> dict:
    """Fit and evaluate ``models`` on ``split``; returns the RESULT dictionary."""
    ms = model_settings or ModelSettings()
    ts = train_settings or TrainSettings()
    r = split.train.interactions()
    # LightGCN (Adam, d=64, one uniform negative per positive): large batches with a larger step gained most per
    # CPU-second in validation runs (docs/benchmarks.md).
    lgcn_ts = ts.model_copy(update={"batch_size": 65536, "lr": 2e-2, "max_epochs": 10_000})
    # K-layer encoders: a full-graph pass per step, so at most HETERO_STEPS steps an epoch (1,024 pairs a step on the
    # Amazon sets: 1,024 and 1,423; ~6,000 on gowalla) and a larger step; the budget or the validation's patience ends them
    het_batch = max(HETERO_TRAIN["batch_size"], -(-int(0.3 * (1 - ts.val_fraction) * r.nnz) // HETERO_STEPS))
    het_ts = ts.model_copy(update={**HETERO_TRAIN, "batch_size": het_batch})
    fits: dict[str, Callable[[], tuple[Callable | None, dict]]] = {
        "popularity": lambda: (fit_popularity(r), {}),
        "gf-cf": lambda: (fit_gfcf(r, k=min(gfcf_rank, *r.shape), seed=ts.seed), {}),
        "lightgcn": lambda: _bpr(LightGCN(r.shape[0], r.shape[1], baseline_dim, 3), r, lgcn_ts, 1e-4, budget_s, progress),
        SERVED: lambda: _served(split, ms, ts, progress, rules),
        **{name: (lambda name=name: _hetero(name, split, ms, het_ts, budget_s, progress, ts)) for name in HETERO},
        **{name: (lambda name=name: _implicit(name, r, ts)) for name in IMPLICIT},
    }
    out: dict[str, dict] = {}
    config: dict = {}

    def result() -> dict:
        return {
            "bench": "quality",
            "dataset": split.name,
            "served": SERVED,
            "served_path": "engine",
            "config": config,
            "models": out,
            "budget_min": round(budget_s / 60, 3),
            "device": str(pick_device(ts.device)),
            "threads": torch.get_num_threads(),
        }

    for name in models:
        console.print(f"[bold]{name}[/bold]: fitting")
        t0 = time.perf_counter()
        scorer, info = fits[name]()
        train_s = info.pop("train_s", time.perf_counter() - t0)
        t1 = time.perf_counter()
        # the served row comes measured through the engine; every other model is scored offline
        metrics = info.pop("metrics") if scorer is None else rank_metrics(scorer, r, split.test, k=ts.eval_k)
        if name == SERVED:
            config.update(info.pop("config"))
        out[name] = rounded({**metrics, "train_s": train_s, "eval_s": time.perf_counter() - t1, **info})
        console.print(f"{name}: {out[name]}")
        if on_model is not None:
            on_model(result())
    return result()


def _hetero(name: str, split: Split, ms: ModelSettings, ts: TrainSettings, budget_s: float, progress: bool, served_ts: TrainSettings):
    """Fit a K-layer heterogeneous encoder in ``budget_s``, then rank its vectors through the served engine, as the
    served row is ranked (same index settings, training items excluded through the request). With
    IG_MODEL_HETERO_ID_INIT=served its ID rows start from the served model's item vectors, fitted first as the worker
    fits them (``served_ts``), inside the budget and counted in its ``train_s``."""
    text = item_texts(split.train, WorkerSettings(), progress, ts.device)
    hms = ms.model_copy(update={"encoder": name.removeprefix("hetero-")})
    t0 = time.perf_counter()
    init = hetero_item_init(split.train, hms, served_ts, text, progress)
    init_s = time.perf_counter() - t0
    fitted = fit_hetero(split.train, hms, ts, item_text=text, budget_s=budget_s - init_s, progress=progress, item_init=init)
    t1 = time.perf_counter()
    users, items = model_vectors(fitted.model, split.train, text)
    engine = served_engine(split.train.item_ids, items.numpy(), f"bench-quality-{name}")
    metrics = engine_metrics(
        engine, users.numpy(), split.train.item_ids, split.train.interactions(), split.test, k=ts.eval_k, progress=progress
    )
    m = fitted.model
    best = max(fitted.history, key=lambda h: h["val"]) if fitted.history else {}
    return None, {
        "train_s": init_s + fitted.train_s,
        "init_s": init_s,
        "engine_s": time.perf_counter() - t1,
        "metrics": metrics,
        "served": False,
        "epochs": len(fitted.history),
        "best_epoch": best.get("epoch"),
        "val_recall": best.get("val"),
        "hidden": m.hidden,
        "layers": len(m.convs),
        "neighbour_cap": m.neighbour_cap,
        "half_life_days": m.hparams()["half_life_days"],
        "weighted": m.weighted,
        "item_ids": m.item_id is not None,
        "id_init": hms.hetero_id_init if m.item_id is not None else None,
        "supervision": ts.hetero_supervision,
        "recency": [m.recency_boost, m.recency_scale],
        "gin_aggr": m.gin_aggr if m.conv_name == "gin" else None,
        "text": text is not None,
        "relations": sorted("/".join(et) for et in m.edge_types),
        "loss": ts.loss,
        "lr": ts.lr,
        "batch": ts.batch_size,
        "device": str(m.device),
    }


def _bpr(model, r, ts: TrainSettings, reg: float, budget_s: float, progress: bool):
    users, items, info = fit_bpr(model, r, ts, budget_s, reg=reg, progress=progress)
    return _embedding_scorer(users, items), {
        "train_s": info["train_s"],
        "epochs": info["epochs"],
        "batch": ts.batch_size,
        "lr": ts.lr,
        "reg": reg,
    }


def _implicit(name: str, r, ts: TrainSettings):
    t0 = time.perf_counter()
    scorer, cfg = fit_implicit(name, r, ts.threads, ts.seed)
    return scorer, {"train_s": time.perf_counter() - t0, "library": "implicit", **cfg}


def _served(split: Split, ms: ModelSettings, ts: TrainSettings, progress: bool, rules: RankingRules | None = None):
    """Fit with the live training, then rank through the engine (see the module docstring). Item titles are read
    as the live training reads them (sentence vectors) when the dataset has them."""
    text = item_texts(split.train, WorkerSettings(), progress)
    fitted = fit_served(split.train, ms, ts, item_text=text, progress=progress)
    t1 = time.perf_counter()
    users, items = served_vectors(fitted.model, split.train, text)
    engine = served_engine(split.train.item_ids, items.numpy(), "bench-quality")
    train = split.train.interactions()
    metrics = engine_metrics(engine, users.numpy(), split.train.item_ids, train, split.test, ts.eval_k, progress, recent=split.train)
    engine_s = time.perf_counter() - t1
    # issue 16 ablation: the same engine and vectors without the short-term interest (server.short_term)
    off = engine_metrics(engine, users.numpy(), split.train.item_ids, train, split.test, ts.eval_k, progress)
    short_term_off = rounded({**off, **{f"{m}_on_vs_off": metrics[m] / off[m] for m in off if off[m]}})
    with_rules = None
    if rules is not None:  # the same engine and vectors, the catalogue's facets loaded, each request with the rules
        engine.update_facets(graph_facets(split.train))
        t2 = time.perf_counter()
        ruled = engine_metrics(engine, users.numpy(), split.train.item_ids, train, split.test, ts.eval_k, progress, rules, split.train)
        ruled_s = time.perf_counter() - t2
        with_rules = {
            "rules": {"max_per_category": rules.max_per_category, "max_per_brand": rules.max_per_brand},
            **rounded(
                {
                    **ruled,
                    **{f"{m}_vs_none": ruled[m] / metrics[m] for m in metrics if metrics[m]},
                    "engine_s": ruled_s,
                    "engine_s_vs_none": ruled_s / engine_s,
                }
            ),
        }
    sel = next((h for h in fitted.history if "selected" in h), {})
    m = fitted.model
    config = {
        "model": SERVED,
        "dim": m.dim,
        "filter_power": sel.get("selected", {}).get("filter_power", ms.filter_power),
        "user_norm": m.user_norm,
        "item_norm": m.item_norm,
        "recency_boost": m.recency_boost,
        "recency_scale": m.recency_scale,
        # ml.signals (the warm blend may be chosen on validation)
        "behaviour_power": m.behaviour_power,
        "decay_half_life_days": m.decay_half_life_days,
        "warm_meta_blend": sel.get("selected", {}).get("warm_meta_blend", ms.warm_meta_blend),
        "cold_meta_blend": m.cold_meta_blend,
        "select_filter": ms.select_filter,
        "val_split": ts.val_split,
        "select_max_settings": ms.select_max_settings,
        "served_epochs": ts.served_epochs,
        "index": index_config(engine),
        "short_term_share": engine.settings.short_term_share,
        "short_term_window_s": engine.settings.short_term_window_s,
    }
    return None, {
        "train_s": fitted.train_s,
        "engine_s": engine_s,
        "metrics": metrics,
        "config": config,
        "selection": sel.get("tried", []),
        "short_term_off": short_term_off,
        **({"with_rules": with_rules} if with_rules else {}),
    }


def main(
    dataset: str = typer.Option("gowalla", help="gowalla (its split) | amazon-office | amazon-hin (leave last out)"),
    data_dir: Path = typer.Option(None, help="folder holding the datasets (default: IG_DATASETS_DIR, ../shared/datasets, then data/)"),
    budget_min: float = typer.Option(20.0, help="wall-clock budget of LightGCN and of each K-layer encoder, minutes"),
    models: str = typer.Option(",".join(ALL_MODELS), help="comma-separated subset to run"),
    threads: int = typer.Option(2),
    out: Path = typer.Option(None, help="also write RESULT JSON here"),
    max_per_category: int = typer.Option(0, help="also rank the served row with this cap per direct category (0 = not)"),
    max_per_brand: int = typer.Option(0, help="also rank the served row with this cap per brand (0 = not)"),
):
    """The served row takes every setting from the environment, as the live service does (IG_EMBEDDING_DIM,
    IG_MODEL_*, IG_TRAIN_*): change the served configuration there, not here."""
    set_threads(threads)
    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
    split = load_split(dataset, find_dataset(dataset, data_dir))
    ms, ts = ModelSettings(), TrainSettings(threads=threads, budget_min=budget_min)
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = set(names) - set(ALL_MODELS)
    if unknown:
        raise typer.BadParameter(f"unknown models {sorted(unknown)}")
    partial = None if out is None else out.with_suffix(".partial.json")

    def save_partial(res: dict) -> None:  # a long run keeps what it measured if it is stopped
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(res, indent=2) + "\n")

    rules = RankingRules(max_per_category, max_per_brand) if max_per_category or max_per_brand else None
    emit_result(run_quality(split, budget_min * 60, names, ms, ts, on_model=save_partial, rules=rules), out)
    if partial is not None and partial.exists():
        partial.unlink()


if __name__ == "__main__":
    typer.run(main)
