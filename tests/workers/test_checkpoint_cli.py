"""Checkpoint round trip and the train / evaluate / embed-all commands on a tiny gowalla-format dataset."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.baselines.training_free import fit_random
from ml.checkpoint import load_checkpoint, resolve, save_checkpoint
from ml.embed import served_vectors
from ml.encoders.hetero_gnn import HeteroGNN
from ml.ranking_metrics import rank_metrics
from ml.settings import ModelSettings, TrainSettings
from ml.train_served import fit_served
from planted_graphs import planted
from workers.model_cli import app


def test_checkpoint_round_trip(tmp_path, planted_split):
    split, _ = planted_split
    ms, ts = ModelSettings(dim=8), TrainSettings(max_epochs=0)
    fitted = fit_served(split.train, ms, ts, progress=False)
    path = save_checkpoint(tmp_path, fitted.model, split.train, ms.model_dump(), ts.model_dump(), {"recall@20": 0.5}, version="v-test")
    assert resolve(tmp_path, "latest") == path
    ck = load_checkpoint(path)
    assert ck.version == "v-test" and ck.item_ids == split.train.item_ids and ck.metrics["recall@20"] == 0.5
    assert ck.model_settings["dim"] == 8
    a_u, a_i = served_vectors(fitted.model, split.train)
    b_u, b_i = served_vectors(ck.model, split.train)
    assert torch.equal(a_u, b_u) and torch.equal(a_i, b_i)


def _write_gowalla(folder, split):
    folder.mkdir(parents=True)
    for name, m in (("train.txt", split.train.interactions()), ("test.txt", split.test)):
        with open(folder / name, "w") as fh:
            for u in range(m.shape[0]):
                items = m.indices[m.indptr[u] : m.indptr[u + 1]]
                fh.write(" ".join(map(str, [u, *sorted(items)])) + "\n")


@pytest.fixture()
def tiny_gowalla(tmp_path, monkeypatch):
    split, _ = planted(seed=7)
    _write_gowalla(tmp_path / "data" / "gowalla", split)
    monkeypatch.setenv("IG_DATASETS_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IG_WORKER_MODEL_DIR", str(tmp_path / "live-models"))
    monkeypatch.setenv("IG_WORKER_OFFLINE_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("IG_EMBEDDING_DIM", "8")
    monkeypatch.setenv("IG_TRAIN_MAX_EPOCHS", "1")
    monkeypatch.setenv("IG_TRAIN_BATCH_SIZE", "32")
    monkeypatch.setenv("IG_TRAIN_THREADS", "1")
    return split


def test_cli_train_evaluate_embed_all(tmp_path, tiny_gowalla):
    split = tiny_gowalla
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", "gowalla"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout.strip().splitlines()[-1])
    assert trained["recall@20"] > 0.3
    # offline training leaves the live service's model folder (and its LATEST) alone
    assert (tmp_path / "models" / "LATEST").read_text().strip() == trained["version"]
    assert not (tmp_path / "live-models").exists()
    res = runner.invoke(app, ["evaluate", "--dataset", "gowalla"])
    assert res.exit_code == 0, res.output
    evaluated = json.loads(res.stdout.strip().splitlines()[-1])
    assert abs(evaluated["recall@20"] - trained["recall@20"]) < 1e-9
    out = tmp_path / "vectors.npz"
    res = runner.invoke(app, ["embed-all", "--dataset", "gowalla", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with np.load(out) as z:
        assert str(z["model_version"]) == evaluated["version"]
        assert z["vectors"].shape == (split.train.num_users + split.train.num_items, 8)
        assert (z["labels"] == "User").sum() == split.train.num_users


def test_cli_hetero_encoder_checkpoint_round_trip(tmp_path, tiny_gowalla, monkeypatch):
    split = tiny_gowalla
    monkeypatch.setenv("IG_MODEL_HIDDEN", "8")
    monkeypatch.setenv("IG_TRAIN_MAX_EPOCHS", "15")
    monkeypatch.setenv("IG_TRAIN_PATIENCE", "15")
    monkeypatch.setenv("IG_TRAIN_LR", "0.03")
    monkeypatch.setenv("IG_TRAIN_LOSS", "bpr")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", "gowalla", "--model", "hetero-sage"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout.strip().splitlines()[-1])
    ck = load_checkpoint(resolve(tmp_path / "models", "latest"))
    assert ck.version == trained["version"] and ck.version.startswith("hetero-sage-")
    assert isinstance(ck.model, HeteroGNN) and ck.model.conv_name == "sage" and ck.model.hidden == 8
    assert ck.model_settings["encoder"] == "sage"
    assert json.loads((tmp_path / "models" / ck.version / "meta.json").read_text())["model"] == "hetero-sage"
    # the loaded model ranks exactly as the trained one did, and better than chance
    res = runner.invoke(app, ["evaluate", "--dataset", "gowalla"])
    assert res.exit_code == 0, res.output
    evaluated = json.loads(res.stdout.strip().splitlines()[-1])
    assert evaluated["model"] == "hetero-sage"
    assert abs(evaluated["recall@20"] - trained["recall@20"]) < 1e-9
    r = split.train.interactions()
    chance = rank_metrics(fit_random(r.shape[1]), r, split.test)["recall@20"]
    assert evaluated["recall@20"] > chance + 0.3
    out = tmp_path / "hetero.npz"
    res = runner.invoke(app, ["embed-all", "--dataset", "gowalla", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with np.load(out) as z:
        assert str(z["model_version"]) == ck.version
        assert z["vectors"].shape == (split.train.num_users + split.train.num_items, 8)


def test_cli_rejects_an_unknown_model(tiny_gowalla):
    res = CliRunner().invoke(app, ["train", "--dataset", "gowalla", "--model", "hetero-gat"])
    assert res.exit_code != 0 and "unknown model" in res.output
