"""Graph-level embedding of a user's interest subgraph: GIN with a pooled readout over the user's ego-graph.

The ego-graph of user u holds u, the items u interacted with, and those items' categories and brands
(`ego_graph`). Node inputs are a type embedding plus, for items, their served vector projected to the hidden
width; K GIN layers, then sum + mean pooling of every layer (the GIN paper's readout), then a linear head.
Two users whose interest subgraphs look alike get nearby vectors ("users with similar interests").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, global_add_pool, global_mean_pool
from torch_geometric.utils import to_undirected

from ml.interaction_graph import InteractionGraph

NODE_TYPES = {"user": 0, "item": 1, "category": 2, "brand": 3}


def ego_graph(graph: InteractionGraph, user: int, item_vectors: Tensor, max_items: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """(node types [N], node features [N, F], undirected edge_index [2, E]) of one user's interest subgraph.

    Node 0 is the user; items are the user's latest ``max_items`` (by time, ties by index) and carry their
    ``item_vectors`` row; category/brand nodes carry zeros. Deterministic for a given graph.
    """
    items, times = [], []
    for et in graph.interaction_types():
        es = graph.edges[et]
        m = es.index[0] == user
        items.append(es.index[1, m])
        times.append(es.time[m])
    it = torch.cat(items) if items else torch.zeros(0, dtype=torch.long)
    tm = torch.cat(times) if times else torch.zeros(0, dtype=torch.long)
    order = sorted(range(len(it)), key=lambda k: (-int(tm[k]), int(it[k])))
    uniq: list[int] = []
    for k in order:
        if int(it[k]) not in uniq:
            uniq.append(int(it[k]))
        if len(uniq) >= max_items:
            break
    uniq.sort()
    f = item_vectors.size(1)
    types, feats, edges = [NODE_TYPES["user"]], [torch.zeros(f)], []
    meta_node: dict[tuple[str, int], int] = {}
    ic = graph.item_category
    for item in uniq:
        node = len(types)
        types.append(NODE_TYPES["item"])
        feats.append(item_vectors[item])
        edges.append((0, node))
        links = [("category", int(c)) for c in ic[1, ic[0] == item].tolist()]
        if int(graph.item_brand[item]) >= 0:
            links.append(("brand", int(graph.item_brand[item])))
        for key in links:
            if key not in meta_node:
                meta_node[key] = len(types)
                types.append(NODE_TYPES[key[0]])
                feats.append(torch.zeros(f))
            edges.append((node, meta_node[key]))
    ei = torch.tensor(edges, dtype=torch.long).T if edges else torch.zeros(2, 0, dtype=torch.long)
    return torch.tensor(types), torch.stack(feats), to_undirected(ei, num_nodes=len(types))


class EgoGIN(nn.Module):
    """GIN graph encoder.

    Args:
        in_channels: width F of node features (the served item vectors).
        hidden: layer width.
        out_channels: width of the graph vector.
        num_layers: GIN layers.

    ``forward(types [N], x [N, F], edge_index [2, E], batch [N])`` -> [num_graphs, out_channels].
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 64,
        out_channels: int = 64,
        num_layers: int = 2,
        unit_inputs: bool = True,
        skip: bool = True,
    ):
        super().__init__()
        self._hparams = {
            "in_channels": in_channels,
            "hidden": hidden,
            "out_channels": out_channels,
            "num_layers": num_layers,
            "unit_inputs": unit_inputs,
            "skip": skip,
        }
        self.unit_inputs = unit_inputs
        self.type_emb = nn.Embedding(len(NODE_TYPES), hidden)
        self.inp = nn.Linear(in_channels, hidden)
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), train_eps=True)
            for _ in range(num_layers)
        )
        self.head = nn.Linear(2 * hidden * (num_layers + 1), out_channels)
        # the mean of the item inputs, projected, added to the head: the readout starts from what the items say
        # and the layers learn what the graph adds (bench.similar_users: the layers alone did worse)
        self.skip = nn.Linear(in_channels, out_channels, bias=False) if skip else None
        self.reset_parameters()

    def hparams(self) -> dict[str, int | bool]:
        """The constructor arguments (checkpoints record them)."""
        return dict(self._hparams)

    def reset_parameters(self) -> None:
        self.type_emb.reset_parameters()
        self.inp.reset_parameters()
        for c in self.convs:
            c.reset_parameters()
        self.head.reset_parameters()
        if self.skip is not None:
            self.skip.reset_parameters()

    def forward(self, types: Tensor, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        if self.unit_inputs:  # item vectors' norms carry popularity; the direction carries the interest
            x = torch.nn.functional.normalize(x, dim=-1)
        h = self.type_emb(types) + self.inp(x)
        reads = [global_add_pool(h, batch), global_mean_pool(h, batch)]
        n = reads[0].size(0)
        for conv in self.convs:
            h = torch.relu(conv(h, edge_index))
            reads += [global_add_pool(h, batch, n), global_mean_pool(h, batch, n)]
        out = self.head(torch.cat(reads, dim=-1))
        if self.skip is not None:
            items = types == NODE_TYPES["item"]
            out = out + self.skip(global_mean_pool(x[items], batch[items], n))
        return out


def ego_batch(
    items: Sequence[np.ndarray], item_vectors: Tensor, item_category: Tensor, item_brand: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Many users' ego-graphs as one disjoint batch (types [N], x [N, F], edge_index [2, E], batch [N]), built
    without a loop over users: graph g holds a user node, one node per item of ``items[g]`` (the items' indices,
    each carrying its ``item_vectors`` row), and one node per distinct category / brand of those items.

    The same graph as `ego_graph` up to node order (here: user, items ascending, then metadata), so a user's
    vector does not depend on who else is in the batch.
    """
    n_graphs = len(items)
    f = item_vectors.size(1)
    uniq = [np.unique(np.asarray(it, np.int64)) for it in items]
    counts = np.fromiter((len(u) for u in uniq), np.int64, n_graphs)
    flat = np.concatenate(uniq) if n_graphs else np.zeros(0, np.int64)
    g_of_item = np.repeat(np.arange(n_graphs), counts)
    # item -> metadata keys (categories as themselves, brands shifted past every category id), as a CSR
    ic = item_category.numpy()
    brand = item_brand.numpy()
    n_cat = int(ic[1].max()) + 1 if ic.size else 0
    has_brand = np.flatnonzero(brand >= 0)
    src = np.concatenate([ic[0], has_brand])
    key = np.concatenate([ic[1], brand[has_brand] + n_cat])
    order = np.lexsort((np.arange(len(src)), src))  # per item, categories in catalogue order then its brand
    src, key = src[order], key[order]
    ptr = np.searchsorted(src, np.arange(len(brand) + 1))
    per = ptr[flat + 1] - ptr[flat]
    pos = np.repeat(ptr[flat], per) + (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per))
    m_graph = np.repeat(g_of_item, per)
    m_item_at = np.repeat(np.arange(len(flat)), per)  # which flat item each (item, key) pair comes from
    m_key = key[pos]
    # distinct (graph, key) in first-seen order within each graph
    gk = m_graph * (int(m_key.max()) + 1 if m_key.size else 1) + m_key
    _, first, inverse = np.unique(gk, return_index=True, return_inverse=True)
    seen = np.argsort(first, kind="stable")  # the distinct pairs ordered by first appearance (graphs are in order)
    rank = np.empty_like(seen)
    rank[seen] = np.arange(len(seen))
    meta_graph = m_graph[first[seen]]
    meta_key = m_key[first[seen]]
    n_meta = np.bincount(meta_graph, minlength=n_graphs)
    # node offsets: graph g = [user, its items, its metadata]
    sizes = 1 + counts + n_meta
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    item_node = start[g_of_item] + 1 + (np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts))
    meta_start = np.concatenate([[0], np.cumsum(n_meta)[:-1]]).astype(np.int64)
    meta_node = start[meta_graph] + 1 + counts[meta_graph] + (np.arange(len(meta_graph)) - meta_start[meta_graph])
    total = int(sizes.sum())
    types = np.zeros(total, np.int64)
    types[item_node] = NODE_TYPES["item"]
    types[meta_node] = np.where(meta_key < n_cat, NODE_TYPES["category"], NODE_TYPES["brand"])
    x = item_vectors.new_zeros(total, f)
    x[torch.from_numpy(item_node).to(x.device)] = item_vectors[torch.from_numpy(flat).to(x.device)]
    src_e = np.concatenate([start[g_of_item], item_node[m_item_at]])
    dst_e = np.concatenate([item_node, meta_node[rank[inverse]]])
    ei = torch.from_numpy(np.stack([np.concatenate([src_e, dst_e]), np.concatenate([dst_e, src_e])]))
    batch = torch.from_numpy(np.repeat(np.arange(n_graphs), sizes))
    dev = item_vectors.device
    return torch.from_numpy(types).to(dev), x, ei.to(dev), batch.to(dev)


def batch_ego_graphs(graphs: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Concatenate ego-graphs into one disjoint batch: (types, x, edge_index, batch)."""
    types, xs, eis, batch, offset = [], [], [], [], 0
    for g, (t, x, ei) in enumerate(graphs):
        types.append(t)
        xs.append(x)
        eis.append(ei + offset)
        batch.append(torch.full((t.numel(),), g, dtype=torch.long))
        offset += t.numel()
    return torch.cat(types), torch.cat(xs), torch.cat(eis, dim=1), torch.cat(batch)
