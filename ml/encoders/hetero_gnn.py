"""K-layer inductive heterogeneous encoders (GraphSAGE default, GCN and GIN variants) for the live graph.

Node types: user, item, category, brand, query. Every relation is used in both directions (its reverse is
added as ``rev_<relation>``), so users inform items and items inform users. Inputs:

* item: learned category bag + brand embedding + projected sentence vector (+ optional ID embedding),
* category / brand: learned embeddings (they are nodes too),
* query: projected sentence vector of its text,
* user: no raw features, a shared learned start vector; after one layer a user is what they did,

so a new user with one click or a new item with metadata only gets a vector from the same forward pass (an item
past the ID table, when the model has one, gets a zero ID row).
Edge weights are the event strength times a time decay ``2 ** ((t - time_ref) / half_life)`` (edges without a
time, ``t <= 0``, are not decayed) and, on the edges into a user, the recency weight of `ml.recency` (the
dense rank of the edge's time among the user's own interactions: what a shopper did last weighs most, and it
depends on the user's edges only), both from `interaction_weights`, which the live recompute calls too; they order
the neighbour caps and weigh the aggregation (SAGE's weighted mean when ``weighted``, GCN's normalised sum; GIN sums
or averages unweighted). Neighbour caps (`ml.sampling.cap_neighbours`) are applied before the pass and depend only
on a node's own edges, so a subgraph around the changed nodes (given its users' other times for the ranks)
reproduces the full-graph vectors. Every tensor the model makes or receives goes to its parameters' device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, HeteroConv, MessagePassing, SAGEConv
from torch_geometric.utils import degree, scatter

from ml.interaction_graph import EdgeType, InteractionGraph
from ml.sampling import cap_neighbours


class BipartiteGCNConv(MessagePassing):
    """GCN propagation between two node sets: ``x'_i = W_r x_i + sum_j w_ij / sqrt(d_i d_j) W x_j``.

    Shapes: ``x = (x_src [Ns, in], x_dst [Nd, in])``, ``edge_index`` [2, E], ``edge_weight`` [E] -> [Nd, out].
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(aggr="add")
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.root = nn.Linear(in_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        self.root.reset_parameters()

    def forward(self, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        xs, xd = x if isinstance(x, tuple) else (x, x)  # HeteroConv hands one tensor to a relation within a type
        w = torch.ones(edge_index.size(1), device=xs.device) if edge_weight is None else edge_weight
        ds = degree(edge_index[0], xs.size(0)).clamp(min=1)
        dd = degree(edge_index[1], xd.size(0)).clamp(min=1)
        norm = w * ds[edge_index[0]].rsqrt() * dd[edge_index[1]].rsqrt()
        return self.propagate(edge_index, x=(self.lin(xs), xd), norm=norm) + self.root(xd)

    def message(self, x_j: Tensor, norm: Tensor) -> Tensor:
        return norm.unsqueeze(-1) * x_j


class WeightedSAGEConv(MessagePassing):
    """GraphSAGE with a weighted mean: ``x'_i = W_l (sum_j w_ij x_j / sum_j w_ij) + W_r x_i``; equal to PyG's
    ``SAGEConv(aggr="mean")`` when every weight is 1 (same parameter names).

    Shapes: ``x = (x_src [Ns, in], x_dst [Nd, in])``, ``edge_index`` [2, E], ``edge_weight`` [E] -> [Nd, out].
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(aggr="add")
        self.lin_l = nn.Linear(in_channels, out_channels)
        self.lin_r = nn.Linear(in_channels, out_channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()

    def forward(self, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        xs, xd = x if isinstance(x, tuple) else (x, x)  # HeteroConv hands one tensor to a relation within a type
        w = torch.ones(edge_index.size(1), device=xs.device) if edge_weight is None else edge_weight
        total = scatter(w, edge_index[1], dim=0, dim_size=xd.size(0), reduce="sum").clamp(min=1e-30)
        norm = w / total[edge_index[1]]
        return self.lin_l(self.propagate(edge_index, x=(xs, xd), norm=norm)) + self.lin_r(xd)

    def message(self, x_j: Tensor, norm: Tensor) -> Tensor:
        return norm.unsqueeze(-1) * x_j


def decayed(weight: Tensor, time: Tensor, half_life_s: float, time_ref: int) -> Tensor:
    """``weight * 2 ** ((time - time_ref) / half_life_s)``; edges without a time (``<= 0``) keep their weight.
    In float64, so old edges keep their order under the caps."""
    if half_life_s <= 0:
        return weight
    t = time.double()
    f = torch.where(t > 0, torch.exp2((t - float(time_ref)) / half_life_s), torch.ones_like(t))
    return (weight.double() * f).float()


def recency_weights(users: np.ndarray, times: np.ndarray, boost: float, scale: float, n: int | None = None) -> Tensor:
    """The recency weight (float32) of the first ``n`` (default all) of these interactions (``users`` [E] any ids
    of one kind, ``times`` [E]) in their user's aggregation: the dense rank of the time among all of the user's
    times here (newest = 0, equal times share a rank), weighed as `ml.recency` weighs the served model's items. The
    rows past ``n`` only count for the ranks. Every weight is 1 when ``boost`` is 0 or a user's times are equal."""
    n = len(users) if n is None else n
    if boost <= 0 or not len(users):
        return torch.ones(n)
    times = np.asarray(times).astype(np.float64)
    order = np.lexsort((-times, users))
    su, st = users[order], times[order]
    new_user = np.r_[True, su[1:] != su[:-1]]
    step = np.r_[False, (st[1:] != st[:-1]) & ~new_user[1:]]
    dense = np.cumsum(step)
    dense -= np.maximum.accumulate(np.where(new_user, dense, 0))
    rank = np.empty(len(users), np.float64)
    rank[order] = dense
    return torch.from_numpy((1.0 + boost * np.exp(-rank[:n] / scale)) / (1.0 + boost)).float()


def interaction_weights(
    users: np.ndarray,
    weight: Tensor,
    time: Tensor,
    half_life_s: float,
    time_ref: int,
    recency_boost: float,
    recency_scale: float,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Tensor, Tensor]:
    """The weights [E] of user->item interaction edges (``users`` [E] their users, ``weight`` [E] the event
    strength, ``time`` [E] unix seconds): (into the item: strength x `decayed`; into the user: that x the user's
    `recency_weights`). The one definition of the edge weights, for training and for the live recompute
    (`workers.hetero_live`). ``context``: (users, times) of further interactions of the same users that the
    recency ranks count, so that a subgraph holding part of a user's edges weighs them as the whole graph does."""
    into_item = decayed(weight, time, half_life_s, time_ref)
    u, t = (users, time.numpy()) if context is None else (np.r_[users, context[0]], np.r_[time.numpy(), context[1]])
    return into_item, into_item * recency_weights(u, t, recency_boost, recency_scale, n=len(users))


def typed_edges(
    graph: InteractionGraph,
    cap: int,
    half_life_s: float = 0.0,
    time_ref: int = 0,
    recency_boost: float = 0.0,
    recency_scale: float = 1.0,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[EdgeType, Tensor], dict[EdgeType, Tensor]]:
    """Edge indices and weights of every relation and its reverse, capped per target node (top-N by weight,
    ties by source index). Item->category and item->brand links come from the item metadata. The interaction
    relations are weighed by `interaction_weights` (all behaviour types of a user ranked together; ``context``:
    (user index, time) of the users' interactions outside ``graph``, for the ranks); other relations decay with
    age. Both before the caps."""
    rels: dict[EdgeType, tuple[Tensor, Tensor, Tensor]] = {}
    types = graph.interaction_types()
    if types:
        sets = [graph.edges[et] for et in types]
        into_item, into_user = interaction_weights(
            torch.cat([es.index[0] for es in sets]).numpy(),
            torch.cat([es.weight for es in sets]),
            torch.cat([es.time for es in sets]),
            half_life_s,
            time_ref,
            recency_boost,
            recency_scale,
            context,
        )
        sizes = [es.num_edges for es in sets]
        for et, es, w, back in zip(types, sets, torch.split(into_item, sizes), torch.split(into_user, sizes)):
            rels[et] = (es.index, w, back)
    for et, es in graph.edges.items():
        if et not in rels:
            w = decayed(es.weight, es.time, half_life_s, time_ref)
            rels[et] = (es.index, w, w)
    if graph.num_categories and graph.item_category.numel():
        ones = torch.ones(graph.item_category.size(1))
        rels[("item", "in_category", "category")] = (graph.item_category, ones, ones)
    has_brand = graph.item_brand >= 0
    if graph.num_brands and bool(has_brand.any()):
        idx = torch.stack([torch.nonzero(has_brand).view(-1), graph.item_brand[has_brand]])
        ones = torch.ones(idx.size(1))
        rels[("item", "of_brand", "brand")] = (idx, ones, ones)
    index, weight = {}, {}
    for (s, r, d), (ei, w, back) in rels.items():
        for et, e, we in (((s, r, d), ei, w), ((d, f"rev_{r}", s), ei.flip(0), back)):
            keep = cap_neighbours(e, we, cap, by=1)
            index[et], weight[et] = e[:, keep], we[keep]
    return index, weight


class HeteroGNN(nn.Module):
    """Inductive heterogeneous encoder.

    Args:
        edge_types: relations (forward and reverse) the model passes messages over.
        num_categories, num_brands: metadata vocabularies.
        text_dim: width of sentence vectors (items, queries); 0 = none.
        hidden: width of every layer and of the output.
        num_layers: K message-passing rounds.
        conv: "sage" (default), "gcn" or "gin".
        aggr: neighbour aggregation for SAGE ("mean", "sum", "max").
        num_items: size of an optional item ID table (0 = purely inductive).
        neighbour_cap: top-N incoming edges per node and relation (`typed_edges`), kept with the model so a
            checkpoint encodes with the cap it was trained with.
        half_life_days, time_ref: time decay of edge weights (`decayed`; 0 = none) and its reference time (unix
            seconds, the training graph's latest event), kept with the model for the same reason.
        recency_boost, recency_scale: `recency_weights` of the edges into a user (0 = none).
        weighted: with ``conv="sage"`` and ``aggr="mean"``, neighbours are averaged by edge weight (`WeightedSAGEConv`).
        gin_aggr: GIN's neighbour aggregation, "add" (the GIN paper's sum) or "mean" (a hub's sum is not hundreds of
            times a leaf's, so one learning rate suits every node; the default of `ml.train_hetero.build_hetero`).

    ``forward(x_dict, edge_index_dict, edge_weight_dict)`` -> {node type: [N_type, hidden]}.
    """

    def __init__(
        self,
        edge_types: list[EdgeType],
        num_categories: int,
        num_brands: int,
        text_dim: int,
        hidden: int = 64,
        num_layers: int = 2,
        conv: str = "sage",
        aggr: str = "mean",
        num_items: int = 0,
        neighbour_cap: int = 50,
        half_life_days: float = 0.0,
        time_ref: int = 0,
        weighted: bool = False,
        recency_boost: float = 0.0,
        recency_scale: float = 1.0,
        gin_aggr: str = "add",
    ):
        super().__init__()
        self.edge_types, self.hidden, self.conv_name = [tuple(et) for et in edge_types], hidden, conv
        self._hparams = {
            "edge_types": self.edge_types,
            "num_categories": num_categories,
            "num_brands": num_brands,
            "text_dim": text_dim,
            "hidden": hidden,
            "num_layers": num_layers,
            "conv": conv,
            "aggr": aggr,
            "num_items": num_items,
            "neighbour_cap": neighbour_cap,
            "half_life_days": half_life_days,
            "time_ref": time_ref,
            "weighted": weighted,
            "recency_boost": recency_boost,
            "recency_scale": recency_scale,
            "gin_aggr": gin_aggr,
        }
        self.gin_aggr = gin_aggr
        self.recency_boost, self.recency_scale = recency_boost, recency_scale
        self.neighbour_cap, self.half_life_s, self.time_ref = neighbour_cap, half_life_days * 86400.0, time_ref
        self.weighted = weighted and conv == "sage" and aggr == "mean"
        self.user_start = nn.Parameter(torch.zeros(hidden))
        self.category = nn.Embedding(max(num_categories, 1), hidden)
        self.brand = nn.Embedding(max(num_brands, 1), hidden)
        self.text = nn.Linear(text_dim, hidden) if text_dim else None
        self.item_id = nn.Embedding(num_items, hidden) if num_items else None
        self.convs = nn.ModuleList(
            HeteroConv({et: self._conv(conv, aggr) for et in self.edge_types}, aggr="sum") for _ in range(num_layers)
        )
        self.reset_parameters()

    def _conv(self, conv: str, aggr: str) -> nn.Module:
        h = self.hidden
        if conv == "sage":
            return WeightedSAGEConv(h, h) if self.weighted else SAGEConv((h, h), h, aggr=aggr)
        if conv == "gcn":
            return BipartiteGCNConv(h, h)
        if conv == "gin":
            mlp = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
            return GINConv(mlp, train_eps=True, aggr=self.gin_aggr)
        raise ValueError(f"unknown conv {conv!r}")

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user_start, std=0.1)
        for m in (self.category, self.brand, self.item_id):
            if m is not None:
                nn.init.normal_(m.weight, std=0.1)
        if self.text is not None:
            self.text.reset_parameters()
        for layer in self.convs:
            for c in layer.convs.values():
                c.reset_parameters()

    def hparams(self) -> dict:
        """Constructor arguments (a checkpoint rebuilds the model from them)."""
        return dict(self._hparams)

    @property
    def device(self) -> torch.device:
        return self.user_start.device

    def edges(
        self, graph: InteractionGraph, context: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[dict[EdgeType, Tensor], dict[EdgeType, Tensor]]:
        """`typed_edges` of ``graph`` under this model's cap, time decay and recency (``context``: see there), on
        the model's device."""
        index, weight = typed_edges(
            graph, self.neighbour_cap, self.half_life_s, self.time_ref, self.recency_boost, self.recency_scale, context
        )
        dev = self.device
        return {et: e.to(dev) for et, e in index.items()}, {et: w.to(dev) for et, w in weight.items()}

    def interaction_weights(self, users: np.ndarray, weight: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
        """`interaction_weights` under this model's decay and recency: (into the item, into the user), on the CPU."""
        return interaction_weights(users, weight, time, self.half_life_s, self.time_ref, self.recency_boost, self.recency_scale)

    def inputs(self, graph: InteractionGraph, item_text: Tensor | None = None, query_text: Tensor | None = None) -> dict[str, Tensor]:
        """Layer-0 vectors of every node type present in ``graph``, on the model's device (the graph's tensors and
        the sentence vectors may be on any device)."""
        dev, n_i = self.device, graph.num_items
        ic = graph.item_category.to(dev)
        zeros = torch.zeros(n_i, self.hidden, device=dev)
        cat_sum = zeros.index_add(0, ic[0], self.category(ic[1])) if ic.numel() else zeros
        cnt = torch.bincount(ic[0], minlength=n_i).clamp(min=1).unsqueeze(-1) if ic.numel() else 1
        b = graph.item_brand.to(dev)
        item = cat_sum / cnt + self.brand(b.clamp(min=0)) * (b >= 0).unsqueeze(-1)
        if self.text is not None and item_text is not None:
            item = item + self.text(item_text.to(dev))
        if self.item_id is not None:
            rows = self.item_id.weight[:n_i]
            # items added since training have no ID row: they start from their metadata alone
            item = item + (torch.cat([rows, rows.new_zeros(n_i - rows.size(0), self.hidden)]) if n_i > rows.size(0) else rows)
        x = {
            "user": self.user_start.expand(graph.num_users, -1),
            "item": item,
            "category": self.category.weight[: max(graph.num_categories, 1)],
            "brand": self.brand.weight[: max(graph.num_brands, 1)],
        }
        if graph.query_ids:
            q = (
                self.text(query_text.to(dev))
                if self.text is not None and query_text is not None
                else torch.zeros(len(graph.query_ids), self.hidden, device=dev)
            )
            x["query"] = q
        return x

    def forward(
        self,
        x_dict: dict[str, Tensor],
        edge_index_dict: dict[EdgeType, Tensor],
        edge_weight_dict: dict[EdgeType, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        dev = self.device
        x_dict = {k: v.to(dev) for k, v in x_dict.items()}
        eis = {et: e.to(dev) for et, e in edge_index_dict.items() if et in self.edge_types}
        for i, layer in enumerate(self.convs):
            kwargs = {}
            if (self.conv_name == "gcn" or self.weighted) and edge_weight_dict is not None:
                kwargs = {"edge_weight_dict": {et: edge_weight_dict[et].to(dev) for et in eis}}
            out = layer(x_dict, eis, **kwargs)
            # node types without incoming edges keep their vectors
            out = {k: out.get(k, v) for k, v in x_dict.items()}
            x_dict = out if i == len(self.convs) - 1 else {k: torch.relu(v) for k, v in out.items()}
        return x_dict
