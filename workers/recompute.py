"""Incremental and full recompute of the served vectors, and model roll-out.

Incremental (``recompute_marked``), with the receptive field of ``workers.live``:

1. read marks (node id + the token of the write that marked it): the oldest, and under a backlog the newest
   first (`workers.round_size`);
2. items: marked items, new items under marked categories/brands, and the new items among the marked users'
   edges (the fold-in reads an item's first shoppers' edges). A known item's vector is fixed for the version
   (written only if missing); a new item's vector is recomputed from its metadata and first shoppers and, if it
   differs from the stored vector of the same version, its users join the affected set, and it goes on the delta
   stream at once (`_publish_first`: shoppers like its buyers need not wait for its shoppers' recompute);
3. users: the marked ones plus those reached in step 2; pull their edges (batched Cypher), cap each user to the
   top-N items, take the vectors of the new items they reach (stored, or computed now when missing), forward;
4. publish the other vectors on the delta stream, then write items, users and queries to Neo4j with the model version,
   clearing each written node's mark in the same transaction if its token is unchanged, and mark the written users'
   ego vectors (SimilarUsers) as due;
5. compare-and-clear the other marks read (a change that landed meanwhile keeps its mark).

The ego vectors follow in ego rounds of their own (``recompute_ego``, lower priority: `workers.jobs.recompute`
runs them only while no user round is queued), from the same inputs as the user vectors.

Every step is idempotent, so a task killed anywhere is simply run again. One recompute runs at a time
(a Redis lock): a user's vector is computed after the vectors of the new items it reads were written.
Full recompute (``full_vectors``) computes every vector from the whole graph with the same functions;
invariant 3 says both agree, and ``tests/workers/test_incremental.py`` checks it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Collection

import neo4j
import numpy as np
import torch
from redis import Redis

from graphdb import subgraph
from graphdb.changes import Mark, clear_marks, read_marks
from graphdb.ego import clear_ego_vectors, commit_ego, read_ego_marks, write_ego_vectors
from graphdb.embeddings import write_and_clear
from graphdb.model_state import activate, write_card
from graphdb.round_commit import RoundWrites, commit_round
from graphdb.schema import BRAND, CATEGORY, ITEM, QUERY, USER
from graphdb.searches import all_searches, user_searches
from workers import publish
from workers.ego_live import ego_encoder
from workers.live import LiveEncoder
from workers.steps import timed
from workers.user_side import capped_neighbours, latest_searches, latest_times, pair_strengths

log = logging.getLogger(__name__)

# A stored vector equal to the recomputed one within this is "unchanged" (float32 round trip through Neo4j).
SAME_TOL = 1e-6
# Marks a roll-out clears at most (the oldest ones); any beyond stay for the incremental path, which is correct too.
MARKS_PER_ROLLOUT = 1_000_000


@dataclass
class Context:
    """What a recompute needs, created once per worker process (after fork)."""

    driver: neo4j.Driver
    encoder: LiveEncoder
    redis: Redis | None = None
    stream: str = "ig:embeddings"
    database: str = "neo4j"
    write_batch: int = 5000
    card_written: bool = False  # the version's user-side card is in Neo4j (written once per process)


@dataclass
class Timings:
    pull_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    publish_s: float = 0.0  # of write_s, the delta stream's share (what a publish costs apart from Neo4j's writes)

    def total(self) -> float:
        return self.pull_s + self.forward_s + self.write_s


@dataclass
class RecomputeResult:
    version: str
    marks: int = 0
    users: int = 0
    items: int = 0
    queries: int = 0
    propagated_users: int = 0
    published: int = 0
    cleared: int = 0
    timings: Timings = field(default_factory=Timings)
    steps: dict[str, float] = field(default_factory=dict)  # wall seconds per step of the round (what a round's time goes to)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("timings", "steps")}
        out.update({k: round(v, 4) for k, v in self.timings.__dict__.items()})
        out["steps"] = {k: round(v, 4) for k, v in self.steps.items()}
        return out


def _ensure_card(ctx: Context) -> None:
    """The version's user-side card goes to Neo4j before any of its vectors: a server that serves them can then
    embed sessions (idempotent)."""
    if not ctx.card_written:
        write_card(ctx.driver, ctx.encoder.card(), database=ctx.database)
        ctx.card_written = True


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _differs(stored: subgraph.StoredVector | None, vec: np.ndarray, version: str) -> bool:
    if stored is None or stored.vector is None or stored.version != version or len(stored.vector) != len(vec):
        return True
    return bool(np.max(np.abs(np.asarray(stored.vector, np.float32) - vec)) > SAME_TOL)


# ------------------------------------------------------------------------------------------------ incremental
# The phase of `Timings` each step of a round belongs to (the steps are timed by `workers.steps.timed`).
_PHASE = {
    **dict.fromkeys(
        (
            "read_marks",
            "user_edges",
            "items_under",
            "new_items_read",
            "fold_edges",
            "users_of_items",
            "reached_user_edges",
            "capped_neighbours",
            "user_new_items_read",
            "query_texts",
        ),
        "pull_s",
    ),
    **dict.fromkeys(
        ("items_forward", "user_new_items_forward", "searches_read", "times_strengths", "users_forward", "queries_forward"),
        "forward_s",
    ),
    **dict.fromkeys(("publish_first", "publish", "commit"), "write_s"),
}


def _phases(res: RecomputeResult) -> None:
    """The round's `Timings` from its steps."""
    for name in ("pull_s", "forward_s", "write_s"):
        setattr(res.timings, name, sum(s for step, s in res.steps.items() if _PHASE.get(step) == name))
    res.timings.publish_s = res.steps.get("publish_first", 0.0) + res.steps.get("publish", 0.0)


