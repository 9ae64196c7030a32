"""Incremental and full recompute for the K-layer heterogeneous encoders (`workers.hetero_live.HeteroLive`).

The affected set is propagated layer by layer under the neighbour caps, InkStream-style: only what changed.

* ``C``: nodes whose capped in-list changed. Candidates are the marked users and items, the items under marked
  categories and brands, and the categories and brand of all those items (an item joining or leaving one changes
  its members). A candidate's capped in-list is compared with the fingerprint stored when its vector was last
  computed (a Redis hash per model version); without Redis, or without a fingerprint, it counts as changed.
* ``A_0``: items new since the version among the candidates (their live metadata is their layer-0 input).
* ``A_1 = A_0 ∪ C ∪ out(A_0)``, ``A_k = A_(k-1) ∪ out(A_(k-1))``, where ``out(S)`` are the nodes that keep a node of
  ``S`` in their cap. The users and items of ``A_K`` are recomputed; a hub item's event whose user does not enter
  the hub's top-N leaves the hub's fingerprint, and so its thousands of shoppers, alone.

Then the rows that make ``A_K`` exact are pulled with batched Cypher (``graphdb.subgraph``): every node down to
layer 1 with its cap, and the layer-0 neighbours of those; one forward over that subgraph gives ``A_K``'s vectors.
GCN normalises by each source's capped out-degree, which changes whenever any cap takes the source in or drops
it, and which a subgraph does not hold: ``hetero-gcn`` recomputes every vector on each round (exact, not fast; an
exact GCN affected set would add the nodes reading a source whose capped degree changed).
"""

from __future__ import annotations

import gc
import json
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import neo4j
import numpy as np
from redis import Redis

from graphdb import subgraph
from graphdb.changes import clear_marks, read_marks
from graphdb.embeddings import write_and_clear
from graphdb.schema import BRAND, CATEGORY, ITEM, USER
from graphdb.subgraph import EdgeRow, ItemRow
from workers.hetero_live import HeteroLive, Node
from workers.hetero_side import field as layer_field
from workers.recompute import MARKS_PER_ROLLOUT, RecomputeResult, Timings, publish_vectors, switch_to
from workers.redis_keys import HETERO_CARD, HETERO_LAYERS, HETERO_PENDING
from workers.steps import Laps, timed

FINGERPRINTS = "ig:hetero:inlists:{version}"
CAPS = "ig:hetero:caps:{version}"
PENDING = HETERO_PENDING  # one set for every version (`PendingSet`): the scheduler wakes a round while it holds any
# An intermediate output that moved by no more than this is unchanged: float32 rounding of the same sums in another
# order stays far below it, and what it hides downstream stays far below invariant 3's 1e-4.
MOVED_TOL = 1e-6


@dataclass
class HeteroContext:
    driver: neo4j.Driver
    encoder: HeteroLive
    redis: Redis | None = None
    stream: str = "ig:embeddings"
    database: str = "neo4j"
    write_batch: int = 5000


