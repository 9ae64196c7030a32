"""The served encoder: spectral start, inductive users, metadata-only items, fine-tune."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench.baselines.training_free import fit_popularity, fit_random
from ml.embed import embed_all, item_bases, served_scorer, served_vectors, user_vector
from ml.interaction_graph import InteractionGraph
from ml.ranking_metrics import rank_metrics
from ml.settings import ModelSettings, TrainSettings
from ml.train_served import fit_served, holdout
from planted_graphs import cluster_text, planted

MS = ModelSettings(dim=16)
TS0 = TrainSettings(served_epochs=0)


def test_spectral_start_beats_random_and_popularity(planted_split):
    split, _ = planted_split
    fitted = fit_served(split.train, MS, TS0, progress=False)
    r = split.train.interactions()
    ours = rank_metrics(served_scorer(fitted.model, split.train), r, split.test, k=5)
    rnd = rank_metrics(fit_random(split.train.num_items), r, split.test, k=5)
    pop = rank_metrics(fit_popularity(r), r, split.test, k=5)
    assert ours["recall@5"] > 2 * rnd["recall@5"]
    assert ours["recall@5"] > pop["recall@5"] + 0.1


def test_new_user_with_one_click_gets_the_full_graph_vector(planted_split):
    split, _ = planted_split
    g = split.train
    model = fit_served(g, MS, TS0, progress=False).model
    # the live graph gains a user with one click on item 7
    r = g.interactions()
    new_r = sp.vstack([r, sp.csr_matrix(([1.0], ([0], [7])), shape=(1, g.num_items))]).tocsr()
    full_users, _ = served_vectors(model, g.with_interactions(new_r))
    x = item_bases(model, g)
    incremental = user_vector(model, np.array([7]), None, x)
    assert incremental.abs().sum() > 0
    assert torch.allclose(incremental, full_users[-1], atol=1e-5)
    # and existing users are unchanged by the new one (items do not read users)
    assert torch.allclose(full_users[:-1], served_vectors(model, g)[0], atol=1e-5)


def test_new_item_with_metadata_only_lands_near_its_cluster():
    split, cluster = planted(seed=3)
    g = split.train
    text = cluster_text(cluster)
    model = fit_served(g, ModelSettings(dim=16), TS0, item_text=text, progress=False).model
    # append an item of cluster 2 that no one has touched: text + category only
    new_text = torch.cat([text, cluster_text(np.array([2]), seed=1)[:1] * 0 + text[cluster == 2].mean(0)])
    g2 = InteractionGraph(
        num_users=g.num_users,
        num_items=g.num_items + 1,
        edges=g.edges,
        user_ids=g.user_ids,
        item_ids=g.item_ids + ["new"],
        num_categories=g.num_categories,
        num_brands=g.num_brands,
        item_category=torch.cat([g.item_category, torch.tensor([[g.num_items], [2]])], dim=1),
        item_brand=torch.cat([g.item_brand, torch.tensor([-1])]),
    )
    users, items = served_vectors(model, g2, new_text)
    scores = users @ items[-1]
    user_cluster = np.arange(g.num_users) // 25
    assert scores[user_cluster == 2].mean() > scores[user_cluster != 2].mean() + 1e-6
    assert items[-1].norm() > 0


def test_fine_tune_improves_training_objective_and_keeps_quality():
    split, _ = planted(seed=1)
    ts = TrainSettings(
        served_epochs=4, batch_size=32, lr=3e-3, val_fraction=0.2, patience=4, refit=False, val_split="random"
    )  # the planted split is random; its times are only positions
    fitted = fit_served(split.train, MS, ts, progress=False)
    probe = [h["probe_loss"] for h in fitted.history if "probe_loss" in h and not h["refit"]]
    assert len(probe) >= 3 and min(probe[1:]) < probe[0] - 0.01
    r = split.train.interactions()
    m = rank_metrics(served_scorer(fitted.model, split.train), r, split.test, k=5)
    assert m["recall@5"] > 0.3


def test_embed_all_labels_and_ids(planted_split):
    split, _ = planted_split
    model = fit_served(split.train, MS, TS0, progress=False).model
    rows = list(embed_all(model, split.train))
    assert [r[0] for r in rows].count("User") == split.train.num_users
    assert [r[0] for r in rows].count("Item") == split.train.num_items
    assert rows[0][1] == "u0" and rows[0][2].shape == (16,)


def test_holdout_mirrors_the_test_protocol():
    r = sp.random(60, 50, density=0.3, format="csr", random_state=0)
    r.data[:] = 1
    fit, val = holdout(r, 0.2, seed=1)
    n = np.diff(r.indptr)
    assert np.array_equal(np.diff(val.indptr), np.minimum(np.ceil(0.2 * n), n - 1))  # ceil(20%) per user
    assert (fit + val - r).nnz == 0 and fit.multiply(val).nnz == 0
    assert (holdout(r, 0.2, seed=2)[1] != val).nnz > 0  # at random


def test_selection_picks_the_best_validation_setting_and_refits_on_all_interactions():
    split, _ = planted(seed=2)
    ts = TrainSettings(served_epochs=2, batch_size=32, lr=3e-3, val_fraction=0.2, patience=2, refit=True)
    ms = MS.model_copy(update={"select_filter": True, "select_max_settings": 100})
    fitted = fit_served(split.train, ms, ts, progress=False)
    chosen, tried = fitted.history[0]["selected"], fitted.history[0]["tried"]
    # every grid value was tried (the recency weights too: the planted graph's times order each user's items);
    # no setting scored twice
    grids = (
        ("filter_power", ms.filter_grid),
        ("user_norm", ms.user_norm_grid),
        ("item_norm", ms.item_norm_grid),
        ("recency_boost", ms.recency_boost_grid),
        ("recency_scale", ms.recency_scale_grid),
        ("warm_meta_blend", ms.warm_meta_blend_grid),  # the planted items have categories (ml.signals)
    )
    for key, grid in grids:
        assert {t[key] for t in tried} == set(grid)
    assert len({tuple(t.items())[:-1] for t in tried}) == len(tried)
    # converged: no single-setting change of the chosen one scores higher (all its neighbours were tried)
    neighbours = [t for t in tried if sum(t[k] != v for k, v in chosen.items()) == 1]
    assert len(neighbours) == sum(len(grid) - 1 for _, grid in grids) and len(tried) <= ms.select_max_settings
    chosen_recall = next(t["val_recall"] for t in tried if all(t[k] == v for k, v in chosen.items()))
    assert chosen_recall == max(t["val_recall"] for t in tried)
    assert fitted.model.dim == ms.dim and fitted.model.user_norm == chosen["user_norm"]
    # refit: the final item degrees and known items come from every training interaction
    deg = np.asarray(split.train.interactions().sum(0)).ravel()
    assert torch.equal(fitted.model.item_known, torch.from_numpy(deg > 0))
    r = split.train.interactions()
    assert rank_metrics(served_scorer(fitted.model, split.train), r, split.test, k=5)["recall@5"] > 0.3


def test_sampled_softmax_fine_tune_learns():
    split, _ = planted(seed=1)
    ts = TrainSettings(
        served_epochs=4, batch_size=32, lr=3e-3, val_fraction=0.2, patience=4, refit=False, negatives=20, val_split="random"
    )  # as above: a random planted split
    fitted = fit_served(split.train, MS, ts, progress=False)
    probe = [h["probe_loss"] for h in fitted.history if "probe_loss" in h]
    assert min(probe[1:]) < probe[0] - 0.01


def test_a_new_item_reaches_its_users_at_input_scale():
    """One click on a new item weighs about what a click on one of its text neighbours weighs: the new item
    sends ``d^-a x`` like any item, not its served vector ``d^b x`` (which was ~``d^(a+b)`` larger)."""
    split, cluster = planted(seed=4, items_per=25)
    g = split.train
    text = cluster_text(cluster)
    model = fit_served(g, MS, TS0, item_text=text, progress=False).model
    twin = int(np.argmax(np.asarray(g.interactions().sum(0)).ravel()))  # a popular item
    g2 = InteractionGraph(
        num_users=2,
        num_items=g.num_items + 1,
        edges={},
        user_ids=["a", "b"],
        item_ids=g.item_ids + ["new"],
        num_categories=g.num_categories,
        num_brands=g.num_brands,
        item_category=g.item_category,
        item_brand=torch.cat([g.item_brand, torch.tensor([-1])]),
    )
    new_text = torch.cat([text, text[twin : twin + 1]])  # the new item reads like the popular one
    adj = sp.csr_matrix(([1.0, 1.0], ([0, 1], [twin, g.num_items])), shape=(2, g.num_items + 1))
    users, items = served_vectors(model, g2, new_text, adj=adj)
    ratio = float(users[1].norm() / users[0].norm())
    assert model.item_degree[twin] >= 10 and 1 / 3 < ratio < 3, ratio
    # and its served vector carries a popularity prior like its neighbours' (not degree 1)
    assert float(items[-1].norm()) > float(items[: g.num_items].norm(dim=1).min())


def test_live_and_full_paths_embed_a_metadata_only_new_item_alike():
    """A new item with only a category and a brand (a model without text): the live encoder's served vector and
    what it sends to users equal the full path's (`served_vectors` with the item appended)."""
    from graphdb.subgraph import ItemRow
    from ml.checkpoint import Checkpoint
    from workers.live import LiveEncoder

    split, _ = planted(seed=5)
    g = split.train
    model = fit_served(g, MS, TS0, progress=False).model
    ck = Checkpoint(
        model, "v1", {}, {}, g.user_ids, g.item_ids, g.category_names, g.brand_names, {}, None, g.item_category, g.item_brand
    )
    out, sends = LiveEncoder(ck, user_cap=500, half_life_days=30.0).new_items(
        [ItemRow("new", (g.category_names[2],), g.brand_names[1], None, None)]
    )
    g2 = InteractionGraph(
        num_users=1,
        num_items=g.num_items + 1,
        edges={},
        user_ids=["u"],
        item_ids=g.item_ids + ["new"],
        num_categories=g.num_categories,
        num_brands=g.num_brands,
        item_category=torch.cat([g.item_category, torch.tensor([[g.num_items], [2]])], dim=1),
        item_brand=torch.cat([g.item_brand, torch.tensor([1])]),
    )
    adj = sp.csr_matrix(([1.0], ([0], [g.num_items])), shape=(1, g.num_items + 1))
    users, items = served_vectors(model, g2, adj=adj)
    assert torch.allclose(out[0], items[-1], atol=1e-5) and out[0].norm() > 0
    assert torch.allclose(sends[0] * model.user_scale(), users[0], atol=1e-5)


def test_holdout_with_times_holds_out_each_users_latest():
    r = sp.random(60, 50, density=0.3, format="csr", random_state=0)
    r.data[:] = 1
    rng = np.random.default_rng(3)
    times = r.copy()
    times.data = rng.permutation(r.nnz).astype(np.float64)  # distinct times
    fit, val = holdout(r, 0.2, seed=1, times=times)
    assert np.array_equal(np.diff(val.indptr), np.diff(holdout(r, 0.2, seed=1)[1].indptr))
    for u in range(r.shape[0]):
        t_val = times[u].multiply(val[u]).data
        t_fit = times[u].multiply(fit[u]).data
        if len(t_val) and len(t_fit):
            assert t_val.min() > t_fit.max()  # every held-out interaction is newer than every fit one
    assert (holdout(r, 0.2, seed=2, times=times)[1] != val).nnz == 0  # determined by time, not the seed
    equal = r.copy()
    equal.data[:] = 7.0  # no order: at random, as without times
    assert (holdout(r, 0.2, seed=1, times=equal)[1] != holdout(r, 0.2, seed=1)[1]).nnz == 0
    with pytest.raises(ValueError, match="sparsity pattern"):
        holdout(r, 0.2, seed=1, times=times[:, :40])