def recompute_marked(ctx: Context, limit: int = 10000, newest: int = 0) -> RecomputeResult:
    """Recompute what ``limit`` marks affect (the ``newest`` most recently changed, then the oldest:
    `workers.round_size`); see the module docstring. The recomputed users' ego vectors are not computed here: the
    round marks them for `recompute_ego`."""
    version = ctx.encoder.version
    res = RecomputeResult(version)
    steps = res.steps
    with timed(steps, "read_marks"):
        marks = read_marks(ctx.driver, limit=limit, newest=newest, database=ctx.database)
    res.marks = len(marks)
    if not marks:
        return res
    _ensure_card(ctx)
    by_label: dict[str, set[str]] = defaultdict(set)
    for m in marks:
        by_label[m.label].add(m.id)

    # 2. items
    got = _marked_items(ctx, marks, by_label, steps)
    user_reads, stored_new, sends, to_write, scales = got.user_reads, got.stored_new, got.sends, got.to_write, got.scales
    read_for = set(got.marked_users)
    new_vecs = dict(zip(got.row_ids, got.new_out))
    propagate: list[str] = []
    with timed(steps, "items_forward"):
        for iid, vec_t in new_vecs.items():
            vec = _np(vec_t)
            stored = stored_new.get(iid)
            if _differs(stored, vec, version):
                to_write[iid] = vec
                if stored is not None and stored.vector is not None and stored.version == version:
                    propagate.append(iid)  # users computed with the old vector of this item must follow
    with timed(steps, "publish_first"):
        early = _publish_first(ctx, res, marks, {i: to_write[i] for i in new_vecs if i in to_write}, scales)

    # 3. users
    with timed(steps, "users_of_items"):
        reached = subgraph.users_of_items(ctx.driver, propagate, database=ctx.database) if propagate else set()
    user_ids = sorted(by_label[USER] | reached)
    res.propagated_users = len(reached - by_label[USER])
    user_vecs, extra_items, extra_scales = _users(ctx, user_ids, sends, steps, user_reads, read_for)
    to_write.update(extra_items)
    scales.update(extra_scales)

    query_vecs = _queries(ctx, by_label[QUERY], steps)
    _commit(ctx, res, marks, {ITEM: to_write, USER: user_vecs, QUERY: query_vecs}, scales, early)
    _phases(res)
    log.info("recompute round: %d marks, %d users; steps %s", res.marks, res.users, res.as_dict()["steps"])
    return res


