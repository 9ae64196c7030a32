"""A 2-layer heterogeneous encoder's user side without torch: a session embedded at request time as the worker
would embed a stored user with the same events (`workers.hetero_live`), from numbers kept in Redis.

With the served relations (`workers.hetero_live.RELATION` and its reverse) a user's vector is

    h1_u = conv1(x0 of its kept items, x_user)        h2_u = conv2(relu(h1'_j) of those items, relu(h1_u))

over the user's top ``cap`` rows by weight (the training's edge weights: event strength decayed from the
version's reference time, times the recency rank among the user's rows; ties by item id). ``x0_j`` is an item's
layer-0 input and ``h1'_j`` its layer-1 output (before the activation) *with the session counted as one more
shopper*: the users all start from one vector ``x_user``, so an averaged (SAGE's mean, GIN's mean, max) user->item
aggregation does not move when one more shopper joins, unless the item had none; a summed one moves with the
count of its kept rows. So besides the stored ``h1_j`` an item needs only ``x0_j`` and that count ``n_j``: the
worker keeps all three in the version's layer store (`workers.hetero_recompute.LayerStore`, fields `field`), and
the weights of the three convolutions that read them in the card (`HeteroSideCard`, `workers.redis_keys`).

GCN normalises by degrees that a session changes across its items' other shoppers, and a third layer would read
other users' layer-2 outputs: no card is written for those (`HeteroLive.side_card`), and their sessions answer
from popularity.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from graphdb.subgraph import EdgeRow
from ml.recency import recency_weights

# The aggregations a convolution here may have (`HeteroGNN._conv`): SAGE by edge weight, or unweighted.
AGGREGATIONS = {"sage-weighted", "sage-mean", "sage-sum", "sage-max", "gin-mean", "gin-add"}


def field(layer: int | str, kind: str, node_id: str) -> str:
    """A node's field in the version's layer store: ``layer`` 1..K-1 its outputs, 0 an item's input, ``"n"`` the
    count of an item's kept rows from users."""
    return f"{layer}|{kind}:{node_id}"


