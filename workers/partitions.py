"""Partitioned incremental recompute: N workers recompute N partitions of the marks at once.

Every marked node has a slot, a stable hash of its id (``graphdb.marks``); partition ``p`` of ``P``
(``IG_WORKER_PARTITIONS``) owns the slots ``s % P == p``. A round claims one partition with a Redis lock of its
own (timeout ``IG_WORKER_LOCK_TIMEOUT_S``: a worker killed while holding it gives it back by expiry), reads only
that partition's marks, and writes only the nodes whose marks it read. Work that belongs elsewhere is handed over
as a mark (``graphdb.slots.hand_off``), in Neo4j, before this round's own writes:

- a new item of another partition, reached through a marked user's edges or a marked category/brand, whose
  vector computed here differs from its stored one: marked for its owner;
- the users of an own new item whose vector changed (or was never stored): marked, for whichever partition
  owns each (the ones this round computes anyway excepted).

So no node is written by two partitions, and the ordering the model needs is kept without one: a user's vector
never reads a new item's stored vector, it computes what the item sends from the graph (``recompute._users``),
and a user computed before the item changed is marked when the item is written. Before publishing and writing,
a round renews its lock (``Claim.keep``); one that lost it (stalled past the timeout) stops there, so a stale
round never publishes over the new holder's vectors. All workers must share ``IG_WORKER_PARTITIONS``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import redis
import redis.lock

from graphdb import subgraph
from graphdb.errors import InvalidInput, Unavailable
from graphdb.schema import ITEM, QUERY, USER
from graphdb.slots import hand_off, read_partition_marks
from workers import redis_keys
from workers.recompute import Context, RecomputeResult, _commit, _differs, _ensure_card, _marked_items, _np, _phases, _queries, _users
from workers.steps import timed

log = logging.getLogger(__name__)

lock_name = redis_keys.part_lock  # "{ig}:recompute:part:P:p" (the hash tag: workers.redis_keys)


@dataclass
class Claim:
    """One partition held by this process."""

    index: int
    partitions: int
    lock: redis.lock.Lock

    def keep(self) -> None:
        """Renew the lock's full timeout; raise `Unavailable` if it expired and may be someone else's now."""
        try:
            self.lock.reacquire()
        except redis.exceptions.LockError as exc:
            raise Unavailable(f"{self.lock.name!r} was lost (its timeout passed); its marks stay") from exc


@contextmanager
def claim(
    client: redis.Redis,
    index: int,
    partitions: int,
    timeout_s: float,
    wait_s: float = 0.0,
    *,
    name: Callable[[int, int], str] = lock_name,
) -> Iterator[Claim | None]:
    """The partition's lock (``name``: its recompute lock, or `redis_keys.ego_lock` for its ego rounds), or None
    when another holds it (after waiting at most ``wait_s``)."""
    lock = client.lock(name(index, partitions), timeout=timeout_s, blocking_timeout=wait_s)
    got = lock.acquire(blocking=wait_s > 0)
    try:
        yield Claim(index, partitions, lock) if got else None
    finally:
        if got:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("partition %d/%d: lock expired before release", index, partitions)


@contextmanager
def hold_all(client: redis.Redis, partitions: int, timeout_s: float, wait_s: float) -> Iterator[None]:
    """Every partition (in order, so two callers cannot deadlock): a roll-out excludes every round."""
    with ExitStack() as stack:
        for p in range(partitions):
            if stack.enter_context(claim(client, p, partitions, timeout_s, wait_s)) is None:
                raise Unavailable(f"partition {p}/{partitions} stayed claimed for {wait_s:.0f}s")
        yield


# ------------------------------------------------------------------------------------------------ one round
@dataclass
class PartitionResult:
    index: int
    result: RecomputeResult
    handed_off: int = 0


def recompute_partition(
    ctx: Context, index: int, partitions: int, limit: int, keep: Callable[[], None], newest: int = 0
) -> PartitionResult:
    """What ``limit`` marks of one partition (its ``newest``, then its oldest) affect, written for the nodes of
    those marks only."""
    version = ctx.encoder.version
    res = RecomputeResult(version)
    steps = res.steps
    with timed(steps, "read_marks"):
        marks = read_partition_marks(ctx.driver, index, partitions, limit=limit, newest=newest, database=ctx.database)
    res.marks = len(marks)
    if not marks:
        return PartitionResult(index, res)
    _ensure_card(ctx)
    by_label: dict[str, set[str]] = defaultdict(set)
    for m in marks:
        by_label[m.label].add(m.id)

    # items: the same reach as `recompute_marked`; only the marked ones are written here
    got = _marked_items(ctx, marks, by_label, steps)
    marked_users, user_reads, sends, to_write, scales = got.marked_users, got.user_reads, got.sends, got.to_write, got.scales
    propagate: list[str] = []
    foreign: list[str] = []
    with timed(steps, "items_forward"):
        for iid, vec_t in zip(got.row_ids, got.new_out):
            vec = _np(vec_t)
            stored = got.stored_new.get(iid)
            if not _differs(stored, vec, version):
                continue
            if iid not in by_label[ITEM]:
                foreign.append(iid)  # not a mark of this round: its owner computes and writes it
                continue
            to_write[iid] = vec
            # users computed with its old vector, or computed with what it sent before it was first written, follow
            if stored is None or stored.vector is None or stored.version == version:
                propagate.append(iid)

    # users: the marked ones (the new items' vectors they read are computed on the way, from the same graph)
    with timed(steps, "users_of_items"):
        reached = subgraph.users_of_items(ctx.driver, propagate, database=ctx.database) - by_label[USER] if propagate else set()
    user_vecs, _unstored, _ = _users(ctx, marked_users, sends, steps, user_reads, set(marked_users))
    query_vecs = _queries(ctx, by_label[QUERY], steps)

    # hand over, then publish and write: a crash after the hand-off leaves this round's marks, so it runs again
    keep()
    handed = hand_off(ctx.driver, {USER: reached, ITEM: foreign}, now=time.time(), database=ctx.database)
    _commit(ctx, res, marks, {ITEM: to_write, USER: user_vecs, QUERY: query_vecs}, scales)
    _phases(res)
    res.propagated_users = len(reached)
    return PartitionResult(index, res, handed)


# ------------------------------------------------------------------------------------------------ the job
def recompute(
    ctx: Context,
    client: redis.Redis,
    partitions: int,
    limit: int,
    lock_timeout_s: float,
    index: int | None = None,
    newest: int = 0,
) -> dict:
    """One round on partition ``index``, or on every partition this worker can claim now (from a random one on,
    so concurrent callers spread); a partition another worker holds is skipped (its marks wait for the next)."""
    if index is not None and not 0 <= index < partitions:
        raise InvalidInput(f"partition {index} is not one of 0..{partitions - 1} (IG_WORKER_PARTITIONS={partitions})")
    order = [index] if index is not None else rotated(partitions)
    total = RecomputeResult(ctx.encoder.version)
    done: list[int] = []
    skipped: list[int] = []
    handed = 0
    lock_wait = 0.0
    full = False  # a partition had at least ``limit`` marks: more may be waiting (`workers.round_size`)
    for p in order:
        t0 = time.perf_counter()
        with claim(client, p, partitions, lock_timeout_s) as held:
            lock_wait += time.perf_counter() - t0
            if held is None:
                skipped.append(p)
                continue
            started = time.time()
            out = recompute_partition(ctx, p, partitions, limit, held.keep, newest)
            log.info(
                "partition %d/%d round from %.6f to %.6f: %d marks, %d users, %d items, %d handed off",
                p,
                partitions,
                started,
                time.time(),
                out.result.marks,
                out.result.users,
                out.result.items,
                out.handed_off,
            )
        done.append(p)
        handed += out.handed_off
        full = full or out.result.marks >= limit
        _add(total, out.result)
    return {
        **total.as_dict(),
        "partitions": done,
        "skipped": skipped,
        "handed_off": handed,
        "lock_wait_s": round(lock_wait, 6),
        "backlog": full,
    }


def rotated(partitions: int) -> list[int]:
    start = random.randrange(partitions)
    return [(start + k) % partitions for k in range(partitions)]


def _add(total: RecomputeResult, part: RecomputeResult) -> None:
    for name in ("marks", "users", "items", "queries", "propagated_users", "published", "cleared"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for name in ("pull_s", "forward_s", "write_s", "publish_s"):
        setattr(total.timings, name, getattr(total.timings, name) + getattr(part.timings, name))
