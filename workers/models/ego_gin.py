"""Graph-level embedding of a user's interest subgraph: GIN with a pooled readout over the user's ego-graph.

The ego-graph of user u holds u, the items u interacted with, and those items' categories and brands
(`ego_graph`). Node inputs are a type embedding plus, for items, their served vector projected to the hidden
width; K GIN layers, then sum + mean pooling of every layer (the GIN paper's readout), then a linear head.
Two users whose interest subgraphs look alike get nearby vectors ("users with similar interests").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, global_add_pool, global_mean_pool
from torch_geometric.utils import to_undirected

from workers.data import InteractionGraph

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

    def __init__(self, in_channels: int, hidden: int = 64, out_channels: int = 64, num_layers: int = 2):
        super().__init__()
        self.type_emb = nn.Embedding(len(NODE_TYPES), hidden)
        self.inp = nn.Linear(in_channels, hidden)
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), train_eps=True)
            for _ in range(num_layers)
        )
        self.head = nn.Linear(2 * hidden * (num_layers + 1), out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.type_emb.reset_parameters()
        self.inp.reset_parameters()
        for c in self.convs:
            c.reset_parameters()
        self.head.reset_parameters()

    def forward(self, types: Tensor, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        h = self.type_emb(types) + self.inp(x)
        reads = [global_add_pool(h, batch), global_mean_pool(h, batch)]
        for conv in self.convs:
            h = torch.relu(conv(h, edge_index))
            reads += [global_add_pool(h, batch), global_mean_pool(h, batch)]
        return self.head(torch.cat(reads, dim=-1))


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