@dataclass(frozen=True, eq=False)
class Conv:
    """One relation's convolution: ``kind`` one of `AGGREGATIONS`; ``arrays`` its parameters (float32): SAGE
    ``lin_l.weight``, ``lin_l.bias``, ``lin_r.weight``; GIN ``eps`` and its MLP's ``nn.0.weight``, ``nn.0.bias``,
    ``nn.2.weight``, ``nn.2.bias``."""

    kind: str
    arrays: Mapping[str, np.ndarray]

    def __call__(self, src: np.ndarray, weights: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The output [dim] of a node from its own vector ``dst`` [dim] and its kept sources ``src`` [n, dim] with
        their edge weights [n] (read by SAGE's weighted mean only)."""
        a, agg = self.arrays, np.zeros_like(dst)
        if len(src):
            if self.kind == "sage-weighted":
                agg = (weights / np.float32(weights.sum())).astype(np.float32) @ src
            elif self.kind in ("sage-mean", "gin-mean"):
                agg = src.mean(axis=0, dtype=np.float32)
            elif self.kind in ("sage-sum", "gin-add"):
                agg = src.sum(axis=0, dtype=np.float32)
            else:
                agg = src.max(axis=0)
        if self.kind.startswith("sage"):
            out: np.ndarray = agg @ a["lin_l.weight"].T + a["lin_l.bias"] + dst @ a["lin_r.weight"].T
            return out
        hidden = np.maximum(((np.float32(1) + a["eps"][0]) * dst + agg) @ a["nn.0.weight"].T + a["nn.0.bias"], 0)
        out = hidden @ a["nn.2.weight"].T + a["nn.2.bias"]
        return out


@dataclass(frozen=True, eq=False)
class HeteroSideCard:
    """What embeds a session under a 2-layer version besides its items' stored numbers: the shared user start
    vector, the edge weights' settings, the two item->user convolutions and the user->item one of layer 1."""

    version: str
    cap: int  # the neighbour cap
    half_life_s: float  # the edge weights' time decay (0: none) from ``time_ref``
    time_ref: int
    recency_boost: float
    recency_scale: float
    x_user: np.ndarray  # float32 [dim]
    to_user: tuple[Conv, Conv]  # layers 1 and 2, item -> user
    to_item: Conv  # layer 1, user -> item

    @property
    def dim(self) -> int:
        return len(self.x_user)

    def to_bytes(self) -> bytes:
        """NumPy's own archive format: the settings as one JSON string, every array under its conv's prefix."""
        meta = {
            "cap": self.cap,
            "half_life_s": self.half_life_s,
            "time_ref": self.time_ref,
            "recency_boost": self.recency_boost,
            "recency_scale": self.recency_scale,
            "kinds": [c.kind for c in (*self.to_user, self.to_item)],
        }
        arrays = {"x_user": self.x_user, "meta": np.array(json.dumps(meta))}
        for name, conv in zip(("user1", "user2", "item1"), (*self.to_user, self.to_item)):
            arrays.update({f"{name}/{k}": v for k, v in conv.arrays.items()})
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, version: str, data: bytes) -> HeteroSideCard:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            convs = []
            for name, kind in zip(("user1", "user2", "item1"), meta["kinds"]):
                if kind not in AGGREGATIONS:
                    raise ValueError(f"model {version!r}: its card names an unknown aggregation {kind!r}")
                arrays = {k.split("/", 1)[1]: _frozen(z[k]) for k in z.files if k.startswith(f"{name}/")}
                convs.append(Conv(kind, arrays))
            x_user = _frozen(z["x_user"])
        return cls(
            version,
            int(meta["cap"]),
            float(meta["half_life_s"]),
            int(meta["time_ref"]),
            float(meta["recency_boost"]),
            float(meta["recency_scale"]),
            x_user,
            (convs[0], convs[1]),
            convs[2],
        )


@dataclass(frozen=True)
class ItemSide:
    """An item's stored numbers (`field`): layer-0 input, layer-1 output before the activation, kept user rows."""

    x0: np.ndarray
    h1: np.ndarray
    rows: int


def weights(card: HeteroSideCard, rows: Sequence[EdgeRow]) -> tuple[np.ndarray, np.ndarray]:
    """(into the items, into the user) [n] of one user's rows: `ml.encoders.hetero_gnn.interaction_weights`
    (float32 strengths decayed in float64; the recency weight of each row's whole-second time among the rows)."""
    strength = np.array([e.weight for e in rows], np.float32).astype(np.float64)
    t = np.array([int(e.last_ts) for e in rows], np.float64)
    if card.half_life_s > 0:
        strength = strength * np.where(t > 0, np.exp2((t - float(card.time_ref)) / card.half_life_s), 1.0)
    into_item = strength.astype(np.float32)
    return into_item, into_item * recency_weights(t.tolist(), card.recency_boost, card.recency_scale)


def session_vector(
    card: HeteroSideCard, edges: Sequence[EdgeRow], stored: Mapping[str, ItemSide]
) -> tuple[np.ndarray, list[str]] | None:
    """One user's vector [dim] from their rows (one user, one row per behaviour type and item) and their items'
    stored numbers, with the items it is made of; rows on items without stored numbers are left out before the
    cap (they have no vector to add). None when no row remains."""
    rows = [e for e in edges if e.item in stored]
    if not rows:
        return None
    _, into_user = weights(card, rows)
    kept = sorted(range(len(rows)), key=lambda n: (-float(into_user[n]), rows[n].item))[: card.cap]
    items = sorted({rows[n].item for n in kept})
    moved = _with_the_session(card, stored, items, rows)
    w = into_user[kept]
    x0 = np.stack([stored[rows[n].item].x0 for n in kept])
    h1_user = card.to_user[0](x0, w, card.x_user)
    h1 = np.stack([moved[rows[n].item] for n in kept])
    out = card.to_user[1](np.maximum(h1, 0), w, np.maximum(h1_user, 0))
    return out.astype(np.float32, copy=False), items


def _with_the_session(
    card: HeteroSideCard, stored: Mapping[str, ItemSide], items: list[str], rows: Sequence[EdgeRow]
) -> dict[str, np.ndarray]:
    """The items' layer-1 outputs with the session's rows among their shoppers': only their user->item term moves,
    from ``n`` kept rows of ``x_user`` to ``min(n + the session's rows, cap)`` (module docstring)."""
    added: dict[str, int] = {}
    for e in rows:
        added[e.item] = added.get(e.item, 0) + 1
    out = {}
    for i in items:
        s = stored[i]
        before, after = min(s.rows, card.cap), min(s.rows + added[i], card.cap)
        if before == after or (before > 0 and card.to_item.kind not in ("sage-sum", "gin-add")):
            out[i] = s.h1
            continue
        ones = np.ones(after, np.float32)
        users = np.broadcast_to(card.x_user, (after, card.dim))
        out[i] = s.h1 + (card.to_item(users, ones, s.x0) - card.to_item(users[:before], ones[:before], s.x0))
    return out


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, np.float32)
    a.flags.writeable = False
    return a
