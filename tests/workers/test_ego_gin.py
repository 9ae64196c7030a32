"""Graph-level interest embedding: GIN over users' ego-graphs."""

import numpy as np
import torch

from ml.encoders.ego_gin import batch_ego_graphs, ego_graph
from ml.settings import ModelSettings, TrainSettings
from ml.train_ego import fit_served_ego
from ml.train_hetero import fit_ego_gin
from ml.train_served import fit_served
from planted_graphs import planted


def test_ego_graph_holds_user_items_and_their_metadata(planted_split):
    split, _ = planted_split
    g = split.train
    vecs = torch.randn(g.num_items, 4)
    types, x, ei = ego_graph(g, 0, vecs)
    n_items = len(set(g.interactions()[0].indices.tolist()))
    assert int((types == 1).sum()) == n_items and int(types[0]) == 0
    assert int((types == 2).sum()) >= 1  # categories of those items
    assert ei.size(1) % 2 == 0 and torch.equal(ego_graph(g, 0, vecs)[2], ei)  # undirected, deterministic


def test_similar_interests_get_closer_vectors():
    split, cluster = planted(seed=11)
    g = split.train
    g_ = torch.Generator().manual_seed(0)
    vecs = torch.nn.functional.one_hot(torch.from_numpy(cluster), 4).float() + 0.1 * torch.randn(g.num_items, 4, generator=g_)
    model = fit_ego_gin(g, vecs, ModelSettings(hidden=16), TrainSettings(lr=1e-2), steps=30, batch=16)
    model.eval()
    users = np.arange(g.num_users)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(*batch_ego_graphs([ego_graph(g, int(u), vecs) for u in users])), dim=-1)
    sim = emb @ emb.T
    same = torch.from_numpy((users[:, None] // 25) == (users[None, :] // 25))
    off = ~torch.eye(len(users), dtype=torch.bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.1


def test_ego_hidden_sets_the_ego_gins_width_and_zero_keeps_the_models(planted_split):
    g = planted_split[0].train
    ms = ModelSettings(dim=32, hidden=32, select_filter=False, ego_steps=2, ego_dim=8)
    ts = TrainSettings(max_epochs=0, threads=1)
    model = fit_served(g, ms, ts, progress=False).model
    default, _ = fit_served_ego(model, g, None, ms, ts)
    zero, _ = fit_served_ego(model, g, None, ms.model_copy(update={"ego_hidden": 0}), ts)
    narrow, _ = fit_served_ego(model, g, None, ms.model_copy(update={"ego_hidden": 16}), ts)
    assert default["hparams"]["hidden"] == 64 and default["hparams"]["out_channels"] == 8
    assert zero["hparams"]["hidden"] == 32
    assert narrow["hparams"]["hidden"] == 16 and narrow["state_dict"]["inp.weight"].shape == (16, 32)
