"""Ablation of the signals the graph holds beside its interactions, each on and off in one run, through the
served path (`ml.signals`).

Every variant is the served configuration (the settings' defaults, validation selection included) with one
signal changed, trained by the live training (`fit_served`) and ranked by the server's engine on the
leave-last-out split (`bench.quality._served`, the same protocol as the quality table):

* ``behaviour``: a user's items weigh their behaviour strength ** p (amazon-hin: the rating 1-5);
* ``decay``: a half-life decay of a user's items by their latest time (amazon-hin: real timestamps);
* ``warm-meta``: the share of the metadata vector (text, category, brand) in trained items' bases;
* ``searches``: the datasets hold no queries, so this signal cannot be measured here (reported as such);
* ``cold-meta`` (amazon-office, the `bench.cold_start` protocol: 20 % of the items held out as new): the share of a
  new item's own metadata vector (category, brand, text) beside its text neighbours' mean.

A variant whose input the dataset lacks (no ratings, no real times, no text) is listed under ``not_applicable``
with the reason, not run. ``combined`` is the served configuration with every signal's best value that beat the
served row, so "keep what helps" is measured in the same run.

    python -m bench.signals --dataset amazon-hin [--out docs/results/signals-amazon-hin.json]
    python -m bench.signals --dataset amazon-office [--out docs/results/signals-amazon-office.json]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from bench._common import emit_result, rounded
from bench.cold_start import run_cold_start
from bench.quality import DATASETS, _served
from graphdb.dataset_paths import find_dataset
from ml.dataset_files import Split, load_amazon_office, load_split
from ml.runtime import pick_device, set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from workers.settings import WorkerSettings

console = Console(stderr=True)

# Each signal: the setting it moves and the values tried, 0 = off (the served default's own value is its row).
SIGNALS: dict[str, tuple[str, tuple[float, ...]]] = {
    "behaviour": ("behaviour_power", (0.0, 0.5, 1.0, 2.0)),
    "decay": ("decay_half_life_days", (0.0, 30.0, 180.0, 365.0, 730.0, 1460.0)),
    "warm-meta": ("warm_meta_blend", (0.0, 0.1, 0.3)),
}
COLD_BLENDS = (0.0, 0.25, 0.5)


def not_applicable(split: Split) -> dict[str, str]:
    """Signals whose input this split lacks, with the reason."""
    g = split.train
    out = {}
    strength = g.interactions(binary=False)
    if strength.nnz == 0 or float(strength.data.min()) == float(strength.data.max()):
        out["behaviour"] = "every pair has the same strength (one behaviour type, no ratings)"
    t = g.interaction_times()
    if t.nnz == 0 or float(t.data.max()) < 1e8:  # positions or no times, not unix seconds
        out["decay"] = "no real timestamps (the order only; the rank-based recency weights cover it)"
    if not g.query_ids:
        out["searches"] = "the dataset holds no search queries"
    if not (g.item_text or g.num_categories or g.num_brands):
        out["warm-meta"] = "no item metadata"
    return out


def run_signals(
    split: Split, ms: ModelSettings, ts: TrainSettings, progress: bool = False, cold: bool = True, data_dir: Path | None = None
) -> dict:
    k = ts.eval_k
    skip = not_applicable(split)
    variants: dict[str, dict] = {}

    def measure(name: str, update: dict) -> dict:
        console.print(f"[bold]{name}[/bold] {update}")
        t0 = time.perf_counter()
        _, info = _served(split, ms.model_copy(update=update), ts, progress)
        m = info["metrics"]
        cfg = info["config"]
        row = rounded(
            {
                **m,
                "settings": update,
                "selected": {
                    key: cfg[key]
                    for key in ("filter_power", "user_norm", "item_norm", "recency_boost", "recency_scale", "warm_meta_blend")
                },
                "s": time.perf_counter() - t0,
            }
        )
        console.print(f"{name}: recall@{k} {m[f'recall@{k}']:.4f} ndcg@{k} {m[f'ndcg@{k}']:.4f}")
        variants[name] = row
        return row

    served = measure("served", {})
    best: dict[str, tuple[str, float, float]] = {}  # signal -> (setting, value, recall)
    for signal, (setting, values) in SIGNALS.items():
        if signal in skip:
            continue
        for value in values:
            if value == getattr(ms, setting) and not getattr(ms, f"{setting}_grid", ()):
                continue  # the served row (a setting the selection chooses gets its held row)
            # the value held: a setting the selection chooses (the warm blend) is not chosen again in its rows
            row = measure(
                f"{signal}={value:g}", {setting: value, f"{setting}_grid": ()} if hasattr(ms, f"{setting}_grid") else {setting: value}
            )
            rec = row[f"recall@{k}"]
            if rec > served[f"recall@{k}"] and rec > best.get(signal, ("", 0.0, -1.0))[2]:
                best[signal] = (setting, value, rec)
    if len(best) > 1:  # one helpful signal alone is already its own row
        measure(
            "combined",
            {k: v for setting, value, _ in best.values() for k, v in ((setting, value), (f"{setting}_grid", ())) if hasattr(ms, k)},
        )
    for name, row in variants.items():
        row.update(rounded({f"{m}_vs_served": row[m] / served[m] for m in (f"recall@{k}", f"ndcg@{k}") if served[m]}))
    out: dict = {
        "bench": "signals",
        "dataset": split.name,
        "served_path": "engine",
        "k": k,
        "variants": variants,
        "helped": {signal: {setting: value} for signal, (setting, value, _) in best.items()},
        "not_applicable": skip,
        "users": split.train.num_users,
        "items": split.train.num_items,
        "test_users": int((np.diff(split.test.indptr) > 0).sum()),
        "device": str(pick_device(ts.device)),
    }
    if cold and split.name == "amazon-office":
        out["cold"] = cold_rows(ms, ts, progress, data_dir)
    elif cold:
        skip["cold-meta"] = "no item text: new items already take their category and brand vector alone"
    return out


def cold_rows(ms: ModelSettings, ts: TrainSettings, progress: bool, data_dir: Path | None = None) -> dict:
    """`bench.cold_start` (amazon-office, 20 % of the items new) with the new items' metadata share on and off."""
    graph, _ = load_amazon_office(find_dataset("amazon-office", data_dir))
    text = TextEncoder(WorkerSettings().text_cache_dir).encode(graph.item_text, progress=progress)
    rows = {}
    for gamma in COLD_BLENDS:
        console.print(f"[bold]cold-meta={gamma:g}[/bold]")
        res = run_cold_start(graph, text, ms.model_copy(update={"cold_meta_blend": gamma}), ts, progress=progress)
        rows[f"cold-meta={gamma:g}"] = {**res["models"]["spectral-sage"], "settings": {"cold_meta_blend": gamma}}
        console.print(f"cold-meta={gamma:g}: {rows[f'cold-meta={gamma:g}']}")
    base = rows["cold-meta=0"]
    for row in rows.values():
        row.update(rounded({f"{m}_vs_off": row[m] / base[m] for m in (f"recall@{ts.eval_k}", f"ndcg@{ts.eval_k}") if base[m]}))
    return {"protocol": "bench.cold_start (20 % of the items held out as new)", "rows": rows}


def main(
    dataset: str = typer.Option("amazon-hin", help="amazon-hin | amazon-office (leave last out)"),
    data_dir: Path = typer.Option(None, help="folder holding the datasets (default: IG_DATASETS_DIR, ../shared/datasets, then data/)"),
    threads: int = typer.Option(2),
    cold: bool = typer.Option(True, help="also the new items' metadata share (amazon-office)"),
    out: Path = typer.Option(None, help="also write RESULT JSON here"),
):
    """The served configuration comes from the environment, as the live service's does (IG_MODEL_*, IG_TRAIN_*);
    each variant changes one signal's setting from there."""
    set_threads(threads)
    if dataset not in DATASETS or dataset == "gowalla":
        raise typer.BadParameter(f"dataset {dataset!r}: amazon-hin or amazon-office (gowalla has no times or metadata)")
    split = load_split(dataset, find_dataset(dataset, data_dir))
    emit_result(run_signals(split, ModelSettings(), TrainSettings(threads=threads), cold=cold, data_dir=data_dir), out)


if __name__ == "__main__":
    typer.run(main)
