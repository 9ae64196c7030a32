"""The offline text model, and tiny runs of the quality and cold-start benchmarks."""

import numpy as np

from bench.cold_start import run_cold_start
from bench.quality import ALL_MODELS, HETERO, SERVED, run_quality
from ml.settings import ModelSettings, TrainSettings
from ml.text import TEXT_DIM, TextEncoder
from planted_graphs import cluster_text, planted


def test_text_encoder_offline_and_cached(tmp_path):
    enc = TextEncoder(tmp_path)
    v = enc.encode(["blue ballpoint pens, pack of 12", "black gel pens 10 pack", "laser printer toner"])
    assert v.shape == (3, TEXT_DIM)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
    again = TextEncoder(tmp_path)  # a new encoder reads the cache and never loads the model
    assert np.allclose(again.encode(["laser printer toner"]).numpy(), v[2].numpy(), atol=1e-6)
    assert again._model is None


def test_quality_bench_tiny():
    split, _ = planted(seed=8)
    res = run_quality(
        split,
        budget_s=3,
        models=ALL_MODELS,
        model_settings=ModelSettings(dim=16),
        train_settings=TrainSettings(served_epochs=1, batch_size=32),
        baseline_dim=8,
        gfcf_rank=8,
        progress=False,
    )
    assert res["bench"] == "quality" and res["served"] == SERVED and set(res["models"]) == set(ALL_MODELS)
    assert res["served_path"] == "engine" and res["config"]["dim"] == 16 and res["config"]["index"]["dim"] == 16
    m = res["models"]
    assert all({"recall@20", "ndcg@20", "train_s"} <= set(v) for v in m.values())
    assert m[SERVED]["recall@20"] > m["popularity"]["recall@20"]
    for name in HETERO:  # the K-layer encoders: ranked by the engine, not the served model, every relation both ways
        assert m[name]["served"] is False and m[name]["epochs"] >= 1 and m[name]["text"] is True
        assert {"user/clicked/item", "item/rev_clicked/user", "item/in_category/category"} <= set(m[name]["relations"])


def test_cold_start_bench_tiny():
    split, cluster = planted(seed=9, items_per=25)
    res = run_cold_start(
        split.train,
        cluster_text(cluster),
        ModelSettings(dim=16),
        TrainSettings(served_epochs=1, batch_size=32, eval_k=5),
        fraction=0.2,
        progress=False,
    )
    m = res["models"]
    assert res["bench"] == "cold_start" and res["cold_items"] == 20 and res["served_path"] == "engine"
    assert m["spectral-sage"]["recall@5"] > m["random"]["recall@5"]
    assert m["spectral-sage"]["recall@5"] > m["category-popularity"]["recall@5"]


def test_text_cache_write_is_atomic(tmp_path, monkeypatch):
    """A crash while the cache is written leaves the previous cache readable (and later encodes work)."""
    enc = TextEncoder(tmp_path)
    first = enc.encode(["blue ballpoint pens, pack of 12"]).numpy()
    real_savez = np.savez

    def crash_mid_write(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")  # what a killed process leaves behind
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez", crash_mid_write)
    try:
        enc.encode(["laser printer toner"])
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(np, "savez", real_savez)
    later = TextEncoder(tmp_path)  # a later recompute's encoder
    assert np.allclose(later.encode(["blue ballpoint pens, pack of 12"]).numpy(), first, atol=1e-6)
    assert later._model is None  # served from the intact cache
    assert later.encode(["laser printer toner"]).shape == (1, TEXT_DIM)
    assert [p.name for p in tmp_path.iterdir()] == ["minilm-l6-v2.npz"]  # no temporary file left
