"""The caps `workers.hetero_live.HeteroLive` reads rows by are the caps the model's forward applies
(`ml.encoders.hetero_gnn.typed_edges`): the receptive field the incremental recompute pulls is the one the
model reads. On the amazon-hin slice's files, with duplicate rows per pair (one per behaviour type) and ties."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import torch

from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import Checkpoint
from ml.settings import ModelSettings
from ml.train_hetero import build_hetero
from workers.hetero_live import RELATION, HeteroLive
from workers.live import training_graph


def _slice(root) -> tuple[list[EdgeRow], list[ItemRow]]:
    rng = random.Random(0)
    edges = []
    for line in (root / "user_item.dat").read_text().splitlines():
        u, i, _, t = line.split()
        edges.append(EdgeRow(f"u{u}", f"hin:{i}", 1.0, float(t)))
        if rng.random() < 0.3:  # a second behaviour on the same pair, sometimes heavier
            edges.append(EdgeRow(f"u{u}", f"hin:{i}", rng.choice([1.0, 2.5]), float(t)))
    cats: dict[str, list[str]] = defaultdict(list)
    for line in (root / "item_category.dat").read_text().splitlines():
        i, c = line.split(",")
        cats[i].append(f"hin:c{c}")
    brands = dict(line.split(",") for line in (root / "item_brand.dat").read_text().splitlines())
    ids = sorted(set(cats) | set(brands) | {e.item[4:] for e in edges})
    return edges, [
        ItemRow(f"hin:{i}", tuple(sorted(cats.get(i, ()))), f"hin:b{brands[i]}" if i in brands else None, None, None) for i in ids
    ]


def _live(graph, settings: ModelSettings) -> HeteroLive:
    """A freshly built encoder of ``settings`` over ``graph``, as the worker serves it (version "v")."""
    model = build_hetero(graph, settings, 0)
    ck = Checkpoint(
        model,
        "v",
        {},
        {},
        graph.user_ids,
        graph.item_ids,
        graph.category_names,
        graph.brand_names,
        {},
        None,
        graph.item_category,
        graph.item_brand,
    )
    return HeteroLive(ck)


def test_caps_match_the_forward(slices):
    edges, rows = _slice(slices / "amazon-hin")
    graph = training_graph(edges, rows)
    enc = _live(graph, ModelSettings(hidden=8, layers=2, neighbour_cap=4))
    index, _ = enc.model.edges(graph)  # the trained weights: time decay and recency (the defaults)
    kept_items: dict[str, set[str]] = defaultdict(set)  # user -> items the forward keeps
    for i, u in index[("item", f"rev_{RELATION[1]}", "user")].T.tolist():
        kept_items[graph.user_ids[u]].add(graph.item_ids[i])
    kept_users: dict[str, set[str]] = defaultdict(set)  # item -> users
    for u, i in index[RELATION].T.tolist():
        kept_users[graph.item_ids[i]].add(graph.user_ids[u])
    by_user, by_item = defaultdict(list), defaultdict(list)
    for e in edges:
        by_user[e.user].append(e)
        by_item[e.item].append(e)
    assert any(len({e.item for e in es}) > enc.cap for es in by_user.values())  # some users are capped
    assert any(len({e.user for e in es}) > enc.cap for es in by_item.values())  # and some items
    for u, es in by_user.items():
        assert {e.item for e in enc.cap_of_user(es)} == kept_items[u], u
    by_row = {r.id: r for r in rows}
    for i, es in by_item.items():
        users, _, _ = enc.cap_of_item(es, by_row[i])
        assert {e.user for e in users} == kept_users[i], i
    members: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        for c in enc.categories_of(r):
            members[c].append(r.id)
    kept_members: dict[str, set[str]] = defaultdict(set)
    for i, c in index[("item", "in_category", "category")].T.tolist():
        kept_members[graph.category_names[c]].add(graph.item_ids[i])
    for c, m in members.items():
        assert set(enc.cap_of_members(m)) == kept_members[c], c


def test_encode_on_the_capped_rows_equals_the_whole_graph(slices):
    """An item's vector from its capped shoppers, their capped items, and those items' categories and brand rows
    (the rows a recompute pulls) equals its vector from every row."""
    edges, rows = _slice(slices / "amazon-hin")
    graph = training_graph(edges, rows)
    torch.manual_seed(0)
    enc = _live(graph, ModelSettings(encoder="gin", hidden=8, layers=2, neighbour_cap=4))
    full = enc.encode([], edges, rows)
    by_item, by_user = defaultdict(list), defaultdict(list)
    for e in edges:
        by_item[e.item].append(e)
        by_user[e.user].append(e)
    by_row = {r.id: r for r in rows}
    target = max(by_item, key=lambda i: (len({e.user for e in by_item[i]}), i))  # the hub
    shoppers = {e.user for e in enc.cap_of_item(by_item[target], by_row[target])[0]}
    # layer 1 of the target's shoppers: their capped items (and those items' rows, for the categories)
    pairs = {(u, e.item) for u in shoppers for e in enc.cap_of_user(by_user[u])} | {(u, target) for u in shoppers}
    sub_edges = [e for e in edges if (e.user, e.item) in pairs]
    cats = {c for c in enc.categories_of(by_row[target])}
    sub_items = {i for _, i in pairs} | {r.id for r in rows if set(enc.categories_of(r)) & cats}
    brand = by_row[target].brand
    sub_items |= {r.id for r in rows if brand is not None and r.brand == brand}
    sub = enc.encode([], sub_edges, [by_row[i] for i in sorted(sub_items)])
    assert len(sub_edges) < len(edges)
    assert np.abs(sub.items[target] - full.items[target]).max() <= 1e-5
