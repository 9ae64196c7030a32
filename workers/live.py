"""The served model applied to the live graph: rows from ``graphdb.subgraph`` in, vectors out.

What a vector depends on (the receptive field that makes incremental recompute exact, invariant 3):

* an item known to the checkpoint: nothing live. Its vector is fixed for the model version (ID row + the
  metadata it had at training time), so an event on a hub item changes no other node's vector;
* an item new since training: its own live metadata (text neighbours among the known items when the model
  reads text, else its category/brand embeddings), folded together with what its first shoppers bought before
  it (`fold_sets`): its first ``fold_users`` shoppers by first interaction time (ties by user id), and for each
  the ``fold_context`` known items they met last before it. Those sets stop changing once the item has
  ``fold_users`` shoppers, so a new hub item's vector, and the fan-out to its users, settle;
* a user: their top ``user_cap`` items by time-decayed weight (ties by item id), each weighted by the recency of
  its latest interaction among them (`ml.recency`): one hop, item -> user;
* a search query: its text.

So a change to a user's edges affects that user and the new items among their edges (whose first shoppers they
may be), and a change to a new item's vector affects its users. ``workers.recompute`` turns this into the affected set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.model_state import UserSideCard
from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import Checkpoint
from ml.cold import cold_bases
from ml.interaction_graph import EdgeSet, InteractionGraph, csr_to_torch
from ml.signals import blend_cold, typed_weight
from ml.text import TextEncoder
from ml.trend import TrendParams, trend_degree
from workers.user_side import capped_neighbours, item_weights, latest_times, rank_keys

DAY_S = 86400.0

__all__ = ["LiveEncoder", "capped_neighbours", "item_text", "latest_times", "rank_keys", "training_graph"]


def item_text(row: ItemRow) -> str:
    """Title and description as one string, the form the dataset loaders use."""
    title, desc = (row.title or "").strip(), (row.description or "").strip()
    return (title + ". " + desc).strip(". ") if desc else title


def first_times(edges: Iterable[EdgeRow]) -> dict[tuple[str, str], float]:
    """Each (user, item) pair's first interaction time over its behaviour types (``last_ts`` where the first is
    not stored)."""
    out: dict[tuple[str, str], float] = {}
    for e in edges:
        key, t = (e.user, e.item), e.first
        if key not in out or t < out[key]:
            out[key] = t
    return out


def fold_sets(
    new_ids: Sequence[str], edges: Iterable[EdgeRow], is_fixed: Callable[[str], bool], users: int, context: int
) -> dict[str, tuple[int, list[list[str]], list[float]]]:
    """Per new item: (how many first shoppers it has, up to ``users``; for each, the known items they met
    before it; and when each first met it). First shoppers are ordered by their first interaction with the item,
    ties by user id; a shopper's items "before" are those first met strictly earlier, the latest ``context`` of
    them (ties by item id).

    ``edges`` must hold every edge of each item's first ``users`` shoppers (more is fine): the result depends on
    nothing else, so the live path (`graphdb.subgraph.first_users`, then those users' edges) and the full path
    (every edge) agree.
    """
    wanted = set(new_ids)
    first = first_times(edges)
    of_item: dict[str, list[tuple[float, str]]] = {i: [] for i in new_ids}
    of_user: dict[str, list[tuple[float, str]]] = {}
    for (u, i), t in first.items():
        if i in wanted:
            of_item[i].append((t, u))
        elif is_fixed(i):
            of_user.setdefault(u, []).append((t, i))
    out: dict[str, tuple[int, list[list[str]], list[float]]] = {}
    for i in new_ids:
        early = sorted(of_item[i])[:users]
        sets = []
        for t, u in early:
            before = sorted((p for p in of_user.get(u, ()) if p[0] < t), key=lambda p: (-p[0], p[1]))
            sets.append([j for _, j in before[:context]])
        out[i] = (len(early), sets, [t for t, _ in early])
    return out


@dataclass
class LiveEncoder:
    """A checkpoint ready to embed live rows. ``device`` is CUDA when present (same code on CPU)."""

    ck: Checkpoint
    user_cap: int
    half_life_days: float
    text_encoder: TextEncoder | None = None
    device: torch.device = torch.device("cpu")
    # Fold-in of new items (`fold_sets`): first shoppers read, known items per shopper, and the prior weight of
    # the metadata vector in shoppers (0 shoppers: metadata only; ``fold_users`` 0 turns the fold-in off).
    fold_users: int = 0
    fold_context: int = 50
    fold_prior: float = 2.0
    # A folded item's popularity prior from its first shoppers' rate (`ml.trend`; horizon 0: their count).
    fold_trend_horizon_days: float = 0.0
    fold_trend_prior_days: float = 1.0
    fold_trend_min_shoppers: int = 10
    # Searches in the user vector (`users`): each of a user's newest ``search_cap`` weighs ``search_weight``.
    search_weight: float = 0.0
    search_cap: int = 5

    def __post_init__(self) -> None:
        m = self.ck.model.to(self.device).eval()
        self.version = self.ck.version
        self.dim = m.dim
        self.row = self.ck.item_index()
        self.category_index = {c: i for i, c in enumerate(self.ck.category_names)}
        self.brand_index = {b: i for i, b in enumerate(self.ck.brand_names)}
        self.reads_text = m.text is not None and self.ck.item_text is not None
        self.warm_text = self.ck.item_text.to(self.device) if self.reads_text else None
        with torch.no_grad():
            n = m.num_items
            meta = m.meta(_dev(self.ck.item_category, self.device), _dev(self.ck.item_brand, self.device), self.warm_text, n)
            self.x_known = m.item_base(meta)  # [I, dim] bases of the version's items
            self.z_known = m.item_out(self.x_known)  # [I, dim] item vectors of the version
            self.in_known = m.item_in(self.x_known)  # [I, dim] what a known item sends to its users
            self.filter = m.user_scale().detach()
            self.s_known = self.in_scale(m.item_degree)  # [I] s_j of the version's items (workers.user_side)
        # Items in the version without interactions at training time (metadata only): with the fold-in they learn
        # from their shoppers like items new since training. Checkpoints before `item_trained` count all as trained.
        trained = self.ck.item_trained
        untrained = [] if trained is None or self.fold_users == 0 else torch.nonzero(~trained.bool()).flatten().tolist()
        self.untrained = {self.ck.item_ids[j] for j in untrained}
        scale = self.ck.fold_scale
        self.fold_scale = torch.ones(self.dim, device=self.device) if scale is None else scale.to(self.device)
        days = self.fold_trend_horizon_days, self.fold_trend_prior_days
        self.trend = TrendParams(days[0] * DAY_S, days[1] * DAY_S, self.fold_trend_min_shoppers)
        self.trend_cap = float(m.item_degree.max()) if m.item_degree.numel() else 1.0

    def in_scale(self, degree: torch.Tensor) -> torch.Tensor:
        """``s_j = d_j^(-a-b)`` [n] of items of the given degrees: ``in_j = s_j z_j / |h|^1/2`` elementwise, so a
        server holding ``z_j`` and ``s_j`` embeds a user as the model does (`workers.user_side.user_vector`)."""
        m = self.ck.model
        return degree.to(self.device).clamp(min=1.0).pow(-(m.user_norm + m.item_norm))

    @property
    def behaviour_weights(self) -> dict[str, float]:
        """The version's behaviour type weights (`ml.signals.typed_weight`): what `pair_strengths` takes."""
        return dict(getattr(self.ck.model, "behaviour_weights", None) or {})

    def card(self) -> UserSideCard:
        """The version's user side as servers read it (``graphdb.model_state``)."""
        m = self.ck.model
        sign = self.filter.sign().to("cpu", torch.float32).numpy()
        return UserSideCard(
            self.version,
            sign,
            self.user_cap,
            self.half_life_days,
            m.recency_boost,
            m.recency_scale,
            m.behaviour_power,
            m.decay_half_life_days,
            self.behaviour_weights,
        )

    # ---------------------------------------------------------------- items
    def is_fixed(self, item_id: str) -> bool:
        """Whether the item's vector is fixed for the version (known to it, and learned from interactions or no
        fold-in); every other item is embedded by `new_items`."""
        return item_id in self.row and item_id not in self.untrained

    @torch.no_grad()
    def new_items(self, rows: Sequence[ItemRow], edges: Iterable[EdgeRow] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(item vectors [n, dim], what each sends to its users [n, dim]) of items whose vector is not fixed for
        the version (`is_fixed`); see `new_items_scaled`."""
        out, sends, _ = self.new_items_scaled(rows, edges)
        return out, sends

    @torch.no_grad()
    def new_items_scaled(
        self, rows: Sequence[ItemRow], edges: Iterable[EdgeRow] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item vectors [n, dim], what each sends to its users [n, dim], their ``in_scale`` [n]) of items whose
        vector is not fixed for the version (`is_fixed`).

        The base is the version's own for its items without training interactions, else their live metadata: text
        neighbours among the known items (`ml.cold.cold_bases`), or their category/brand embeddings at degree
        1. With ``fold_users`` > 0 and ``edges`` holding their first shoppers' edges, the base becomes
        ``(p * meta + s * scale * mean_s(mean of x_j over the shopper's items before)) / (p + s)`` over the ``s``
        first shoppers with items before (``p`` = ``fold_prior``, ``scale`` the version's `ml.fold` scale),
        and the degree is at least the number of first shoppers: the items its shoppers had met are what it is
        like, and it is as popular as its shoppers make it; with ``fold_trend_horizon_days`` > 0, as their rate
        makes it (`ml.trend`). Without shoppers both are unchanged.
        """
        if not rows:
            empty = torch.zeros(0, self.dim, device=self.device)
            return empty, empty, torch.zeros(0, device=self.device)
        m = self.ck.model
        in_version = [n for n, r in enumerate(rows) if r.id in self.row]
        others = [n for n, r in enumerate(rows) if r.id not in self.row]
        x = torch.zeros(len(rows), self.dim, device=self.device)
        deg = torch.ones(len(rows), device=self.device)
        if in_version:
            at = torch.tensor([self.row[rows[n].id] for n in in_version], dtype=torch.long, device=self.device)
            x[in_version], deg[in_version] = self.x_known[at], m.item_degree.to(self.device)[at]
        if others:
            x[others], deg[others] = self._meta_bases([rows[n] for n in others])
        if self.fold_users > 0:
            x, deg = self._fold(rows, edges, x, deg)
        return m.item_out(x, deg), m.item_in(x, deg), self.in_scale(deg)

    def _meta_bases(self, rows: Sequence[ItemRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """(bases [n, dim], degrees [n]) of new items from their metadata alone."""
        m = self.ck.model
        pairs = [(i, self.category_index[c]) for i, r in enumerate(rows) for c in r.categories if c in self.category_index]
        cats = torch.tensor(pairs, dtype=torch.long, device=self.device).reshape(-1, 2).T
        brands = torch.tensor(
            [self.brand_index.get(r.brand, -1) if r.brand else -1 for r in rows], dtype=torch.long, device=self.device
        )
        if self.reads_text and self.text_encoder is not None:
            text = self.text_encoder.encode([item_text(r) for r in rows]).to(self.device)
            x_nb, deg = cold_bases(
                text,
                self.warm_text,
                self.x_known,
                m.item_degree,
                self.ck.model_settings.get("cold_neighbours", 30),
                self.ck.model_settings.get("cold_temperature", 0.1),
            )
            return blend_cold(x_nb, m.meta(cats, brands, text, len(rows)), m.cold_meta_blend), deg
        meta = m.meta(cats, brands, None, len(rows))
        x = meta if meta is not None else torch.zeros(len(rows), self.dim, device=self.device)
        return x, torch.ones(len(rows), device=self.device)  # degree 1, as `ml.embed.served_vectors` has it

    def _fold(
        self, rows: Sequence[ItemRow], edges: Iterable[EdgeRow], x: torch.Tensor, deg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sets = fold_sets([r.id for r in rows], edges, self.is_fixed, self.fold_users, self.fold_context)
        # One sparse row per item averaging its shoppers' per-shopper means of known bases.
        rows_i, cols, vals, shoppers, firsts = [], [], [], [], []
        for n, r in enumerate(rows):
            _, per_user, times = sets[r.id]
            used = [s for s in per_user if s]
            for s in used:
                rows_i.extend([n] * len(s))
                cols.extend(self.row[j] for j in s)
                vals.extend([1.0 / (len(s) * len(used))] * len(s))
            shoppers.append(len(used))
            firsts.append(trend_degree(times, self.trend, self.trend_cap))
        s = torch.tensor(shoppers, dtype=torch.float32, device=self.device)
        folded = s > 0
        if bool(folded.any()):
            mix = sp.csr_matrix((np.asarray(vals, np.float32), (rows_i, cols)), shape=(len(rows), len(self.row)))
            ctx = (csr_to_torch(mix).to(self.device) @ self.x_known) * self.fold_scale
            p = self.fold_prior
            blend = (p * x + s.unsqueeze(-1) * ctx) / (p + s).unsqueeze(-1)
            x = torch.where(folded.unsqueeze(-1), blend, x)
        deg = torch.maximum(deg, torch.tensor(firsts, dtype=deg.dtype, device=self.device))
        return x, deg

    def known_scales(self, item_ids: Sequence[str]) -> torch.Tensor:
        """``in_scale`` [n] of items the version knows."""
        return self.s_known[torch.tensor([self.row[i] for i in item_ids], dtype=torch.long, device=self.device)]

    def known_vectors(self, item_ids: Sequence[str]) -> torch.Tensor:
        """Served vectors of items fixed for the version (`is_fixed`)."""
        return self.z_known[torch.tensor([self.row[i] for i in item_ids], dtype=torch.long, device=self.device)]

    # ---------------------------------------------------------------- users
    @torch.no_grad()
    def users(
        self,
        neighbours: dict[str, list[str]],
        users: Sequence[str],
        new_item_vectors: dict[str, torch.Tensor],
        times: dict[tuple[str, str], int] | None = None,
        strength: dict[tuple[str, str], float] | None = None,
        searches: Mapping[str, Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Vectors [len(users), dim]: ``h * sum_{j in cap(u)} w_uj d_j^-a x_j`` over each user's capped items
        (``neighbours`` from `capped_neighbours`), ``w_uj`` the model's recency weights of the pairs' latest
        times (``times`` from `latest_times`; without it, 1).

        ``new_item_vectors`` holds what every item not fixed for the version that the users reach sends them (the
        second tensor of `new_items`, input scale), never its served vector; it takes precedence over the version.
        """
        m = self.ck.model
        new_ids = sorted(new_item_vectors)
        new_col = {iid: len(self.row) + j for j, iid in enumerate(new_ids)}
        rows, cols = [], []
        for u_idx, u in enumerate(users):
            for item in neighbours.get(u, ()):
                col = new_col.get(item, self.row.get(item))
                if col is None:
                    raise KeyError(f"item {item!r} of user {u!r} has no vector")
                rows.append(u_idx)
                cols.append(col)
        # the weights of the one user side the servers share (workers.user_side)
        weights = item_weights(
            neighbours, users, times, m.recency_boost, m.recency_scale, strength, m.behaviour_power, m.decay_half_life_days
        )
        table = self.in_known
        if new_ids:
            table = torch.cat([table, torch.stack([new_item_vectors[i].to(self.device) for i in new_ids])])
        w = np.concatenate(weights) if weights else np.zeros(0, np.float32)
        adj = sp.csr_matrix((w, (rows, cols)), shape=(len(users), table.size(0)))
        out = csr_to_torch(adj).to(self.device) @ table
        if searches and self.search_weight:
            out = out + self.search_weight * self._search_sums(users, searches)
        return out * self.filter

    def _search_sums(self, users: Sequence[str], searches: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """[len(users), dim]: each user's searches' sends summed (``searches``: texts from `latest_searches`)."""
        texts = sorted({t for u in users for t in searches.get(u, ())})
        sums = torch.zeros(len(users), self.dim, device=self.device)
        sends = self.query_sends(texts)
        if sends is None or not texts:
            return sums
        at = {t: n for n, t in enumerate(texts)}
        for n, u in enumerate(users):
            for t in searches.get(u, ()):
                sums[n] += sends[at[t]]
        return sums

    # ---------------------------------------------------------------- queries
    @torch.no_grad()
    def query_sends(self, texts: Sequence[str]) -> torch.Tensor | None:
        """What a search sends its shopper [n, dim]: its text's base as a new item of degree 1 sends it (`queries`
        embeds the same base as an item's output); None when the model reads no text."""
        x = self._text_bases(texts)
        return x if x is None or not len(texts) else self.ck.model.item_in(x, torch.ones(len(texts), device=self.device))

    @torch.no_grad()
    def queries(self, texts: Sequence[str]) -> torch.Tensor | None:
        """Search queries embedded like an item with only its text; None when the model reads no text."""
        x = self._text_bases(texts)
        return x if x is None or not len(texts) else self.ck.model.item_out(x, torch.ones(len(texts), device=self.device))

    def _text_bases(self, texts: Sequence[str]) -> torch.Tensor | None:
        """The texts' bases [n, dim] as an item's text part (zero rows for none); None when the model reads no text."""
        m = self.ck.model
        if m.text is None or self.text_encoder is None:
            return None
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        return m.text(self.text_encoder.encode(list(texts)).to(self.device))


def _dev(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def interaction_set(
    edges: Sequence[EdgeRow], user_index: dict[str, int], item_index: dict[str, int], typed: Mapping[str, float] | None = None
) -> EdgeSet:
    """The rows as the models' user->item relation: one edge per row (one per behaviour type), its weight (times its
    behaviour type's weight in ``typed``, `ml.signals.typed_weight`) and its latest time in whole seconds (what the
    K-layer encoders decay and rank by), for training and live recompute."""
    return EdgeSet.build(
        [user_index[e.user] for e in edges],
        [item_index[e.item] for e in edges],
        [e.weight * typed_weight(e.kind, typed) for e in edges],
        [int(e.last_ts) for e in edges],
    )


def training_graph(edges: Iterable[EdgeRow], items: Sequence[ItemRow], typed: Mapping[str, float] | None = None) -> InteractionGraph:
    """The live graph as the models' tensor container: one user->item relation (weights, each times its behaviour
    type's weight in ``typed``, summed), item categories (with ancestors), brands and texts. Indices follow
    ascending external ids."""
    edges = list(edges)
    item_ids = sorted({r.id for r in items} | {e.item for e in edges})
    user_ids = sorted({e.user for e in edges})
    ii = {s: i for i, s in enumerate(item_ids)}
    ui = {s: i for i, s in enumerate(user_ids)}
    meta = {r.id: r for r in items}
    cat_names = sorted({c for r in items for c in r.categories})
    ci = {c: i for i, c in enumerate(cat_names)}
    brand_names = sorted({r.brand for r in items if r.brand})
    bi = {b: i for i, b in enumerate(brand_names)}
    pairs = [(ii[r.id], ci[c]) for r in items for c in r.categories]
    brand = [bi.get(meta[i].brand, -1) if i in meta and meta[i].brand else -1 for i in item_ids]
    texts = [item_text(meta[i]) if i in meta else "" for i in item_ids]
    return InteractionGraph(
        num_users=len(user_ids),
        num_items=len(item_ids),
        edges={("user", "interacted", "item"): interaction_set(edges, ui, ii, typed)},
        user_ids=user_ids,
        item_ids=item_ids,
        num_categories=len(cat_names),
        num_brands=len(brand_names),
        item_category=torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous(),
        item_brand=torch.tensor(brand, dtype=torch.long),
        item_text=texts if any(texts) else None,
        category_names=cat_names,
        brand_names=brand_names,
    )