@dataclass
class _ItemInputs:
    """What a round reads and computes for its marked items, shared by `recompute_marked` and
    `workers.partitions.recompute_partition`: the marked users' edges, the new items in reach (stored and
    computed) and the known items whose stored vector is of another version."""

    marked_users: list[str]
    user_reads: tuple[list[subgraph.EdgeRow], dict[str, str | None]]
    stored_new: dict[str, subgraph.StoredVector]
    row_ids: list[str]
    new_out: torch.Tensor
    sends: dict[str, torch.Tensor]
    to_write: dict[str, np.ndarray]
    scales: dict[str, float]


def _marked_items(ctx: Context, marks: list[Mark], by_label: dict[str, set[str]], steps: dict[str, float]) -> _ItemInputs:
    enc, version = ctx.encoder, ctx.encoder.version
    # A known item's vector is fixed for the version: it is written only when its stored one is of another.
    known = sorted({m.id for m in marks if m.label == ITEM and enc.is_fixed(m.id) and m.version != version})
    # The marked users' edges: their vectors need them, and with the fold-in the new items among them may count
    # these users among their first shoppers.
    marked_users = sorted(by_label[USER])
    with timed(steps, "user_edges"):
        user_reads = subgraph.user_edges(ctx.driver, marked_users, database=ctx.database) if marked_users else ([], {})
    shopped = {e.item for e in user_reads[0]} if enc.fold_users else set()
    with timed(steps, "items_under"):
        under = subgraph.items_under(ctx.driver, by_label[CATEGORY], by_label[BRAND], database=ctx.database)
    new_ids = sorted({i for i in by_label[ITEM] | shopped | set(under) if not enc.is_fixed(i)})
    with timed(steps, "new_items_read"):
        stored_new = subgraph.stored_vectors(ctx.driver, ITEM, new_ids, database=ctx.database)
        new_rows = subgraph.items(ctx.driver, new_ids, database=ctx.database)
    with timed(steps, "fold_edges"):
        fold_edges = _fold_edges(ctx, new_ids)
    with timed(steps, "items_forward"):
        new_out, new_in, new_scale = enc.new_items_scaled(new_rows, fold_edges)
        row_ids = [r.id for r in new_rows]
        to_write: dict[str, np.ndarray] = dict(zip(known, _np(enc.known_vectors(known)))) if known else {}
        scales: dict[str, float] = dict(zip(known, _np(enc.known_scales(known)).tolist())) if known else {}
        scales.update(zip(row_ids, _np(new_scale).tolist()))
    return _ItemInputs(marked_users, user_reads, stored_new, row_ids, new_out, dict(zip(row_ids, new_in)), to_write, scales)


def _publish_first(
    ctx: Context, res: RecomputeResult, marks: list[Mark], items: dict[str, np.ndarray], scales: dict[str, float]
) -> set[str]:
    """Changed new items' vectors go on the delta stream before their shoppers are recomputed: a new item is what
    shoppers like its buyers wait for (issue 16: in their top 10 within 2 s of its 20th purchase), while its first
    shoppers' recompute (the fold-in's fan-out) can take longer. Returns the ids published; `_commit` publishes the
    rest and writes everything (a crash before the write leaves the marks, and the same vectors are published
    again)."""
    if not items:
        return set()
    since = {m.id: m.since for m in marks if m.label == ITEM and m.id in items and m.since is not None}
    res.published += publish_vectors(ctx.redis, ctx.stream, {ITEM: items}, ctx.encoder.version, {ITEM: since}, scales)
    return set(items)


def _queries(ctx: Context, ids: Collection[str], steps: dict[str, float]) -> dict[str, np.ndarray]:
    """Query vectors: their text only."""
    if not ids:
        return {}
    with timed(steps, "query_texts"):
        texts = subgraph.query_texts(ctx.driver, ids, database=ctx.database)
    with timed(steps, "queries_forward"):
        q = ctx.encoder.queries([texts[k] for k in sorted(texts)])
    return dict(zip(sorted(texts), _np(q))) if q is not None else {}


