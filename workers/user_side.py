"""The served model's user side without torch: which items make up a shopper's vector, how much each weighs,
and the vector itself from the served item vectors. The worker (``workers.live.LiveEncoder.users``) and the
server (``RecommendForSession``) both use these functions, so a session embedded at request time equals a stored
user with the same events.

With the served model (``ml.encoders.spectral_sage``), a user's vector is
``u = sign(h)|h|^1/2 * sum_j w_j d_j^-a x_j`` and an item's served vector is ``z_j = |h|^1/2 d_j^b x_j``, so

    u = sign(h) * sum_j w_j s_j z_j        with the per-item scalar s_j = d_j^(-a-b) (``in_scale``)

over the user's top ``user_cap`` items by time-decayed weight (`capped_neighbours`), ``w_j`` the recency
weights of the pairs' latest times (`ml.recency`). ``UserSideCard`` holds what the server needs besides the
item vectors and scales; the worker stores it with the model version (``graphdb.model_state``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from graphdb.model_state import UserSideCard
from graphdb.searches import SearchRow
from graphdb.subgraph import EdgeRow
from ml.recency import recency_weights
from ml.signals import half_life_seconds, signal_weights, typed_weight

__all__ = [
    "UserSideCard",
    "capped_neighbours",
    "item_weights",
    "latest_searches",
    "latest_times",
    "pair_strengths",
    "rank_keys",
    "user_vector",
    "weighted_sum",
]


def rank_keys(edges: Sequence[EdgeRow], half_life_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (user, item) pair: log of the summed decayed weight over behaviour types, up to a constant.

    ``w * 2^-((t - last_ts)/h)`` orders pairs the same way at every ``t``, so the key drops ``t``:
    ``log(sum_r w_r * exp(k * last_r))`` (log-sum-exp, no overflow). Terms are summed in a fixed order, so the
    key does not depend on the order Neo4j returned the edges in.

    Returns (user ids, item ids, pair user index, pair item index, pair key); ids are sorted, so index order is
    id order.
    """
    k = math.log(2.0) / (half_life_days * 86400.0)
    users, u_idx = np.unique(np.array([e.user for e in edges], dtype=object).astype(str), return_inverse=True)
    items, i_idx = np.unique(np.array([e.item for e in edges], dtype=object).astype(str), return_inverse=True)
    w = np.array([e.weight for e in edges], dtype=np.float64)
    key = np.log(np.maximum(w, 1e-30)) + k * np.array([e.last_ts for e in edges], dtype=np.float64)
    pair = u_idx.astype(np.int64) * len(items) + i_idx
    order = np.lexsort((key, pair))
    pair, key = pair[order], key[order]
    uniq, starts = np.unique(pair, return_index=True)
    top = np.maximum.reduceat(key, starts)
    sums = np.add.reduceat(np.exp(key - np.repeat(top, np.diff(np.r_[starts, len(key)]))), starts)
    return users, items, uniq // len(items), uniq % len(items), top + np.log(sums)


def capped_neighbours(edges: Sequence[EdgeRow], cap: int, half_life_days: float) -> dict[str, list[str]]:
    """Each user's top ``cap`` items: highest key first, ties by item id; deterministic for a given edge set."""
    if not edges:
        return {}
    users, items, pu, pi, key = rank_keys(edges, half_life_days)
    order = np.lexsort((pi, -key, pu))  # user, then key descending, then item id
    pu, pi = pu[order], pi[order]
    starts = np.r_[0, np.flatnonzero(np.diff(pu)) + 1]
    rank = np.arange(len(pu)) - np.repeat(starts, np.diff(np.r_[starts, len(pu)]))
    keep = rank < cap
    pu, pi = pu[keep], pi[keep]
    bounds = np.r_[0, np.flatnonzero(np.diff(pu)) + 1, len(pu)]
    return {str(users[pu[a]]): items[pi[a:b]].tolist() for a, b in zip(bounds[:-1], bounds[1:])}


def latest_times(edges: Sequence[EdgeRow]) -> dict[tuple[str, str], int]:
    """Each (user, item) pair's latest interaction time over its behaviour types, in whole seconds as the
    training graph stores it (`training_graph`), so the live recency weights equal the full graph's."""
    out: dict[tuple[str, str], int] = {}
    for e in edges:
        key, t = (e.user, e.item), int(e.last_ts)
        if t > out.get(key, t - 1):
            out[key] = t
    return out


def pair_strengths(edges: Sequence[EdgeRow], typed: Mapping[str, float] | None = None) -> dict[tuple[str, str], float]:
    """Each (user, item) pair's behaviour strength: its edges' weights, each times its behaviour type's weight
    (``typed``: relationship type -> weight, `ml.signals.typed_weight`), summed over behaviour types, as the
    training graph sums them (`workers.live.training_graph`), so the live signal weights equal the full graph's."""
    out: dict[tuple[str, str], float] = {}
    for e in edges:
        w = e.weight * typed_weight(e.kind, typed) if typed else e.weight
        out[(e.user, e.item)] = out.get((e.user, e.item), 0.0) + w
    return out


