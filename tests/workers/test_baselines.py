import numpy as np

from bench._implicit import fit_implicit
from bench.baselines.lightgcn import LightGCN
from bench.baselines.mf import MF
from bench.baselines.train_bpr import fit_bpr
from bench.baselines.training_free import fit_gfcf, fit_popularity, fit_random
from ml.ranking_metrics import rank_metrics
from ml.settings import TrainSettings
from planted_graphs import planted


def test_graph_filters_beat_random_and_popularity(planted_split):
    split, _ = planted_split
    r = split.train.interactions()
    res = {
        name: rank_metrics(f, r, split.test, k=5)["recall@5"]
        for name, f in {
            "random": fit_random(r.shape[1]),
            "pop": fit_popularity(r),
            "knn": fit_implicit("itemknn", r, 1, 0)[0],
            "bm25": fit_implicit("bm25", r, 1, 0)[0],
            "als": fit_implicit("als", r, 1, 0)[0],
            "gfcf": fit_gfcf(r, k=8),
        }.items()
    }
    assert all(res[m] > res["pop"] + 0.1 for m in ("knn", "bm25", "als", "gfcf")), res


def test_metrics_on_a_known_ranking():
    import scipy.sparse as sp
    import torch

    train = sp.csr_matrix(np.array([[1, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0, 1]], np.float32))
    scores = torch.tensor([[9.0, 3.0, 2.0, 1.0]])  # item 0 masked; top-2 = items 1, 2
    m = rank_metrics(lambda u: scores.clone(), train, test, k=2)
    assert m["recall@2"] == 0.5
    assert abs(m["ndcg@2"] - 1.0 / (1.0 + 1.0 / np.log2(3))) < 1e-9


def test_bpr_training_reduces_loss_and_learns():
    split, _ = planted(seed=4)
    r = split.train.interactions()
    ts = TrainSettings(batch_size=64, lr=1e-2, max_epochs=15)
    for model in (MF(r.shape[0], r.shape[1], 16), LightGCN(r.shape[0], r.shape[1], 16, 2)):
        users, items, info = fit_bpr(model, r, ts, budget_s=60, progress=False)
        assert info["loss"][-1] < info["loss"][0] * 0.8
        rec = rank_metrics(lambda b: users[b] @ items.T, r, split.test, k=5)["recall@5"]
        rnd = rank_metrics(fit_random(r.shape[1]), r, split.test, k=5)["recall@5"]
        assert rec > 2 * rnd, type(model).__name__