def _commit(
    ctx: Context,
    res: RecomputeResult,
    marks: list[Mark],
    vecs: dict[str, dict[str, np.ndarray]],
    scales: dict[str, float],
    published: Collection[str] = (),
) -> None:
    """Publish (but for the items in ``published``, already on the stream: `_publish_first`), then write (items
    first) clearing the marks of what was written, mark the written users' ego vectors as due (`recompute_ego`),
    and compare-and-clear the marks of the nodes not written (known items, categories, brands, ...), all in one
    transaction (`graphdb.round_commit`): a crash after publishing leaves the marks, so the same vectors are
    computed, published and written again."""
    version = ctx.encoder.version
    tokens: dict[str, dict[str, str]] = defaultdict(dict)
    since: dict[str, dict[str, float]] = defaultdict(dict)
    for m in marks:
        tokens[m.label][m.id] = m.token
        if m.since is not None:
            since[m.label][m.id] = m.since
    with timed(res.steps, "publish"):
        rest = {i: v for i, v in vecs[ITEM].items() if i not in published}
        res.published += publish_vectors(ctx.redis, ctx.stream, {ITEM: rest, USER: vecs[USER]}, version, since, scales)
    # The ego vectors (SimilarUsers) follow in ego rounds of their own: at 200 events/s their GIN and writes were a
    # third of a round (issue 16), which the next user round waited for.
    ego_due = list(vecs[USER]) if ego_encoder(ctx.encoder) is not None else []
    others = [m for m in marks if m.id not in vecs.get(m.label, ())]
    with timed(res.steps, "commit"):
        counts = commit_round(
            ctx.driver,
            RoundWrites(version, vecs, tokens, scales, ego_due, others),
            database=ctx.database,
            batch_size=ctx.write_batch,
        )
    res.items, res.users, res.queries = (counts.written.get(label, 0) for label in (ITEM, USER, QUERY))
    res.cleared = counts.cleared


def _searches(ctx: Context, user_ids: list[str]) -> dict[str, list[str]] | None:
    """The users' newest searches when the version's user side adds them (`LiveEncoder.search_weight`)."""
    if not ctx.encoder.search_weight:
        return None
    return latest_searches(user_searches(ctx.driver, user_ids, database=ctx.database), ctx.encoder.search_cap)


def _fold_edges(ctx: Context, new_ids: list[str]) -> list[subgraph.EdgeRow]:
    """Every edge of the first shoppers of these new items: what their fold-in reads (`workers.live.fold_sets`)."""
    if not ctx.encoder.fold_users or not new_ids:
        return []
    firsts = subgraph.first_users(ctx.driver, new_ids, ctx.encoder.fold_users, database=ctx.database)
    shoppers = {u for users in firsts.values() for u in users}
    return subgraph.user_edges(ctx.driver, shoppers, database=ctx.database)[0] if shoppers else []


@dataclass
class _UserInputs:
    """What users' vectors (and ego vectors) read: every edge (and item version) of the users, their capped items,
    and what each new item among those sends (computed from its metadata and first shoppers, never read back)."""

    edges: list[subgraph.EdgeRow]
    item_version: dict[str, str | None]
    neighbours: dict[str, list[str]]
    sends: dict[str, torch.Tensor]
    rows: list[subgraph.ItemRow]  # the new items whose sends were computed here
    out_vecs: torch.Tensor | None = None
    in_scales: torch.Tensor | None = None


def _user_inputs(
    ctx: Context,
    user_ids: list[str],
    fresh: dict[str, torch.Tensor],
    steps: dict[str, float],
    read: tuple[list[subgraph.EdgeRow], dict[str, str | None]] = ([], {}),
    read_for: Collection[str] = (),
) -> _UserInputs:
    enc = ctx.encoder
    rest = [u for u in user_ids if u not in read_for]
    with timed(steps, "reached_user_edges"):
        edges, item_version = subgraph.user_edges(ctx.driver, rest, database=ctx.database) if rest else ([], {})
    edges, item_version = read[0] + edges, {**read[1], **item_version}
    with timed(steps, "capped_neighbours"):
        neighbours = capped_neighbours(edges, enc.user_cap, enc.half_life_days)
    # A new item's stored vector is its output (d^b x); what it sends to users (d^-a x) is computed from its
    # metadata and first shoppers here (text vectors are cached), never read back from the stored one.
    missing = sorted({i for items in neighbours.values() for i in items if not enc.is_fixed(i)} - set(fresh))
    with timed(steps, "user_new_items_read"):
        rows = subgraph.items(ctx.driver, missing, database=ctx.database) if missing else []
        fold_edges = _fold_edges(ctx, missing)
    with timed(steps, "user_new_items_forward"):
        out_vecs, in_vecs, in_scales = enc.new_items_scaled(rows, fold_edges)
    sends = {**fresh, **dict(zip([r.id for r in rows], in_vecs))}
    return _UserInputs(edges, item_version, neighbours, sends, rows, out_vecs, in_scales)


