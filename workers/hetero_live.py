"""A K-layer heterogeneous checkpoint (`ml.encoders.hetero_gnn.HeteroGNN`) applied to live rows.

Rows from ``graphdb.subgraph`` in, vectors out; nothing here talks to Neo4j (``workers.hetero_recompute`` does).
The live graph is laid out as the worker trained it (``workers.live.training_graph``): one user->item relation
(one edge per behaviour type), item categories with their ancestors, one brand, and the model adds every reverse.
Categories and brands are indexed by the checkpoint's vocabularies (unknown ones are left out), and an item known
to the version keeps the layer-0 input it had at training time (metadata and text, ID row); a new item gets one
from its live metadata, without an ID row.

Edge weights are the training's (`weigh`: `HeteroGNN.interaction_weights`, one definition): the event strength
decayed by age from the version's reference time and, on the edges into a user, the recency weight of the edge's
rank among all of the user's rows, so the served vectors are the trained model's forward on the live graph.

What a vector depends on (the receptive field, invariant 3): node v's layer-k output reads its own layer-(k-1)
output and those of its capped in-neighbours (`user_in` / `item_in`: top ``neighbour_cap`` edges by weight, ties
by the source's id; the same rule as `ml.sampling.cap_neighbours`, which `typed_edges` applies). So a subgraph that
holds, for every node whose layer-k output (k >= 1) is needed, every edge of its cap (and, for such a user, its
whole history for the ranks: `encode`'s ``histories``), gives those nodes exactly the outputs of the whole graph:
`encode` on the pulled rows equals `encode` on every row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import Checkpoint
from ml.encoders.hetero_gnn import HeteroGNN
from ml.interaction_graph import EdgeType, InteractionGraph
from ml.text import TextEncoder
from workers.hetero_side import Conv, HeteroSideCard
from workers.live import interaction_set, item_text

Node = tuple[str, str]  # (node type, id): ("user", pseudonym), ("item", id), ("category", id), ("brand", id)
RELATION = ("user", "interacted", "item")  # the worker's one interaction relation (workers.live.training_graph)
REVERSE = ("item", "rev_interacted", "user")


class HeteroLive:
    """A hetero checkpoint ready to embed live rows (``device``: CUDA when present, the same code on CPU)."""

    def __init__(self, ck: Checkpoint, text_encoder: TextEncoder | None = None, device: torch.device = torch.device("cpu")):
        if not isinstance(ck.model, HeteroGNN):
            raise TypeError(f"{ck.version} is not a heterogeneous encoder")
        self.ck, self.version, self.text_encoder, self.device = ck, ck.version, text_encoder, device
        self.model: HeteroGNN = ck.model.to(device).eval()
        self.dim = self.model.hidden
        self.cap = self.model.neighbour_cap
        self.layers = len(self.model.convs)
        self.kind = f"hetero-{self.model.conv_name}"
        self.row = ck.item_index()
        self.category_index = {c: i for i, c in enumerate(ck.category_names)}
        self.brand_index = {b: i for i, b in enumerate(ck.brand_names)}
        self.reads_text = self.model.text is not None and ck.item_text is not None
        # whether a server can embed a session under this version from stored numbers (`side_card`)
        m = self.model
        into_user = [et for et in m.edge_types if et[2] == "user"]
        self.sessions = m.conv_name != "gcn" and self.layers == 2 and into_user == [REVERSE] and RELATION in m.edge_types
        n = len(ck.item_ids)
        brand = ck.item_brand if ck.item_brand is not None else torch.full((n,), -1, dtype=torch.long)
        version_graph = self._graph(["_"], ck.item_ids, {}, _pairs_or_empty(ck.item_category), brand)
        with torch.no_grad():
            x = self.model.inputs(version_graph, _dev(ck.item_text if self.reads_text else None, device))
        self.x_user = x["user"][0]  # every user starts from the same learned vector
        self.x_known = x["item"]  # [I, hidden] the version's items as trained
        self.x_category, self.x_brand = x["category"], x["brand"]

    # ------------------------------------------------------------------ caps (the receptive field)
    def categories_of(self, row: ItemRow) -> list[str]:
        """The item's categories the version knows, in vocabulary order (the cap's tie order)."""
        return sorted((c for c in row.categories if c in self.category_index), key=self.category_index.__getitem__)

    def brand_of(self, row: ItemRow) -> str | None:
        return row.brand if row.brand is not None and row.brand in self.brand_index else None

    def weigh(self, edges: Sequence[EdgeRow]) -> tuple[list[float], list[float]]:
        """The model's weights of these rows as its forward holds them (float32, `HeteroGNN.interaction_weights`,
        the training's own): (into the item, into the user). A user's recency ranks read that user's rows here, so
        the weights into a user are the whole graph's when every row of that user is given."""
        if not edges:
            return [], []
        users = {u: n for n, u in enumerate(sorted({e.user for e in edges}))}
        es = interaction_set(edges, users, {e.item: 0 for e in edges})
        into_item, into_user = self.model.interaction_weights(es.index[0].numpy(), es.weight, es.time)
        return into_item.tolist(), into_user.tolist()

    def user_in(self, edges: Iterable[EdgeRow]) -> list[tuple[EdgeRow, float]]:
        """A user's kept in-edges (from items) with their weights: top ``cap`` by weight, ties by item id. ``edges``:
        every row of the user (the recency ranks read them all)."""
        edges = list(edges)
        return self.top_items(zip(edges, self.weigh(edges)[1]))

    def item_in(self, edges: Iterable[EdgeRow]) -> list[tuple[EdgeRow, float]]:
        """An item's kept in-edges from users with their weights: top ``cap`` by weight, ties by user id."""
        edges = list(edges)
        return self.top_users(zip(edges, self.weigh(edges)[0]))

    def top_items(self, weighted: Iterable[tuple[EdgeRow, float]]) -> list[tuple[EdgeRow, float]]:
        """The cap of a user's weighed in-edges: top ``cap`` by weight, ties by item id (`cap_neighbours`' rule)."""
        return sorted(weighted, key=lambda p: (-p[1], p[0].item))[: self.cap]

    def top_users(self, weighted: Iterable[tuple[EdgeRow, float]]) -> list[tuple[EdgeRow, float]]:
        """The cap of an item's weighed in-edges from users: top ``cap`` by weight, ties by user id."""
        return sorted(weighted, key=lambda p: (-p[1], p[0].user))[: self.cap]

    def cap_of_user(self, edges: Iterable[EdgeRow]) -> list[EdgeRow]:
        """A user's kept in-edges (`user_in`, every row of the user given)."""
        return [e for e, _ in self.user_in(edges)]

    def cap_of_item(self, edges: Iterable[EdgeRow], row: ItemRow | None) -> tuple[list[EdgeRow], list[str], str | None]:
        """An item's kept in-edges: (from users, `item_in`; categories; brand)."""
        return [e for e, _ in self.item_in(edges)], *self.meta_of(row)

    def meta_of(self, row: ItemRow | None) -> tuple[list[str], str | None]:
        """An item's kept in-edges from its categories (the first ``cap`` in vocabulary order) and its brand."""
        return (self.categories_of(row)[: self.cap], self.brand_of(row)) if row is not None else ([], None)

    def cap_of_members(self, members: Sequence[str]) -> list[str]:
        """A category's or brand's kept in-edges: every edge weighs 1, so the ``cap`` smallest item ids."""
        return sorted(members)[: self.cap]

    @staticmethod
    def fingerprint(parts: Iterable[object]) -> str:
        """A digest of a capped in-list: equal digests, equal inputs from the neighbours."""
        return hashlib.sha1(repr(list(parts)).encode()).hexdigest()[:20]

    def user_print(self, kept: Sequence[tuple[EdgeRow, float]]) -> str:
        """Of `user_in`'s list: the kept sources and their weights (a new event re-ranks the user's older edges)."""
        return self.fingerprint(sorted((e.item, w) for e, w in kept))

    def item_print(self, kept: Sequence[tuple[EdgeRow, float]], row: ItemRow | None) -> str:
        """Of `item_in`'s list and the item's categories and brand."""
        return self.fingerprint([sorted((e.user, w) for e, w in kept), *self.meta_of(row)])

    # ------------------------------------------------------------------ sessions
    def side_card(self) -> HeteroSideCard | None:
        """What a server needs to embed a session under this version (`workers.hetero_side`): None where a session
        cannot be embedded exactly from stored numbers (GCN, K other than 2, or a relation into users other than
        the interactions')."""
        m = self.model
        if not self.sessions:
            return None
        if m.conv_name == "gin":
            kind = f"gin-{m.gin_aggr}"
        else:
            kind = "sage-weighted" if m.weighted else f"sage-{m.convs[0].convs[REVERSE].aggr}"

        def conv(layer: int, et: tuple[str, str, str]) -> Conv:
            params = m.convs[layer].convs[et].named_parameters()
            return Conv(kind, {n: p.detach().to("cpu", torch.float32).numpy().copy() for n, p in params})

        return HeteroSideCard(
            self.version,
            self.cap,
            float(m.half_life_s),
            int(m.time_ref),
            float(m.recency_boost),
            float(m.recency_scale),
            _np(self.x_user),
            (conv(0, REVERSE), conv(1, REVERSE)),
            conv(0, RELATION),
        )

    # ------------------------------------------------------------------ forward
    def _graph(
        self, user_ids: list[str], item_ids: list[str], rel: dict, item_category: torch.Tensor, item_brand: torch.Tensor
    ) -> InteractionGraph:
        return InteractionGraph(
            num_users=len(user_ids),
            num_items=len(item_ids),
            edges=rel,
            user_ids=user_ids,
            item_ids=item_ids,
            num_categories=len(self.ck.category_names),
            num_brands=len(self.ck.brand_names),
            item_category=item_category,
            item_brand=item_brand,
            category_names=list(self.ck.category_names),
            brand_names=list(self.ck.brand_names),
        )

    @torch.no_grad()
    def item_inputs(self, rows: Sequence[ItemRow]) -> torch.Tensor:
        """Layer-0 vectors [n, hidden]: the version's own for its items, else from live metadata (no ID row)."""
        x = torch.zeros(len(rows), self.dim, device=self.device)
        known = [n for n, r in enumerate(rows) if r.id in self.row]
        new = [n for n, r in enumerate(rows) if r.id not in self.row]
        if known:
            x[known] = self.x_known[torch.tensor([self.row[rows[n].id] for n in known], device=self.device)]
        if new:
            x[new] = self._new_inputs([rows[n] for n in new])
        return x

    def _new_inputs(self, rows: Sequence[ItemRow]) -> torch.Tensor:
        m = self.model
        pairs = [(n, self.category_index[c]) for n, r in enumerate(rows) for c in self.categories_of(r)]
        brands = [self.brand_index[b] if (b := self.brand_of(r)) is not None else -1 for r in rows]
        text = None
        if self.reads_text and self.text_encoder is not None:
            text = self.text_encoder.encode([item_text(r) for r in rows]).to(self.device)
        out = []
        # `HeteroGNN.inputs` adds ID rows by position; a new item has none, so they are taken off again (in chunks no
        # longer than the ID table).
        step = m.item_id.num_embeddings if m.item_id is not None else max(len(rows), 1)
        for s in range(0, len(rows), step):
            part = range(s, min(s + step, len(rows)))
            sub_pairs = [(n - s, c) for n, c in pairs if s <= n < part.stop]
            g = self._graph(["_"], [rows[n].id for n in part], {}, _pairs_or_empty(sub_pairs), torch.tensor(brands[s : part.stop]))
            x = m.inputs(g, None if text is None else text[s : part.stop])["item"]
            if m.item_id is not None:
                x = x - m.item_id.weight[: len(part)]
            out.append(x)
        return torch.cat(out)

    @torch.no_grad()
    def encode(
        self,
        user_ids: Iterable[str],
        edges: Iterable[EdgeRow],
        rows: Iterable[ItemRow],
        layers: Sequence[int] = (),
        given: Mapping[Node, np.ndarray] | None = None,
        histories: Mapping[str, Sequence[EdgeRow]] | None = None,
    ) -> Encoded:
        """Vectors of every user and item in the given rows: ``rows`` must hold every item of ``edges``; users are
        ``user_ids`` and every user of ``edges``. Exact for a node whose cap, and whose neighbours' caps down to
        layer 1, are inside the rows (module docstring). ``layers``: also keep these intermediate layers' outputs
        (1..K-1, before the activation) of every node.

        ``given``: the layer-(K-1) outputs (before the activation) of the nodes, from which only the last layer
        runs: then a node's vector is exact when its own cap is inside the rows and ``given`` holds it and its cap's
        sources (a node missing from ``given`` reads zeros). K = 1 ignores ``given``.

        ``histories``: every row of some users (by user id), which the recency weights of their in-edges rank by,
        as the whole graph ranks them; a user without one is ranked by its rows in ``edges``. Edge weights are the
        training's (`HeteroGNN.edges`: time decay, recency)."""
        edges = list(edges)
        by_id = {r.id: r for r in rows}
        item_ids = sorted(by_id)
        user_ids = sorted(set(user_ids) | {e.user for e in edges})
        ids = {"user": user_ids, "item": item_ids, "category": list(self.ck.category_names), "brand": list(self.ck.brand_names)}
        ii = {s: i for i, s in enumerate(item_ids)}
        ui = {s: i for i, s in enumerate(user_ids)}
        rel = {RELATION: interaction_set(edges, ui, ii)}
        pairs = [(ii[i], self.category_index[c]) for i in item_ids for c in self.categories_of(by_id[i])]
        brands = torch.tensor(
            [self.brand_index[b] if (b := self.brand_of(by_id[i])) is not None else -1 for i in item_ids], dtype=torch.long
        )
        graph = self._graph(user_ids, item_ids, rel, _pairs_or_empty(pairs), brands)
        eis, ews = self.model.edges(graph, _context(histories, ui))
        for et in self.model.edge_types:  # a relation with no edge here still adds its root term, as in the full graph
            if et not in eis:
                eis[et], ews[et] = torch.empty(2, 0, dtype=torch.long, device=self.device), torch.empty(0, device=self.device)
        if given is not None and self.layers > 1:
            out = self._last_layer({t: self._given(given, t, ids[t]) for t in ids}, eis, ews)
            return Encoded(*({n: v for n, v in zip(ids[t], _np(out[t]))} for t in ("user", "item")))
        x = {
            "user": self.x_user.expand(len(user_ids), -1),
            "item": self.item_inputs([by_id[i] for i in item_ids]),
            "category": self.x_category,
            "brand": self.x_brand,
        }
        # intermediate layers through forward hooks on the layer modules: the model's own forward, untouched
        kept: dict[int, dict[str, torch.Tensor]] = {}
        if 0 in layers:
            kept[0] = {"item": x["item"]}
        hooks = [
            self.model.convs[k - 1].register_forward_hook(lambda _m, _i, out, k=k: kept.__setitem__(k, dict(out)))
            for k in layers
            if k > 0
        ]
        try:
            out = self.model(x, eis, ews)
        finally:
            for h in hooks:
                h.remove()
        res = Encoded(*({n: v for n, v in zip(ids[t], _np(out[t]))} for t in ("user", "item")))
        for k, by_type in kept.items():
            res.layers[k] = {(t, n): v for t, vs in by_type.items() if t in ids for n, v in zip(ids[t], _np(vs))}
        return res

    def _given(self, given: Mapping[Node, np.ndarray], kind: str, ids: Sequence[str]) -> torch.Tensor:
        """[len(ids), hidden] rows of ``given`` for one node type, zeros where it has none."""
        x = np.zeros((len(ids), self.dim), np.float32)
        for n, nid in enumerate(ids):
            v = given.get((kind, nid))
            if v is not None:
                x[n] = v
        return torch.from_numpy(x).to(self.device)

    def _last_layer(
        self, h: dict[str, torch.Tensor], eis: dict[EdgeType, torch.Tensor], ews: dict[EdgeType, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The model's last layer on layer-(K-1) outputs ``h`` (before the activation): the last step of
        `HeteroGNN.forward`, with the same activation, relations and edge weights."""
        m = self.model
        x = {k: torch.relu(v) for k, v in h.items()}
        eis = {et: e for et, e in eis.items() if et in m.edge_types}
        kwargs = {"edge_weight_dict": {et: ews[et] for et in eis}} if m.conv_name == "gcn" or m.weighted else {}
        out = m.convs[-1](x, eis, **kwargs)
        return {k: out.get(k, v) for k, v in x.items()}


@dataclass
class Encoded:
    users: dict[str, np.ndarray]  # user id -> output vector
    items: dict[str, np.ndarray]  # item id -> output vector
    layers: dict[int, dict[Node, np.ndarray]] = field(default_factory=dict)  # layer -> node -> its output there


def _context(histories: Mapping[str, Sequence[EdgeRow]] | None, user_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(user index, time) of the histories' rows of the users in ``user_index``: `HeteroGNN.edges`' ``context``."""
    if not histories:
        return None
    rows = [e for u in user_index if u in histories for e in histories[u]]
    es = interaction_set(rows, user_index, {e.item: 0 for e in rows})
    return es.index[0].numpy(), es.time.numpy()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _pairs_or_empty(pairs: torch.Tensor | Sequence[tuple[int, int]] | None) -> torch.Tensor:
    if isinstance(pairs, torch.Tensor):
        return pairs
    return torch.tensor(list(pairs or []), dtype=torch.long).reshape(-1, 2).T.contiguous()


def _dev(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)