def latest_searches(rows: Sequence[SearchRow], cap: int) -> dict[str, list[str]]:
    """Each user's newest ``cap`` searches' texts (latest time first, ties by query id): deterministic for a given
    set of rows, so the incremental and the full recompute add the same ones (`LiveEncoder.users`)."""
    by_user: dict[str, list[SearchRow]] = {}
    for r in rows:
        by_user.setdefault(r.user, []).append(r)
    return {u: [r.text for r in sorted(rs, key=lambda r: (-r.last_ts, r.query))[:cap]] for u, rs in by_user.items()}


def item_weights(
    neighbours: Mapping[str, Sequence[str]],
    users: Sequence[str],
    times: Mapping[tuple[str, str], int] | None,
    recency_boost: float,
    recency_scale: float,
    strength: Mapping[tuple[str, str], float] | None = None,
    behaviour_power: float = 0.0,
    decay_half_life_days: float = 0.0,
) -> list[np.ndarray]:
    """Per user (in ``users`` order), the weights [len(neighbours[user])] of their capped items: the recency
    weights of the pairs' latest ``times`` (`latest_times`), or 1 without times; times the signal weights
    (`user_signal_weights`)."""
    out = []
    for u in users:
        items = neighbours.get(u, ())
        if times is None:
            w = np.ones(len(items), np.float32)
        else:
            w = recency_weights(np.array([times[(u, i)] for i in items], np.float64), recency_boost, recency_scale)
        out.append(w * user_signal_weights(u, items, times, strength, behaviour_power, decay_half_life_days))
    return out


def user_signal_weights(
    user: str,
    items: Sequence[str],
    times: Mapping[tuple[str, str], int] | None,
    strength: Mapping[tuple[str, str], float] | None,
    behaviour_power: float,
    decay_half_life_days: float,
) -> np.ndarray:
    """One user's behaviour-strength and time-decay weights [len(items)] (`ml.signals`); 1 where a signal
    is off or its input is not given."""
    power = behaviour_power if strength is not None else 0.0
    half_life = half_life_seconds(decay_half_life_days) if times is not None else 0.0
    if not (power or half_life) or not items:
        return np.ones(len(items), np.float32)
    s = np.array([strength[(user, i)] for i in items], np.float64) if strength is not None else np.ones(len(items))
    t = np.array([times[(user, i)] for i in items], np.float64) if times is not None else np.zeros(len(items))
    return signal_weights(s, t, power, half_life)


def user_vector(
    edges: Sequence[EdgeRow], vectors: Mapping[str, tuple[np.ndarray, float]], card: UserSideCard
) -> tuple[np.ndarray, list[str]] | None:
    """One user's vector [dim] from their aggregated edges (a single user) and, per item, its served vector
    ``z_j`` and ``s_j`` (``vectors``); with the items it is made of. Items absent from ``vectors`` are left out
    before the cap (they have no vector to add). None when no item remains."""
    rows = [e for e in edges if e.item in vectors]
    if not rows:
        return None
    user = rows[0].user
    if any(e.user != user for e in rows):
        raise ValueError("user_vector: the edges of one user only")
    distinct = {e.item for e in rows}
    # The cap keeps every item of a user who has no more than it (a session, mostly): no ranking needed then.
    items = sorted(distinct) if len(distinct) <= card.user_cap else capped_neighbours(rows, card.user_cap, card.half_life_days)[user]
    times = latest_times(rows)
    strengths = pair_strengths(rows, card.behaviour_weights) if card.behaviour_power else None
    z = np.stack([vectors[i][0] for i in items]).astype(np.float32, copy=False)
    scales = np.array([vectors[i][1] for i in items], np.float32)
    t = np.array([times[(user, i)] for i in items], np.float64)
    s = np.array([strengths[(user, i)] for i in items], np.float64) if strengths is not None else None
    return weighted_sum(z, scales, t, card, s), items


def weighted_sum(
    z: np.ndarray, scales: np.ndarray, times: np.ndarray | Sequence[float], card: UserSideCard, strengths: np.ndarray | None = None
) -> np.ndarray:
    """``sign(h) * sum_j w_j s_j z_j`` [dim] over a user's chosen items: served vectors ``z`` [n, dim] (float32),
    in_scales ``s`` [n] and latest times [n] in whole seconds (`latest_times`; an array or a list), whose recency
    and signal weights (`ml.signals`; behaviour strengths [n] from `pair_strengths`, needed when the card weighs
    behaviour) are ``w``. What `user_vector` computes once it has chosen the items; RecommendForSession calls it directly
    with the index's rows when the cap keeps every item."""
    w = recency_weights(times, card.recency_boost, card.recency_scale)
    half_life = half_life_seconds(card.decay_half_life_days)
    power = card.behaviour_power if strengths is not None else 0.0
    if power or half_life > 0:
        t = np.asarray(times, np.float64)
        w = w * signal_weights(strengths if strengths is not None else np.ones(len(t)), t, power, half_life)
    coef = (w * scales.astype(np.float32, copy=False)).astype(np.float32, copy=False)
    out: np.ndarray = coef @ z
    out *= card.sign
    return out