class Neighbourhood:
    """The live graph around some nodes, read on demand with batched Cypher and kept for one recompute."""

    def __init__(self, ctx: HeteroContext):
        self.ctx, self.enc = ctx, ctx.encoder
        self.user_edges: dict[str, list[EdgeRow]] = {}
        self.item_edges: dict[str, list[EdgeRow]] = {}
        self.rows: dict[str, ItemRow | None] = {}
        self.members: dict[Node, list[str]] = {}
        self._user_in: dict[str, list[tuple[EdgeRow, float]]] = {}
        self._item_in: dict[str, list[tuple[EdgeRow, float]]] = {}
        # the model's weight of each row, aligned with user_edges / item_edges: weighed once per load, all together
        self._into_user: dict[str, list[float]] = {}
        self._into_item: dict[str, list[float]] = {}
        self.phases: dict[str, float] = defaultdict(float)  # seconds by part of the round (`timed`)
        self.caps = CapStore(ctx)
        # items read whole from Neo4j, never from `caps` (the round's candidates: their in-lists may have changed)
        self.exact: set[str] = set()
        # items whose `item_edges` hold only their capped rows, from `caps`: enough for their cap and their last layer
        self.partial: set[str] = set()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Adds the block's seconds to ``phases[name]`` (nested blocks count in both)."""
        with timed(self.phases, name):
            yield

    def load(self, nodes: Iterable[Node]) -> None:
        """Read the in-lists (and item rows) of these nodes that are not read yet."""
        want: dict[str, set[str]] = defaultdict(set)
        for kind, nid in nodes:
            want[kind].add(nid)
        db, driver = self.ctx.database, self.ctx.driver
        users = sorted(want["user"] - self.user_edges.keys())
        if users:
            with self.timed("read_user_edges_s"):
                edges, _ = subgraph.user_edges(driver, users, database=db)
            for u in users:
                self.user_edges[u] = []
            for e in edges:
                self.user_edges[e.user].append(e)
            # every row of each of these users is here, so their recency ranks are the whole graph's
            rows = [e for u in users for e in self.user_edges[u]]
            self._split(users, self.user_edges, self.enc.weigh(rows)[1], self._into_user)
        items = sorted(want["item"] - self.item_edges.keys())
        if items:
            with self.timed("read_item_caps_s"):
                cached = self.caps.get(i for i in items if i not in self.exact)
            for i in items:
                self.item_edges[i] = cached.get(i, [])
            self.partial.update(cached)
            with self.timed("read_item_edges_s"):
                read = subgraph.item_edges(driver, [i for i in items if i not in cached], database=db)
            for e in read:
                self.item_edges[e.item].append(e)
            rows = [e for i in items for e in self.item_edges[i]]
            self._split(items, self.item_edges, self.enc.weigh(rows)[0], self._into_item)
        self.load_rows(want["item"])
        cats = sorted(c for c in want["category"] if ("category", c) not in self.members)
        for c, m in subgraph.category_members(driver, cats, database=db).items() if cats else ():
            self.members[("category", c)] = m
        brands = sorted(b for b in want["brand"] if ("brand", b) not in self.members)
        for b, m in subgraph.brand_members(driver, brands, database=db).items() if brands else ():
            self.members[("brand", b)] = m

    @staticmethod
    def _split(keys: list[str], lists: dict[str, list[EdgeRow]], weights: list[float], into: dict[str, list[float]]) -> None:
        """``weights`` of the rows of ``keys`` in order (as `load` weighed them), one list per key."""
        at = 0
        for k in keys:
            n = len(lists[k])
            into[k], at = weights[at : at + n], at + n

    def whole(self, item_ids: Iterable[str]) -> None:
        """Read these items' whole in-lists (every shopper, not only their caps) from Neo4j from now on."""
        again = [i for i in item_ids if i in self.partial]
        for i in again:
            del self.item_edges[i]
            self._item_in.pop(i, None)
            self.partial.discard(i)
        self.exact.update(again)
        self.load(("item", i) for i in again)

    def load_rows(self, item_ids: Iterable[str]) -> None:
        missing = sorted(set(item_ids) - self.rows.keys())
        if missing:
            with self.timed("read_item_rows_s"):
                got = {r.id: r for r in subgraph.items(self.ctx.driver, missing, database=self.ctx.database)}
            self.rows.update({i: got.get(i) for i in missing})

    # ------------------------------------------------------------------ caps, after `load`
    # A node's in-list does not change within a round once read, so its cap is weighed and sorted once (the cost).
    def user_in(self, uid: str) -> list[tuple[EdgeRow, float]]:
        """The user's kept in-edges with their weights (`HeteroLive.user_in`, from every row of the user)."""
        got = self._user_in.get(uid)
        if got is None:
            got = self._user_in[uid] = self.enc.top_items(zip(self.user_edges[uid], self._into_user[uid]))
        return got

    def item_in(self, iid: str) -> list[tuple[EdgeRow, float]]:
        """The item's kept in-edges from users with their weights (`HeteroLive.item_in`)."""
        got = self._item_in.get(iid)
        if got is None:
            pairs = zip(self.item_edges[iid], self._into_item[iid])
            # a stored cap is `top_users`' list already, in its order (`CapStore.put`)
            got = self._item_in[iid] = list(pairs) if iid in self.partial else self.enc.top_users(pairs)
        return got

    def user_cap(self, uid: str) -> list[EdgeRow]:
        return [e for e, _ in self.user_in(uid)]

    def item_cap(self, iid: str) -> tuple[list[EdgeRow], list[str], str | None]:
        """The item's kept in-edges from users, categories and brand (`HeteroLive.cap_of_item`)."""
        cats, brand = self.enc.meta_of(self.rows.get(iid))
        return [e for e, _ in self.item_in(iid)], cats, brand

    def cap(self, node: Node) -> list[Node]:
        """The sources node keeps (its capped in-neighbours)."""
        kind, nid = node
        if kind == "user":
            return [("item", e.item) for e in self.user_cap(nid)]
        if kind == "item":
            users, cats, brand = self.item_cap(nid)
            return [("user", e.user) for e in users] + [("category", c) for c in cats] + ([("brand", brand)] if brand else [])
        return [("item", i) for i in self.enc.cap_of_members(self.members[node])]

    def print_of(self, node: Node) -> str:
        kind, nid = node
        if kind == "user":
            return self.enc.user_print(self.user_in(nid))
        if kind == "item":
            return self.enc.item_print(self.item_in(nid), self.rows.get(nid))
        return self.enc.fingerprint(self.enc.cap_of_members(self.members[node]))

    def out(self, nodes: set[Node]) -> set[Node]:
        """Nodes that keep one of ``nodes`` in their cap."""
        self.load(nodes)
        self.whole(nid for kind, nid in nodes if kind == "item")  # every shopper of a moved item may keep it
        targets: set[Node] = set()
        for kind, nid in nodes:
            if kind == "user":
                targets.update(("item", e.item) for e in self.user_edges[nid])
            elif kind == "item":
                targets.update(("user", e.user) for e in self.item_edges[nid])
                row = self.rows.get(nid)
                if row is not None:
                    targets.update(("category", c) for c in self.enc.categories_of(row))
                    if (b := self.enc.brand_of(row)) is not None:
                        targets.add(("brand", b))
            else:
                targets.update(("item", i) for i in self.members[(kind, nid)])
        self.load(targets)
        return {t for t in targets if self._exists(t) and set(self.cap(t)) & nodes}

    def _exists(self, node: Node) -> bool:
        return node[0] != "item" or self.rows.get(node[1]) is not None


@dataclass
class Affected:
    nodes: set[Node]  # A_K: users and items whose output changed
    changed: set[Node]  # C: in-lists that changed (their fingerprints are stored after the write)
    per_layer: list[int] = field(default_factory=list)  # |A_k| per layer
    layer_updates: dict[int, dict[Node, np.ndarray]] = field(default_factory=dict)  # outputs that moved, to store
    last_moved: set[Node] = field(default_factory=set)  # nodes whose layer-(K-1) output moved (the last layer's input)
    inputs: dict[Node, np.ndarray] = field(default_factory=dict)  # new items' layer-0 inputs (`HeteroLive.sessions`)


def candidates(nb: Neighbourhood, by_label: dict[str, set[str]]) -> tuple[set[Node], set[str]]:
    """(nodes whose capped in-list may have changed, the existing items among them): the module docstring's list."""
    enc, ctx = nb.enc, nb.ctx
    items = set(by_label[ITEM])
    items |= subgraph.items_under(ctx.driver, by_label[CATEGORY], by_label[BRAND], database=ctx.database)
    nb.load_rows(items)
    items = {i for i in items if nb.rows.get(i) is not None}
    cands: set[Node] = {("user", u) for u in by_label[USER]} | {("item", i) for i in items}
    cands |= {("category", c) for c in by_label[CATEGORY] if c in enc.category_index}
    cands |= {("brand", b) for b in by_label[BRAND] if b in enc.brand_index}
    for i in items:
        row = nb.rows[i]
        assert row is not None
        cands |= {("category", c) for c in enc.categories_of(row)}
        if (b := enc.brand_of(row)) is not None:
            cands.add(("brand", b))
    nb.exact |= items  # their in-lists may have changed: read whole from Neo4j, never from `CapStore`
    return cands, items


