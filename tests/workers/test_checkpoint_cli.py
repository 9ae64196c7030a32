"""Checkpoint round trip and the train / evaluate / embed-all commands on a tiny gowalla-format dataset."""

import json

import numpy as np
import torch
from typer.testing import CliRunner

from planted_graphs import planted
from workers.checkpoint import load_checkpoint, resolve, save_checkpoint
from workers.cli import app
from workers.embed import served_vectors, write_back
from workers.settings import ModelSettings, TrainSettings
from workers.train_served import fit_served


def test_checkpoint_round_trip(tmp_path, planted_split):
    split, _ = planted_split
    ms, ts = ModelSettings(dim=8), TrainSettings(max_epochs=0)
    fitted = fit_served(split.train, ms, ts, progress=False)
    path = save_checkpoint(tmp_path, fitted.model, split.train, ms.model_dump(), ts.model_dump(),
                           {"recall@20": 0.5}, version="v-test")
    assert resolve(tmp_path, "latest") == path
    ck = load_checkpoint(path)
    assert ck.version == "v-test" and ck.item_ids == split.train.item_ids and ck.metrics["recall@20"] == 0.5
    assert ck.model_settings["dim"] == 8
    a_u, a_i = served_vectors(fitted.model, split.train)
    b_u, b_i = served_vectors(ck.model, split.train)
    assert torch.equal(a_u, b_u) and torch.equal(a_i, b_i)


def test_write_back_hook_batches_everything(planted_split):
    split, _ = planted_split
    got = []
    rows = [("Item", str(i), np.zeros(3, np.float32)) for i in range(12)]
    n = write_back(rows, lambda batch, version: got.append((len(batch), version)), "v1", batch_size=5)
    assert n == 12 and got == [(5, "v1"), (5, "v1"), (2, "v1")]


def _write_gowalla(folder, split):
    folder.mkdir(parents=True)
    for name, m in (("train.txt", split.train.interactions()), ("test.txt", split.test)):
        with open(folder / name, "w") as fh:
            for u in range(m.shape[0]):
                items = m.indices[m.indptr[u]:m.indptr[u + 1]]
                fh.write(" ".join(map(str, [u, *sorted(items)])) + "\n")


def test_cli_train_evaluate_embed_all(tmp_path, monkeypatch):
    split, _ = planted(seed=7)
    _write_gowalla(tmp_path / "data" / "gowalla", split)
    monkeypatch.setenv("IG_WORKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IG_WORKER_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("IG_MODEL_DIM", "8")
    monkeypatch.setenv("IG_TRAIN_MAX_EPOCHS", "1")
    monkeypatch.setenv("IG_TRAIN_BATCH_SIZE", "32")
    monkeypatch.setenv("IG_TRAIN_THREADS", "1")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", "gowalla"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout.strip().splitlines()[-1])
    assert trained["recall@20"] > 0.3
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