def _users(
    ctx: Context,
    user_ids: list[str],
    fresh: dict[str, torch.Tensor],
    steps: dict[str, float],
    read: tuple[list[subgraph.EdgeRow], dict[str, str | None]] = ([], {}),
    read_for: Collection[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """User vectors, and the vectors (and in_scales) of new items computed on the way that Neo4j lacks for this
    version (to be written too). ``fresh``: what the new items computed in this recompute send to their users;
    ``read``: every edge (and item version) of the users ``read_for``, already read."""
    enc, version = ctx.encoder, ctx.encoder.version
    if not user_ids:
        return {}, {}, {}
    got = _user_inputs(ctx, user_ids, fresh, steps, read, read_for)
    with timed(steps, "searches_read"):
        searches = _searches(ctx, user_ids)
    with timed(steps, "times_strengths"):
        times, strengths = latest_times(got.edges), pair_strengths(got.edges, enc.behaviour_weights)
    with timed(steps, "users_forward"):
        out = enc.users(got.neighbours, user_ids, got.sends, times, strengths, searches)
    ids = [r.id for r in got.rows]
    assert got.out_vecs is not None and got.in_scales is not None
    unstored = {i: _np(v) for i, v in zip(ids, got.out_vecs) if got.item_version.get(i) != version}
    scales = {i: s for i, s in zip(ids, _np(got.in_scales).tolist()) if i in unstored}
    return dict(zip(user_ids, _np(out))), unstored, scales


def _ego(
    ctx: Context, neighbours: dict[str, list[str]], user_ids: list[str], sends: dict[str, torch.Tensor]
) -> dict[str, np.ndarray | None]:
    """The users' ego vectors from the items their user vectors read (`workers.ego_live`); None for a user
    without items. Empty when the version has no ego encoder."""
    ego = ego_encoder(ctx.encoder)
    if ego is None:
        return {}
    with_items = [u for u in user_ids if neighbours.get(u)]
    out: dict[str, np.ndarray | None] = {u: None for u in user_ids}
    if with_items:
        out.update(zip(with_items, _np(ego.vectors(neighbours, with_items, sends))))
    return out


# ------------------------------------------------------------------------------------------------ ego rounds
@dataclass
class EgoResult:
    version: str
    marks: int = 0
    written: int = 0
    removed: int = 0
    dropped: int = 0
    stale: int = 0
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "steps"}
        out["steps"] = {k: round(v, 4) for k, v in self.steps.items()}
        return out


def recompute_ego(ctx: Context, limit: int = 200, partition: tuple[int, int] = (0, 1)) -> EgoResult:
    """One ego round: the ego vectors (SimilarUsers) of the users of the oldest ``limit`` ego marks, computed from
    the graph as it is now with the functions the user vectors use (`_user_inputs`, `_ego`: what a full recompute
    computes), written each with its mark cleared if the mark's token is unchanged (`graphdb.ego.commit_ego`). It
    reads marks before the graph, so a vector written is never older than the user round that marked it; a user
    recomputed meanwhile has a new token and keeps the mark. Needs no recompute lock (it writes ego vectors and
    ego marks only), and each step is idempotent, so a killed round is run again. ``partition`` (index,
    partitions): only that partition's marks (`workers.jobs.ego_rounds` runs one round at a time per partition)."""
    res = EgoResult(ctx.encoder.version)
    with timed(res.steps, "read_marks"):
        marks = read_ego_marks(ctx.driver, limit=limit, partition=partition, database=ctx.database)
    res.marks = len(marks)
    if not marks:
        return res
    vectors: dict[str, np.ndarray | None] = {}
    if ego_encoder(ctx.encoder) is not None:  # else: the marks are of a version with an ego model; only cleared
        user_ids = sorted({m.id for m in marks})
        got = _user_inputs(ctx, user_ids, {}, res.steps)
        with timed(res.steps, "ego_forward"):
            vectors = _ego(ctx, got.neighbours, user_ids, got.sends)
    with timed(res.steps, "commit"):
        counts = commit_ego(ctx.driver, marks, vectors, ctx.encoder.version, database=ctx.database)
    res.written, res.removed, res.dropped, res.stale = counts.written, counts.removed, counts.dropped, counts.stale
    log.info("ego round: %d marks, %d written; steps %s", res.marks, res.written, res.as_dict()["steps"])
    return res


def _write_ego(ctx: Context, egos: dict[str, np.ndarray | None], version: str) -> None:
    vecs = [(u, v) for u, v in egos.items() if v is not None]
    if vecs:
        write_ego_vectors(ctx.driver, vecs, version, database=ctx.database, batch_size=ctx.write_batch)
    clear_ego_vectors(ctx.driver, [u for u, v in egos.items() if v is None], database=ctx.database)


def _write(
    ctx: Context,
    label: str,
    vectors: dict[str, np.ndarray],
    version: str,
    tokens: dict[str, str] | None = None,
    in_scales: dict[str, float] | None = None,
) -> tuple[int, int]:
    """(vectors written, marks cleared with them)."""
    if not vectors:
        return 0, 0
    return write_and_clear(
        ctx.driver,
        label,
        vectors.items(),
        version,
        database=ctx.database,
        batch_size=ctx.write_batch,
        tokens=tokens,
        in_scales=in_scales,
    )


def publish_vectors(
    client: Redis | None,
    stream: str,
    by_label: dict[str, dict[str, np.ndarray]],
    version: str,
    since: dict[str, dict[str, float]] | None = None,
    in_scales: dict[str, float] | None = None,
) -> int:
    """Upserts of these vectors on the delta stream (any model kind); none without Redis."""
    if client is None:
        return 0
    now = time.time()
    n = 0
    for label, vecs in by_label.items():
        if vecs:
            ids = list(vecs)
            n += publish.publish(
                client,
                stream,
                publish.upserts(
                    label,
                    ids,
                    np.stack([vecs[i] for i in ids]),
                    version,
                    now,
                    (since or {}).get(label),
                    in_scales if label == ITEM else None,
                ),
            )
    return n


# ------------------------------------------------------------------------------------------------ full
@dataclass
class FullVectors:
    version: str
    vectors: dict[str, dict[str, np.ndarray]]  # label -> id -> vector
    timings: Timings
    in_scales: dict[str, float] = field(default_factory=dict)  # item id -> in_scale (workers.user_side)
    ego: dict[str, np.ndarray | None] = field(default_factory=dict)  # user id -> ego vector (workers.ego_live)

    def count(self) -> int:
        return sum(len(v) for v in self.vectors.values())


def full_vectors(ctx: Context, progress: Callable[[str], None] | None = None) -> FullVectors:
    """Every user, item and query vector from the whole graph (pull + forward; nothing written)."""
    enc = ctx.encoder
    phases: dict[str, float] = {}
    say = progress or (lambda _msg: None)
    with timed(phases, "pull_s"):
        say("reading items")
        items = subgraph.all_items(ctx.driver, database=ctx.database)
        say(f"reading edges of {len(items):,} items")
        edges = subgraph.all_edges(ctx.driver, database=ctx.database)
        users = subgraph.all_user_ids(ctx.driver, database=ctx.database)
        queries = subgraph.all_query_texts(ctx.driver, database=ctx.database)
    say(f"embedding {len(users):,} users, {len(items):,} items")
    with timed(phases, "forward_s"):
        known = [r.id for r in items if enc.is_fixed(r.id)]
        new_rows = [r for r in items if not enc.is_fixed(r.id)]
        item_vecs: dict[str, torch.Tensor] = dict(zip(known, enc.known_vectors(known))) if known else {}
        scales: dict[str, float] = dict(zip(known, _np(enc.known_scales(known)).tolist())) if known else {}
        new_out, new_in, new_scale = enc.new_items_scaled(new_rows, edges)
        item_vecs.update(zip([r.id for r in new_rows], new_out))
        scales.update(zip([r.id for r in new_rows], _np(new_scale).tolist()))
        neighbours = capped_neighbours(edges, enc.user_cap, enc.half_life_days)
        user_ids = sorted(users)
        out: dict[str, dict[str, np.ndarray]] = {ITEM: {i: _np(v) for i, v in item_vecs.items()}}
        sends = dict(zip([r.id for r in new_rows], new_in))
        searched = latest_searches(all_searches(ctx.driver, database=ctx.database), enc.search_cap) if enc.search_weight else None
        u = enc.users(neighbours, user_ids, sends, latest_times(edges), pair_strengths(edges, enc.behaviour_weights), searched)
        out[USER] = dict(zip(user_ids, _np(u)))
        egos = _ego(ctx, neighbours, user_ids, sends)
        q = enc.queries([queries[k] for k in sorted(queries)])
        out[QUERY] = dict(zip(sorted(queries), _np(q))) if q is not None else {}
    return FullVectors(enc.version, out, Timings(**phases), scales, egos)


def write_all(ctx: Context, full: FullVectors, progress: Callable[[str], None] | None = None) -> int:
    """Write every vector of ``full`` to Neo4j (nothing published: servers load a version on activation)."""
    phases: dict[str, float] = {}
    with timed(phases, "write_s"):
        if full.version == ctx.encoder.version:
            _ensure_card(ctx)
        n = 0
        for label in (ITEM, USER, QUERY):
            if full.vectors[label]:
                if progress:
                    progress(f"writing {len(full.vectors[label]):,} {label} vectors")
                n += _write(ctx, label, full.vectors[label], full.version, in_scales=full.in_scales if label == ITEM else None)[0]
        _write_ego(ctx, full.ego, full.version)
    full.timings.write_s += phases["write_s"]
    return n


def rebuild(ctx: Context, *, activate_after: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Embed everything for the context's model version beside the served one, then switch atomically:
    the version becomes active in Neo4j and an ACTIVATE_MODEL delta tells servers to load it.

    The caller holds the recompute lock, so no incremental recompute interleaves (marks wait; none is lost).
    Roll-back is the same call with the previous version's checkpoint.
    """
    # Marks read before the graph is: the vectors computed below cover them, so after the switch they are
    # cleared (compare-and-clear: a change landing meanwhile keeps its mark). Otherwise the first recompute
    # after a roll-out would compute every loaded user again (8,038 marks, 15 s at 1024 dimensions in the demo).
    marks = read_marks(ctx.driver, limit=MARKS_PER_ROLLOUT, database=ctx.database) if activate_after else []
    full = full_vectors(ctx, progress)
    written = write_all(ctx, full, progress)
    return switch_to(ctx.driver, ctx.database, ctx.redis, ctx.stream, full.version, written, full.timings, marks, activate_after)


def switch_to(
    driver: neo4j.Driver,
    database: str,
    client: Redis | None,
    stream: str,
    version: str,
    written: int,
    timings: Timings,
    marks: list[Mark],
    activate_after: bool,
) -> dict[str, object]:
    """After a rebuild has written every vector of ``version``: make it active, tell the servers (an ACTIVATE_MODEL
    delta), clear the ``marks`` read before the rebuild (compare-and-clear), and report. Any model kind."""
    state, cleared = None, 0
    if activate_after:
        state = activate(driver, version, database=database)
        if client is not None:
            publish.publish(client, stream, [publish.activation(version)])
        cleared = clear_marks(driver, marks, database=database)
    return {
        "version": version,
        "written": written,
        "active": state.version if state else None,
        "previous": state.previous if state else None,
        "marks_cleared": cleared,
        **{k: round(v, 3) for k, v in timings.__dict__.items()},
    }