class LayerStore:
    """Each node's intermediate outputs (layers 1..K-1) as last computed, per model version, in Redis: what a
    recomputed output is compared with to tell whether it changed. Under a version whose sessions servers embed
    (`HeteroLive.sessions`) also each item's layer-0 input (as layer 0) and its count of kept rows from users
    (`put_counts`): with its layer-1 output, what `workers.hetero_side` reads."""

    def __init__(self, ctx: HeteroContext):
        self.redis, self.key = ctx.redis, HETERO_LAYERS.format(version=ctx.encoder.version)

    def get(self, k: int, nodes: Iterable[Node]) -> dict[Node, np.ndarray]:
        nodes = sorted(nodes)
        if self.redis is None or not nodes:
            return {}
        values = self.redis.hmget(self.key, [layer_field(k, *n) for n in nodes])
        return {n: np.frombuffer(v, np.float32) for n, v in zip(nodes, values) if isinstance(v, bytes)}

    def put(self, k: int, vectors: dict[Node, np.ndarray]) -> None:
        if self.redis is None or not vectors:
            return
        self._put([(layer_field(k, *n), np.asarray(v, np.float32).tobytes()) for n, v in vectors.items()])

    def put_counts(self, counts: dict[str, int]) -> None:
        """Items' counts of kept rows from users (``len(item_in)``)."""
        if self.redis is not None and counts:
            self._put([(layer_field("n", "item", i), str(n).encode()) for i, n in counts.items()])

    def _put(self, items: list[tuple[str, bytes]]) -> None:
        assert self.redis is not None
        for s in range(0, len(items), 5000):
            self.redis.hset(self.key, mapping=dict(items[s : s + 5000]))


