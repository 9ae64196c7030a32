"""Dataset files -> `InteractionGraph` (the benchmark side of the input; graphdb builds the live side).

Each loader returns the graph of the training interactions and, where the dataset defines one, the test
interactions as a CSR matrix [num_users, num_items] over the same indices.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.errors import InvalidInput
from ml.interaction_graph import EdgeSet, InteractionGraph, latest_per_pair


@dataclass
class Split:
    """A training graph plus held-out test interactions (CSR [num_users, num_items], binary)."""

    train: InteractionGraph
    test: sp.csr_matrix
    name: str


def _need(path: Path) -> Path:
    if not path.exists():
        raise InvalidInput(f"dataset file not found: {path}")
    return path


def _read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = [], []
    with open(_need(path)) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue  # users without items in this split
            items = np.asarray(parts[1:], dtype=np.int64)
            rows.append(np.full(items.size, int(parts[0]), dtype=np.int64))
            cols.append(items)
    return np.concatenate(rows), np.concatenate(cols)


def load_gowalla(root: Path) -> Split:
    """The LightGCN split of Gowalla: ``train.txt`` / ``test.txt`` lines ``user item item ...``."""
    root = Path(root)
    tr_u, tr_i = _read_adjacency(root / "train.txt")
    te_u, te_i = _read_adjacency(root / "test.txt")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    graph = InteractionGraph(
        num_users=n_users,
        num_items=n_items,
        edges={("user", "interacted", "item"): EdgeSet.build(tr_u, tr_i)},
        user_ids=[str(i) for i in range(n_users)],
        item_ids=[str(i) for i in range(n_items)],
    )
    test = sp.csr_matrix((np.ones(te_u.size, dtype=np.float32), (te_u, te_i)), shape=(n_users, n_items))
    test.data[:] = 1.0
    return Split(graph, test, "gowalla")


def _category_vocab(paths: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """Category paths "A, B, C" -> (item, category) pairs over every prefix level, plus the names."""
    names: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for item, path in enumerate(paths):
        parts = [html.unescape(p).strip() for p in path.split(", ") if p.strip()]
        for depth in range(1, len(parts) + 1):
            key = " > ".join(parts[:depth])
            cid = names.setdefault(key, len(names))
            pairs.append((item, cid))
    return pairs, list(names)


def category_tree(names: list[str]) -> EdgeSet:
    """Child -> parent links between category paths "A > B > C" -> "A > B" (both in ``names``)."""
    index = {n: i for i, n in enumerate(names)}
    links = [(i, index[n.rsplit(" > ", 1)[0]]) for i, n in enumerate(names) if " > " in n and n.rsplit(" > ", 1)[0] in index]
    return EdgeSet.build([c for c, _ in links], [p for _, p in links])


def load_amazon_office(root: Path) -> tuple[InteractionGraph, np.ndarray]:
    """Office Products 5-core with titles/brands/categories.

    Returns the full graph and, per edge of the single ``("user", "reviewed", "item")`` relation, its position
    in the user's list (the files have no timestamps; the order is the conventional time order), usable as
    ``time`` for leave-last-out splits.
    """
    root = Path(root)
    inter = json.loads(_need(root / "Office.inter.json").read_text())
    meta = json.loads(_need(root / "Office.item.json").read_text())
    n_items = len(meta)
    users = sorted(inter, key=int)
    rows, cols, order = [], [], []
    for u, key in enumerate(users):
        for pos, it in enumerate(inter[key]):
            rows.append(u)
            cols.append(int(it))
            order.append(pos)
    items = [str(i) for i in range(n_items)]
    brands: dict[str, int] = {}
    item_brand = np.full(n_items, -1, dtype=np.int64)
    texts, paths = [], []
    for i in range(n_items):
        m = meta[str(i)]
        b = html.unescape(m.get("brand") or "").strip()
        if b:
            item_brand[i] = brands.setdefault(b, len(brands))
        title = html.unescape(m.get("title") or "").strip()
        desc = html.unescape(m.get("description") or "").strip()
        texts.append((title + ". " + desc).strip(". ") if desc else title)
        paths.append(m.get("categories") or "")
    pairs, cat_names = _category_vocab(paths)
    pc = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T
    edges = {("user", "reviewed", "item"): EdgeSet.build(rows, cols, time=order)}
    tree = category_tree(cat_names)
    if tree.num_edges:
        edges[("category", "child_of", "category")] = tree
    graph = InteractionGraph(
        num_users=len(users),
        num_items=n_items,
        edges=edges,
        user_ids=users,
        item_ids=items,
        num_categories=len(cat_names),
        num_brands=len(brands),
        item_category=torch.from_numpy(pc),
        item_brand=torch.from_numpy(item_brand),
        item_text=texts,
        category_names=cat_names,
        brand_names=list(brands),
    )
    return graph, np.asarray(order)


def co_viewed(item_view: np.ndarray, n_items: int) -> EdgeSet:
    """Item pairs (i < j) that share an "also viewed" node, weighted by how many they share: the item-item
    relation ``also_viewed`` (the model adds its reverse, so both directions are present)."""
    iv = item_view[item_view[:, 0] < n_items]
    m = sp.csr_matrix((np.ones(len(iv), np.float32), (iv[:, 0], iv[:, 1])), shape=(n_items, int(iv[:, 1].max()) + 1 if len(iv) else 1))
    co = sp.triu(m @ m.T, k=1).tocoo()
    return EdgeSet.build(co.row, co.col, co.data)


def load_amazon_hin(root: Path) -> InteractionGraph:
    """Amazon HIN: timestamped ratings plus item-category (multi-label), item-brand links (ids only) and the
    items viewed together (``item_view.dat``: item, view node; items sharing a view node become ``also_viewed``)."""
    root = Path(root)
    ui = np.loadtxt(_need(root / "user_item.dat"), dtype=np.int64, ndmin=2)
    ic = np.loadtxt(_need(root / "item_category.dat"), dtype=np.int64, delimiter=",", ndmin=2)
    ib = np.loadtxt(_need(root / "item_brand.dat"), dtype=np.int64, delimiter=",", ndmin=2)
    n_users, n_items = int(ui[:, 0].max()) + 1, int(ui[:, 1].max()) + 1
    brand = np.full(n_items, -1, dtype=np.int64)
    brand[ib[:, 0]] = ib[:, 1]
    edges = {("user", "rated", "item"): EdgeSet.build(ui[:, 0], ui[:, 1], ui[:, 2], ui[:, 3])}
    if (root / "item_view.dat").exists():
        edges[("item", "also_viewed", "item")] = co_viewed(
            np.loadtxt(root / "item_view.dat", dtype=np.int64, delimiter=",", ndmin=2), n_items
        )
    return InteractionGraph(
        num_users=n_users,
        num_items=n_items,
        edges=edges,
        user_ids=[str(i) for i in range(n_users)],
        item_ids=[str(i) for i in range(n_items)],
        num_categories=int(ic[:, 1].max()) + 1,
        num_brands=int(ib[:, 1].max()) + 1,
        item_category=torch.from_numpy(ic.T.copy()),
        item_brand=torch.from_numpy(brand),
        category_names=[str(i) for i in range(int(ic[:, 1].max()) + 1)],
        brand_names=[str(i) for i in range(int(ib[:, 1].max()) + 1)],
    )


def leave_last_out(graph: InteractionGraph, name: str) -> Split:
    """Per user, the latest interaction (largest ``time``, then last position) becomes the test item."""
    rows, cols, w, t = graph.interaction_edges()
    order = np.lexsort((np.arange(len(rows)), t, rows))  # by user, then time, then position
    last = np.r_[np.flatnonzero(np.diff(rows[order])), len(order) - 1]
    test_mask = np.zeros(len(rows), bool)
    test_mask[order[last]] = True
    counts = np.bincount(rows, minlength=graph.num_users)
    test_mask &= counts[rows] > 1  # a user with one interaction keeps it for training
    # every earlier edge of a held-out (user, item) pair leaves training too, or the answer would leak
    pair = rows * graph.num_items + cols
    test_mask |= np.isin(pair, pair[test_mask])
    kept = ~test_mask
    shape = (graph.num_users, graph.num_items)
    train = sp.csr_matrix((w[kept], (rows[kept], cols[kept])), shape=shape)  # a pair's weights summed
    train.sum_duplicates()
    # each training pair's latest time, same pattern (the validation split holds the latest out)
    times = latest_per_pair(rows[kept], cols[kept], t[kept], shape)
    train.sort_indices()
    test = sp.csr_matrix(
        (np.ones(test_mask.sum(), np.float32), (rows[test_mask], cols[test_mask])), shape=(graph.num_users, graph.num_items)
    )
    test.data[:] = 1.0
    return Split(graph.with_interactions(train, graph.interaction_types()[0][1], times), test, name)


def load_split(name: str, root: Path) -> Split:
    """A benchmark split by dataset name, read from the dataset's folder ``root``: gowalla (its own split),
    amazon-office / amazon-hin (leave last out)."""
    if name == "gowalla":
        return load_gowalla(root)
    if name == "amazon-office":
        return leave_last_out(load_amazon_office(root)[0], name)
    if name == "amazon-hin":
        return leave_last_out(load_amazon_hin(root), name)
    raise InvalidInput(f"unknown dataset {name!r} (gowalla, amazon-office, amazon-hin)")