class CapStore:
    """Each item's capped in-rows from users (what `HeteroLive.top_users` keeps: every row the item's aggregation
    reads), per model version, in Redis, so that an item outside the round's candidates is read as its cap
    (<= ``neighbour_cap`` rows) instead of its whole in-list from Neo4j (a hub's thousands of shoppers).

    Why a stored cap is current: an item's in-rows change only with an event on it, a forgotten shopper or new
    metadata, and each of these marks the item in the same transaction (`graphdb.marks`); a marked item is a
    candidate of the next round, which reads it whole from Neo4j (`Neighbourhood.exact`) and stores its cap again
    before the write that clears its mark. A crash in between leaves the mark, so the next round does the same.
    The edge weights into an item (strength x decay from the version's reference time) do not depend on other
    rows or on the clock, so an unchanged in-list has an unchanged cap. The rollout stores every item's."""

    def __init__(self, ctx: HeteroContext):
        self.redis, self.key = ctx.redis, CAPS.format(version=ctx.encoder.version)

    def get(self, item_ids: Iterable[str]) -> dict[str, list[EdgeRow]]:
        out: dict[str, list[EdgeRow]] = {}
        for i, v in self._values(item_ids):
            users, kinds, nums = _decode_cap(v)
            w, last, first = nums.tolist()
            out[i] = [
                EdgeRow(u, i, w[n], last[n], None if first[n] != first[n] else first[n], kinds[n] or None) for n, u in enumerate(users)
            ]
        return out

    def users(self, item_ids: Iterable[str]) -> dict[str, set[str]]:
        """The users each item's stored cap keeps (no rows built, nothing weighed: the out-set test of a user)."""
        return {i: set(_decode_cap(v, rows=False)[0]) for i, v in self._values(item_ids)}

    def _values(self, item_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        ids = sorted(item_ids)
        if self.redis is None or not ids:
            return
        for s in range(0, len(ids), 5000):
            chunk = ids[s : s + 5000]
            for i, v in zip(chunk, self.redis.hmget(self.key, chunk)):
                if isinstance(v, bytes):
                    yield i, v

    def put(self, caps: dict[str, list[EdgeRow]]) -> None:
        if self.redis is None or not caps:
            return
        items = [(i, _encode_cap(rows)) for i, rows in caps.items()]
        for s in range(0, len(items), 5000):
            self.redis.hset(self.key, mapping=dict(items[s : s + 5000]))


# A stored cap: the row count (4 bytes), then weight, last and first time as float64 columns (NaN: no first time,
# exact round trips), then the users and kinds as one JSON list: decoding is one `frombuffer` and one short parse,
# where a JSON list per row cost ~7 us a row (the chunks' largest read, issue 17).
def _encode_cap(rows: list[EdgeRow]) -> bytes:
    nums = np.array([[e.weight, e.last_ts, np.nan if e.first_ts is None else e.first_ts] for e in rows], np.float64).reshape(-1, 3)
    names = json.dumps([e.user for e in rows] + [e.kind or "" for e in rows]).encode()
    return len(rows).to_bytes(4, "little") + np.ascontiguousarray(nums.T).tobytes() + names


def _decode_cap(v: bytes, rows: bool = True) -> tuple[list[str], list[str], np.ndarray]:
    """(users, kinds, [3, n] weights / last / first) of a stored cap; ``rows`` False: the users alone."""
    if v[:1] == b"[":  # a cap stored before this encoding (one JSON list per row)
        old = json.loads(v)
        nums = np.array([[r[1], r[2], np.nan if r[3] is None else r[3]] for r in old], np.float64).reshape(-1, 3)
        return [r[0] for r in old], [r[4] or "" for r in old], np.ascontiguousarray(nums.T)
    n = int.from_bytes(v[:4], "little")
    names = json.loads(v[4 + 24 * n :])
    if not rows:
        return names[:n], [], np.empty((3, 0))
    return names[:n], names[n:], np.frombuffer(v, np.float64, 3 * n, offset=4).reshape(3, n)


def affected(
    nb: Neighbourhood,
    cands: set[Node],
    items: set[str],
    stored: dict[str, str] | None,
    layers: LayerStore | None = None,
    before_last: Callable[[Affected], None] | None = None,
    defer_last: bool = False,
) -> Affected:
    """The layer-by-layer affected set (module docstring) of ``candidates``. ``stored``: in-list fingerprints by
    node key (None: none kept, every candidate counts as changed). ``layers``: the stored intermediate outputs;
    without them every candidate of a layer counts as changed there. ``before_last``: called once the layer-(K-1)
    outputs are known and ``changed`` is final, before the last layer's out-set is read (most of a round's pulls).
    ``defer_last``: stop there; ``nodes`` are then the users of ``last_moved`` and ``changed`` (their vectors need
    only their own caps), and the last layer's out-set is left to the pending set."""
    enc = nb.enc
    with nb.timed("changed_s"):
        nb.load(cands)
        changed = {n for n in cands if stored is None or stored.get(_key(n)) != nb.print_of(n)}
    moved: set[Node] = {("item", i) for i in items if i not in enc.row}  # layer-0 inputs from live metadata
    found = Affected(set(), changed)
    for k in range(1, enc.layers + 1):
        if k == enc.layers:
            found.last_moved = moved
            if before_last is not None:
                before_last(found)
            if defer_last:  # the out-set is the pending set's (`recompute_marked`): only what the round computes
                found.nodes = {n for n in moved | changed if n[0] == "user"}
                found.per_layer.append(len(moved | changed))
                return found
        with nb.timed(f"out_{k}_s"):
            layer = moved | changed | nb.out(moved)  # whose layer-k output may differ
        found.per_layer.append(len(layer))
        if k == enc.layers:
            found.nodes = {n for n in layer if n[0] in ("user", "item")}
        elif layers is None or layers.redis is None or enc.kind == "hetero-gcn":
            moved = layer
        else:
            # InkStream: compute the candidates' layer-k outputs; only those that moved propagate further
            with nb.timed(f"layer_{k}_s"):
                users, edges, rows = pull(nb, layer, depth=k)
                keep = (0, k) if k == 1 and enc.sessions else (k,)
                encoded = enc.encode(users, edges, rows, layers=keep, histories=nb.user_edges).layers
                now = {n: v for n, v in encoded[k].items() if n in layer}
                if 0 in keep:  # new items' layer-0 inputs, from their live metadata: what sessions read (`LayerStore`)
                    found.inputs = {n: v for n, v in encoded[0].items() if n in layer and n[1] not in enc.row}
                before = layers.get(k, now)
            moved = {n for n, v in now.items() if n not in before or float(np.max(np.abs(before[n] - v))) > MOVED_TOL}
            found.layer_updates[k] = {n: now[n] for n in moved}
    return found


def pull(nb: Neighbourhood, targets: set[Node], depth: int | None = None) -> tuple[list[str], list[EdgeRow], list[ItemRow]]:
    """The rows that make the targets' layer-``depth`` outputs (default K: their vectors) exact: down to layer 1
    every node with its cap, then the layer-0 neighbours of those (user ids, edge rows, item rows)."""
    need = set(targets)
    capped: set[Node] = set()
    for _ in range(nb.enc.layers if depth is None else depth):
        nb.load(need - capped)
        step = set(need)
        for n in need - capped:
            step.update(nb.cap(n))
        capped |= need
        need = step
    nb.load_rows(i for k, i in need if k == "item")
    # every edge row (one per behaviour type) of each kept (user, item) pair, from whichever side was read
    pairs: dict[tuple[str, str], list[EdgeRow]] = {}
    # items holding only their capped rows come last: a pair a whole side holds gets all of its rows (a user target
    # may keep a row of it that the item's cap does not); a pair only such an item keeps needs only those rows
    for kind, nid in sorted(capped, key=lambda n: n[0] == "item" and n[1] in nb.partial):
        if kind == "user":
            side, kept = nb.user_edges[nid], {("user", nid, e.item) for e in nb.user_cap(nid)}
        elif kind == "item":
            side, kept = nb.item_edges[nid], {("item", e.user, nid) for e in nb.item_cap(nid)[0]}
        else:
            continue
        fresh = {(u, i) for _, u, i in kept if (u, i) not in pairs}  # not `set - pairs.keys()`: that walks every key
        for e in side:
            if (e.user, e.item) in fresh:
                pairs.setdefault((e.user, e.item), []).append(e)
    edges = [e for rows in pairs.values() for e in rows]
    item_rows = [r for k, i in need if k == "item" and (r := nb.rows.get(i)) is not None]
    have = {r.id for r in item_rows}
    edges = [e for e in edges if e.item in have]
    users = sorted({i for k, i in need if k == "user"})
    return users, edges, item_rows


def last_layer_inputs(
    nb: Neighbourhood, found: Affected, store: LayerStore, nodes: set[Node] | None = None
) -> tuple[list[str], list[EdgeRow], list[ItemRow], dict[Node, np.ndarray] | None]:
    """The rows of ``nodes``' (default ``found.nodes``) own caps and the layer-(K-1) outputs of those nodes and
    their caps' sources (`own_inputs`), with the outputs just computed for the nodes that moved. ``given`` is None
    when the store lacks one of them (no Redis, or a version rolled out before the store): then the K-hop rows are
    pulled instead."""
    k = nb.enc.layers - 1
    if k < 1 or store.redis is None or k not in found.layer_updates:
        return [], [], [], None
    return own_inputs(nb, found.nodes if nodes is None else nodes, store, found.layer_updates[k])


def own_inputs(
    nb: Neighbourhood, nodes: set[Node], store: LayerStore, moved: dict[Node, np.ndarray]
) -> tuple[list[str], list[EdgeRow], list[ItemRow], dict[Node, np.ndarray] | None]:
    """What the last layer alone needs (`HeteroLive.encode`'s ``given``), so neither the K-hop rows nor the lower
    layers are read or run again: the rows of ``nodes``' own caps and the layer-(K-1) outputs of those nodes and
    their caps' sources, ``moved``'s where it has them, else the stored ones (equal within ``MOVED_TOL``)."""
    k = nb.enc.layers - 1
    users, edges, rows = pull(nb, nodes, depth=1)
    need: set[Node] = {("user", u) for u in users} | {("user", e.user) for e in edges} | {("item", r.id) for r in rows}
    for r in rows:
        if ("item", r.id) in nodes:
            need.update(n for n in nb.cap(("item", r.id)) if n[0] != "user")
    given = {**store.get(k, need - moved.keys()), **{n: v for n, v in moved.items() if n in need}}
    return users, edges, rows, given if need <= given.keys() else None


def last_layer(
    nb: Neighbourhood, nodes: set[Node], store: LayerStore, moved: dict[Node, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The vectors (users, items) of ``nodes`` from their own caps and the layer-(K-1) outputs (`own_inputs`);
    the K-hop rows and a whole forward where the store lacks an output."""
    users, edges, rows, given = own_inputs(nb, nodes, store, moved)
    if given is None:
        users, edges, rows = pull(nb, nodes)
    out = nb.enc.encode(users, edges, rows, given=given, histories=nb.user_edges)
    return (
        {i: out.users[i] for k, i in nodes if k == "user" and i in out.users},
        {i: out.items[i] for k, i in nodes if k == "item" and i in out.items},
    )


def _key(node: Node) -> str:
    return f"{node[0]}:{node[1]}"


def _store_session_inputs(nb: Neighbourhood, found: Affected, store: LayerStore) -> None:
    """What sessions read besides the layer-1 outputs (`LayerStore`): the new items' layer-0 inputs, and the count
    of kept rows from users of every item whose capped in-list changed (no other item's count can have)."""
    if nb.enc.sessions:
        store.put(0, found.inputs)
        store.put_counts({i: len(nb.item_in(i)) for kind, i in found.changed if kind == "item"})


def _stored_prints(ctx: HeteroContext, nodes: Iterable[Node]) -> dict[str, str] | None:
    if ctx.redis is None:
        return None
    keys = sorted({_key(n) for n in nodes})
    if not keys:
        return {}
    values = ctx.redis.hmget(FINGERPRINTS.format(version=ctx.encoder.version), keys)
    return {k: v.decode() for k, v in zip(keys, values) if v is not None}


def _store_prints(ctx: HeteroContext, prints: dict[str, str]) -> None:
    if ctx.redis is None or not prints:
        return
    key = FINGERPRINTS.format(version=ctx.encoder.version)
    items = list(prints.items())
    for s in range(0, len(items), 5000):
        ctx.redis.hset(key, mapping=dict(items[s : s + 5000]))


# ------------------------------------------------------------------------------------------------ pending set
class PendingSet:
    """The last layer's work a round leaves behind (`recompute_marked`), in Redis, oldest first: what makes the
    served vectors equal a full recompute once it and the marks drain.

    A member is ``version|op|node``: ``o`` asks for the vectors of every user and item that keeps ``node`` in its
    cap (``node``'s layer-(K-1) output moved: the stored one, `LayerStore`, is the new one), ``s`` for ``node``'s
    own vector (its cap or its own layer-(K-1) output changed). A round adds its entries before it stores the
    outputs, caps and fingerprints that would hide the change from the next round, and before it clears its marks;
    `recompute_pending` removes them only after their vectors are written, so a worker that dies anywhere leaves
    either the marks or the entries. Rounds and chunks run under the one recompute lock (`workers.jobs`), never at
    the same time, so an entry cannot be added again while a chunk that took it runs. A member of another version
    is dropped when met: a rollout rewrote every vector (`rebuild`)."""

    def __init__(self, ctx: HeteroContext):
        self.redis, self.version = ctx.redis, ctx.encoder.version

    def _members(self, op: str, nodes: Iterable[Node]) -> list[str]:
        return [f"{self.version}|{op}|{_key(n)}" for n in nodes]

    def add(self, outs: Iterable[Node], selfs: Iterable[Node]) -> int:
        """Add entries (``o`` for ``outs``, ``s`` for ``selfs``); an entry already waiting keeps its place."""
        members = self._members("o", outs) + self._members("s", selfs)
        if self.redis is None or not members:
            return 0
        now, added = time.time(), 0
        for s in range(0, len(members), 5000):
            added += int(self.redis.zadd(PENDING, {m: now for m in members[s : s + 5000]}, nx=True))
        return added

    def take(self, n: int) -> list[str]:
        """The oldest ``n`` entries of this version (left in the set)."""
        if self.redis is None:
            return []
        while True:
            got = [m.decode() for m in self.redis.zrange(PENDING, 0, n - 1)]
            stale = [m for m in got if not m.startswith(f"{self.version}|")]
            if not stale:
                return got
            self.redis.zrem(PENDING, *stale)

    def remove(self, members: Iterable[str]) -> None:
        members = list(members)
        if self.redis is not None:
            for s in range(0, len(members), 5000):
                self.redis.zrem(PENDING, *members[s : s + 5000])

    def remove_selfs(self, nodes: Iterable[Node]) -> None:
        self.remove(self._members("s", nodes))

    def count(self) -> int:
        return 0 if self.redis is None else int(self.redis.zcard(PENDING))

    def oldest_age(self) -> float:
        """Seconds the oldest entry has waited (0 when none)."""
        got = [] if self.redis is None else self.redis.zrange(PENDING, 0, 0, withscores=True)
        return max(0.0, time.time() - float(got[0][1])) if got else 0.0

    @staticmethod
    def parse(member: str) -> tuple[str, Node]:
        _, op, key = member.split("|", 2)
        kind, nid = key.split(":", 1)
        return op, (kind, nid)


def deferred(ctx: HeteroContext) -> bool:
    """Whether rounds leave the last layer's out-set to the pending set: a K >= 2 encoder with its layer store
    (Redis). GCN recomputes everything each round (module docstring); K = 1 has no stored layer to read."""
    return ctx.redis is not None and ctx.encoder.layers >= 2 and ctx.encoder.kind != "hetero-gcn"


# ------------------------------------------------------------------------------------------------ incremental
@dataclass
class HeteroResult(RecomputeResult):
    affected: list[int] = field(default_factory=list)  # |A_1|, ..., |A_K| (users, items, categories, brands)
    changed: int = 0  # |C|: capped in-lists that changed
    first_published: int = 0  # changed users published before the rest of the round (`recompute_marked`)
    first_s: float = 0.0  # seconds from the round's start to that publish
    phases: dict[str, float] = field(default_factory=dict)  # seconds by part of the round (`Neighbourhood.timed`)
    cached_items: int = 0  # items read as their stored cap (`CapStore`), not whole from Neo4j
    pending_added: int = 0  # entries the round added to the pending set (`PendingSet`)
    # the chunks of the pending set run after the round in the same task (`round_and_chunks`)
    pending_done: int = 0  # entries recomputed and removed
    pending_left: int = 0  # entries waiting after them
    pending_s: float = 0.0  # their seconds
    pending_users: int = 0  # vectors they wrote
    pending_items: int = 0
    pending_steps: int = 0
    pending_expanded: int = 0  # entries they added (`_pending_step`)


def recompute_marked(ctx: HeteroContext, limit: int = 10000) -> HeteroResult:
    """Recompute what the oldest ``limit`` marks affect (module docstring); publish, write, clear the marks.

    With a K >= 2 encoder and its layer store (`deferred`) the round computes, publishes and writes only the users
    whose own vectors it can make from their caps and the layer-(K-1) outputs just computed (the event users
    first), and leaves the rest of the last layer (the items and users that keep a moved node: most of a round's
    reads and writes) to the pending set (`PendingSet`, `recompute_pending`): an event that lands during a round
    waits for that round's users, not its items."""
    enc, version = ctx.encoder, ctx.encoder.version
    res = HeteroResult(version)
    started = time.perf_counter()
    clock = Laps(res.timings)
    marks = read_marks(ctx.driver, limit=limit, database=ctx.database)
    res.marks = len(marks)
    if not marks:
        return res
    by_label: dict[str, set[str]] = defaultdict(set)
    tokens: dict[str, dict[str, str]] = defaultdict(dict)
    for m in marks:
        by_label[m.label].add(m.id)
        tokens[m.label][m.id] = m.token
    since: dict[str, dict[str, float]] = defaultdict(dict)
    for m in marks:
        if m.since is not None:
            since[m.label][m.id] = m.since
    nb = Neighbourhood(ctx)
    nb.phases["marks_s"] = time.perf_counter() - started
    with nb.timed("candidates_s"):
        cands, marked_items = candidates(nb, by_label)
    store = LayerStore(ctx)
    first: dict[str, np.ndarray] = {}
    defer = deferred(ctx)

    def publish_first(found: Affected) -> None:
        # A changed user's vector needs only its own cap and the layer-(K-1) outputs just computed, not the last
        # layer's out-set (the items that keep a moved node: most of a round's pulls), so the shoppers whose events
        # started the round reach the stream first. The same computation as the round's (`last_layer_inputs`).
        nodes = {n for n in (found.changed | found.last_moved if defer else found.changed) if n[0] == "user"}
        if enc.kind == "hetero-gcn" or not nodes:
            return
        users, edges, rows, given = last_layer_inputs(nb, found, store, nodes)
        if given is None:
            return
        with nb.timed("first_s"):
            out = enc.encode(users, edges, rows, given=given, histories=nb.user_edges)
            first.update({u: out.users[u] for _, u in nodes if u in out.users})
            res.first_published = publish_vectors(ctx.redis, ctx.stream, {USER: first}, version, since)
        res.first_s = time.perf_counter() - started

    found = affected(nb, cands, marked_items, _stored_prints(ctx, cands), store, publish_first, defer_last=defer)
    res.affected, res.changed = found.per_layer, len(found.changed)
    if defer:
        _finish_deferred(ctx, nb, found, store, first, res, marks, by_label, tokens, since, clock, started)
        return res
    if enc.kind == "hetero-gcn":  # source degrees need the whole graph, and change the whole graph (module docstring)
        all_users, edges, rows = _everything(ctx)
        found.nodes = {("user", u) for u in all_users} | {("user", e.user) for e in edges} | {("item", r.id) for r in rows}
        given = None
    else:
        with nb.timed("last_inputs_s"):
            all_users, edges, rows, given = last_layer_inputs(nb, found, store)
            if given is None:
                all_users, edges, rows = pull(nb, found.nodes)
    users = {i for k, i in found.nodes if k == "user"}
    items = {i for k, i in found.nodes if k == "item"}
    clock.lap("pull_s")
    out = enc.encode(all_users, edges, rows, given=given, histories=nb.user_edges)
    user_vecs = {u: first.get(u, out.users[u]) for u in users if u in out.users or u in first}
    item_vecs = {i: out.items[i] for i in items if i in out.items}
    clock.lap("forward_s")
    later = {u: v for u, v in user_vecs.items() if u not in first}
    with nb.timed("store_s"):
        # before the write clears their marks (`CapStore`): the candidates' caps as read whole this round
        nb.caps.put({i: [e for e, _ in nb.item_in(i)] for i in nb.exact if i in nb.item_edges})
    with nb.timed("publish_s"):
        res.published = res.first_published + publish_vectors(ctx.redis, ctx.stream, {ITEM: item_vecs, USER: later}, version, since)
    cleared = 0
    with nb.timed("write_vectors_s"):
        for label, vecs in ((ITEM, item_vecs), (USER, user_vecs)):
            if vecs:
                written, n = write_and_clear(
                    ctx.driver, label, vecs.items(), version, database=ctx.database, batch_size=ctx.write_batch, tokens=tokens[label]
                )
                cleared += n
                setattr(res, "items" if label == ITEM else "users", written)
    with nb.timed("store_s"):
        # after the vectors: a crash in between leaves old prints, so the next round counts these nodes as changed
        _store_prints(ctx, {_key(n): nb.print_of(n) for n in found.changed})
        for k, moved in found.layer_updates.items():
            store.put(k, moved)
        _store_session_inputs(nb, found, store)
    done = {ITEM: item_vecs, USER: user_vecs}
    rest = [m for m in marks if m.id not in done.get(m.label, {})]
    with nb.timed("clear_s"):
        res.cleared = cleared + clear_marks(ctx.driver, rest, database=ctx.database)
    res.propagated_users = len(users - by_label[USER])
    clock.lap("write_s")
    res.phases = {k: round(v, 4) for k, v in sorted(nb.phases.items())}
    res.cached_items = len(nb.partial)
    return res


def _finish_deferred(
    ctx: HeteroContext,
    nb: Neighbourhood,
    found: Affected,
    store: LayerStore,
    first: dict[str, np.ndarray],
    res: HeteroResult,
    marks: list,
    by_label: dict[str, set[str]],
    tokens: dict[str, dict[str, str]],
    since: dict[str, dict[str, float]],
    clock: Laps,
    started: float,
) -> None:
    """The rest of a deferred round (`recompute_marked`): the round's users written, the pending set's entries
    added, the moved outputs, caps and fingerprints stored, the marks cleared, in an order that a crash at any
    point leaves the marks or the entries (`PendingSet`)."""
    enc, version = ctx.encoder, ctx.encoder.version
    moved = found.layer_updates.get(enc.layers - 1, {})
    missing = {n for n in found.nodes if n[1] not in first}
    if missing:  # the store lacked an output `publish_first` needed: the same vectors from the K-hop rows
        with nb.timed("first_s"):
            more, _ = last_layer(nb, missing, store, moved)
            first.update(more)
            res.first_published += publish_vectors(ctx.redis, ctx.stream, {USER: more}, version, since)
        res.first_s = time.perf_counter() - started
    clock.lap("pull_s")
    pending = PendingSet(ctx)
    written_users = {("user", u) for u in first}
    with nb.timed("pending_s"):
        # every node whose layer-(K-1) output moved: the vectors that keep it; every item whose cap or own output
        # changed: its vector; the round's users too until they are written below (a crash before leaves them)
        items = {n for n in found.changed | found.last_moved if n[0] == "item"}
        res.pending_added = pending.add(found.last_moved, items | written_users)
    with nb.timed("store_s"):
        nb.caps.put({i: [e for e, _ in nb.item_in(i)] for i in nb.exact if i in nb.item_edges})  # `CapStore`
        _store_prints(ctx, {_key(n): nb.print_of(n) for n in found.changed})
        for k, layer in found.layer_updates.items():
            store.put(k, layer)
        _store_session_inputs(nb, found, store)
    cleared = 0
    with nb.timed("write_vectors_s"):
        if first:
            res.users, cleared = write_and_clear(
                ctx.driver, USER, first.items(), version, database=ctx.database, batch_size=ctx.write_batch, tokens=tokens[USER]
            )
    with nb.timed("pending_s"):
        pending.remove_selfs(written_users)
    res.published = res.first_published
    rest = [m for m in marks if not (m.label == USER and m.id in first)]
    with nb.timed("clear_s"):
        res.cleared = cleared + clear_marks(ctx.driver, rest, database=ctx.database)
    res.propagated_users = len(set(first) - by_label[USER])
    clock.lap("write_s")
    res.phases = {k: round(v, 4) for k, v in sorted(nb.phases.items())}
    res.cached_items = len(nb.partial)


@dataclass
class PendingResult:
    steps: int = 0
    entries: int = 0  # pending entries recomputed and removed
    users: int = 0  # vectors written
    items: int = 0
    published: int = 0
    seconds: float = 0.0
    left: int = 0  # entries waiting after the last step
    cached_items: int = 0  # items read as their stored cap (`CapStore`)
    expanded: int = 0  # ``s`` entries added for the vectors that keep an ``o`` entry's node
    phases: dict[str, float] = field(default_factory=lambda: defaultdict(float))


# seconds per pending entry of the last step, by version: how many entries the next step takes to fit its time
_PER_ENTRY: dict[str, float] = {}


def recompute_pending(ctx: HeteroContext, budget_s: float) -> PendingResult:
    """Recompute the pending set's entries (`PendingSet`), oldest first, in steps until ``budget_s`` has passed
    (at least one step; a step is sized from the recent steps' time per entry and cannot be cut short, so none
    starts in the budget's last quarter, where it would overrun it by its fixed costs). Each step reads its
    targets' caps and the layer-(K-1) outputs stored at that moment, publishes and writes their vectors, and only
    then removes its entries. A target whose change is not yet in the stores (a marked node) is computed again
    after the round that stores it: that round's entries ask for it."""
    pend, res = PendingSet(ctx), PendingResult()
    version = ctx.encoder.version
    start = time.perf_counter()
    while True:
        left_s = budget_s - (time.perf_counter() - start)
        if res.steps and left_s <= budget_s / 4:
            break
        # an entry costs ~0.3-1 ms on the 2-core VM (an item's cap; a user's items, tested against their stored
        # caps): a first guess that is too small overruns the first chunk, which the next round pays in waiting marks
        per = _PER_ENTRY.get(version, 0.002)
        taken = pend.take(max(4, min(5000, int(left_s / per))))
        if not taken:
            break
        t = time.perf_counter()
        _pending_step(ctx, taken, res)
        pend.remove(taken)
        # smoothed: an `o` entry and an `s` entry cost differently, and a step holds either mostly
        _PER_ENTRY[version] = (per + (time.perf_counter() - t) / len(taken)) / 2
        res.steps += 1
        res.entries += len(taken)
    res.seconds = time.perf_counter() - start
    res.left = pend.count()
    return res


def _pending_step(ctx: HeteroContext, taken: list[str], res: PendingResult) -> None:
    """One step: the ``o`` entries become ``s`` entries of the vectors that keep their node (added before the
    caller removes the ``o`` ones), so a vector kept by many of the backlog's moved nodes is recomputed once; the
    ``s`` entries' vectors are computed, published and written."""
    nb = Neighbourhood(ctx)
    outs: set[Node] = set()
    targets: set[Node] = set()
    for m in taken:
        op, node = PendingSet.parse(m)
        if op == "o":
            outs.add(node)
        elif node[0] in ("user", "item"):
            targets.add(node)
    if outs:
        with nb.timed("pending_out_s"):
            keep = _keepers(nb, outs)
            res.expanded += PendingSet(ctx).add((), keep - targets)
    if targets:
        with nb.timed("pending_last_s"):
            users, items = last_layer(nb, targets, LayerStore(ctx), {})
        version = ctx.encoder.version
        with nb.timed("pending_publish_s"):
            res.published += publish_vectors(ctx.redis, ctx.stream, {ITEM: items, USER: users}, version)
        with nb.timed("pending_write_s"):  # no tokens: a chunk answers no mark, and clears none
            for label, vecs in ((ITEM, items), (USER, users)):
                if vecs:
                    n = write_and_clear(ctx.driver, label, vecs.items(), version, database=ctx.database, batch_size=ctx.write_batch)[0]
                    setattr(res, "items" if label == ITEM else "users", getattr(res, "items" if label == ITEM else "users") + n)
    res.cached_items += len(nb.partial)
    for k, v in nb.phases.items():
        res.phases[k] += v


def _keepers(nb: Neighbourhood, nodes: set[Node]) -> set[Node]:
    """The users and items that keep one of ``nodes`` in their cap (`Neighbourhood.out`, its served vectors). A
    user's are its items whose stored cap keeps it (`CapStore.users`): no item row is read, decoded into rows or
    weighed, where `Neighbourhood.out` did all three for every item of every user (most of the chunks' time, issue
    17). The stored cap is what `Neighbourhood.out` reads for an unmarked item too; an item without one is taken
    (a vector computed again that did not move costs time, never exactness)."""
    users = sorted(nid for kind, nid in nodes if kind == "user")
    rest = {n for n in nodes if n[0] != "user"}
    keep = {n for n in nb.out(rest) if n[0] in ("user", "item")} if rest else set()
    if users:
        with nb.timed("read_user_edges_s"):
            edges, _ = subgraph.user_edges(nb.ctx.driver, users, database=nb.ctx.database)
        shoppers: dict[str, set[str]] = defaultdict(set)
        for e in edges:
            shoppers[e.item].add(e.user)
        with nb.timed("read_item_caps_s"):
            kept = nb.caps.users(shoppers)
        keep.update(("item", i) for i, us in shoppers.items() if i not in kept or not us.isdisjoint(kept[i]))
    return keep


def round_and_chunks(
    ctx: HeteroContext,
    limit: int,
    chunk_s: float,
    hold_s: float,
    queued: Callable[[], bool] = lambda: False,
    max_lag_s: float = float("inf"),
) -> HeteroResult:
    """One task's work (`workers.jobs.recompute`): a round of the marks, then chunks of the pending set of about
    ``chunk_s`` each: at least one (the pending set advances under a load that always queues the next round), and
    more while no round is ``queued`` or the oldest entry has waited longer than ``max_lag_s`` (the items' lag is
    bounded: under a load the rounds cannot leave room for, the users wait instead), while the task has run less
    than ``hold_s`` (the lock's holder must return)."""
    _freeze_heap(ctx.encoder.version)
    res = recompute_marked(ctx, limit)
    if not deferred(ctx):
        return res
    start = time.perf_counter()
    phases: dict[str, float] = defaultdict(float, res.phases)
    while True:
        chunk = recompute_pending(ctx, chunk_s)
        res.pending_done += chunk.entries
        res.pending_left = chunk.left
        res.pending_s += chunk.seconds
        res.pending_users += chunk.users
        res.pending_items += chunk.items
        res.pending_steps += chunk.steps
        res.pending_expanded += chunk.expanded
        res.cached_items += chunk.cached_items
        res.published += chunk.published
        for k, v in chunk.phases.items():
            phases[k] += v
        if not chunk.entries or not chunk.left or time.perf_counter() - start >= hold_s:
            break
        if queued() and PendingSet(ctx).oldest_age() <= max_lag_s:
            break
    res.pending_s = round(res.pending_s, 4)
    res.phases = {k: round(v, 4) for k, v in sorted(phases.items())}
    return res


_frozen_for: list[str] = []  # the version whose first task froze the heap (`_freeze_heap`)


def _freeze_heap(version: str) -> None:
    """Moves every object alive at a version's first task (the libraries, the model, the encoder's tables) out of
    the cyclic collector's reach (``gc.freeze``, as the server does: `server.lifecycle`): a round makes ~10^5 rows
    that outlive the young generations, which set off full collections scanning the ~5 * 10^5 objects of the
    libraries: 0.2-0.3 s pauses in the rounds under load (issue 17). Frozen objects are still freed by reference
    counting; at the next version everything is the collector's again (``gc.unfreeze``) before the new freeze."""
    if _frozen_for == [version]:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _frozen_for[:] = [version]


def drain(ctx: HeteroContext, limit: int = 10000, chunk_s: float = 0.0) -> list[HeteroResult]:
    """Rounds and chunks until no mark and no pending entry is left (tests and offline tools; the worker's tasks
    do the same under the lock, `round_and_chunks`). ``chunk_s`` 0: one step of the pending set between rounds."""
    rounds = []
    while True:
        res = round_and_chunks(ctx, limit, chunk_s, 0.0)
        rounds.append(res)
        if res.marks == 0 and res.pending_left == 0 and res.pending_done == 0:
            return rounds


def _everything(ctx: HeteroContext) -> tuple[list[str], list[EdgeRow], list[ItemRow]]:
    return (
        subgraph.all_user_ids(ctx.driver, database=ctx.database),
        subgraph.all_edges(ctx.driver, database=ctx.database),
        subgraph.all_items(ctx.driver, database=ctx.database),
    )


# ------------------------------------------------------------------------------------------------ full
@dataclass
class HeteroFull:
    version: str
    vectors: dict[str, dict[str, np.ndarray]]
    prints: dict[str, str]
    timings: Timings
    layers: dict[int, dict[Node, np.ndarray]] = field(default_factory=dict)  # intermediate outputs, 1..K-1
    caps: dict[str, list[EdgeRow]] = field(default_factory=dict)  # each item's capped in-rows (`CapStore`)
    counts: dict[str, int] = field(default_factory=dict)  # each item's count of them, where sessions read it


def full_vectors(ctx: HeteroContext, progress: Callable[[str], None] | None = None) -> HeteroFull:
    """Every user and item vector from the whole graph, and every node's in-list fingerprint (nothing written)."""
    enc, timings = ctx.encoder, Timings()
    clock = Laps(timings)
    say = progress or (lambda _m: None)
    say("reading the graph")
    users, edges, rows = _everything(ctx)
    clock.lap("pull_s")
    say(f"embedding {len(users):,} users, {len(rows):,} items")
    out = enc.encode(users, edges, rows, layers=range(0 if enc.sessions else 1, enc.layers))
    clock.lap("forward_s")
    # every row weighed at once (each user's rows are all here, so the recency ranks are the whole graph's)
    by_user: dict[str, list[tuple[EdgeRow, float]]] = defaultdict(list)
    by_item: dict[str, list[tuple[EdgeRow, float]]] = defaultdict(list)
    for e, into_item, into_user in zip(edges, *enc.weigh(edges)):
        by_user[e.user].append((e, into_user))
        by_item[e.item].append((e, into_item))
    members: dict[Node, list[str]] = defaultdict(list)
    for r in rows:
        for c in enc.categories_of(r):
            members[("category", c)].append(r.id)
        if (b := enc.brand_of(r)) is not None:
            members[("brand", b)].append(r.id)
    prints = {f"user:{x}": enc.user_print(enc.top_items(by_user[x])) for x in users}
    tops = {r.id: enc.top_users(by_item[r.id]) for r in rows}
    prints.update({f"item:{r.id}": enc.item_print(tops[r.id], r) for r in rows})
    prints.update({_key(n): enc.fingerprint(enc.cap_of_members(m)) for n, m in members.items()})
    caps = {i: [e for e, _ in kept] for i, kept in tops.items()}
    full = HeteroFull(enc.version, {USER: out.users, ITEM: out.items}, prints, timings, out.layers, caps)
    if enc.sessions:
        full.counts = {i: len(kept) for i, kept in tops.items()}
    return full


def rebuild(ctx: HeteroContext, *, activate_after: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Embed everything with the context's version, then switch to it atomically (as `workers.recompute.rebuild`)."""
    marks = read_marks(ctx.driver, limit=MARKS_PER_ROLLOUT, database=ctx.database) if activate_after else []
    full = full_vectors(ctx, progress)
    clock = Laps(full.timings)
    written = 0
    for label in (ITEM, USER):
        if full.vectors[label]:
            if progress:
                progress(f"writing {len(full.vectors[label]):,} {label} vectors")
            written += write_and_clear(
                ctx.driver, label, full.vectors[label].items(), full.version, database=ctx.database, batch_size=ctx.write_batch
            )[0]
    if ctx.redis is not None:
        ctx.redis.delete(*(k.format(version=full.version) for k in (FINGERPRINTS, HETERO_LAYERS, CAPS, HETERO_CARD)))
        if activate_after:  # every vector is rewritten: what any version's pending set asked for is done
            ctx.redis.delete(PENDING)
    _store_prints(ctx, full.prints)
    CapStore(ctx).put(full.caps)
    store = LayerStore(ctx)
    for k, vectors in full.layers.items():
        store.put(k, vectors)
    store.put_counts(full.counts)
    card = ctx.encoder.side_card()
    if ctx.redis is not None and card is not None:  # after what it reads: a server that finds it finds them
        ctx.redis.set(HETERO_CARD.format(version=full.version), card.to_bytes())
    clock.lap("write_s")
    return switch_to(ctx.driver, ctx.database, ctx.redis, ctx.stream, full.version, written, full.timings, marks, activate_after)
