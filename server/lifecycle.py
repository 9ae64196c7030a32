"""Loading and keeping the index fresh: snapshot or Neo4j at start, the delta stream, compaction, snapshots,
facet refreshes and model switches, all on the event loop. Every CPU-heavy step (index builds, snapshot
writes) runs in a thread; their results are installed under the engine's lock, which queries (in the gRPC
worker threads) hold only for a search, so neither side waits long for the other.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

import numpy as np

from graphdb import catalog
from graphdb.embeddings import iter_embeddings
from graphdb.ingest import IngestResult
from graphdb.schema import ITEM
from proto.interest.v1 import interest_pb2 as pb
from server.delta import DeltaConsumer, encode_delete, publish, stream_tail
from server.engine import Engine
from server.index import ItemIndex, build_base
from server.snapshot import load_snapshot, save_snapshot
from server.users import UserVectors
from workers.redis_connect import AsyncRedis

log = logging.getLogger(__name__)
Delta = pb.EmbeddingDelta
# Longest wait for the delta stream at start before reporting ready anyway.
CATCH_UP_MAX_S = 60.0
T = TypeVar("T")


def _freeze_heap() -> None:
    """Moves every object alive now out of the cyclic collector's reach (``gc.freeze``): a full collection holds
    the GIL for as long as it scans, and with the libraries and the index loaded that reached 250 ms while a
    switch's build made garbage, stalling every query (tests/server/test_switch_stall.py). What is frozen is
    still freed by reference counting; only reference cycles among it wait until ``gc.unfreeze`` (``stop``)."""
    gc.freeze()


async def _retrying(what: str, attempt: Callable[[], Awaitable[T]], max_delay_s: float = 5.0) -> T:
    """``await attempt()`` until it succeeds: a backing service down at start delays readiness (health stays
    NOT_SERVING) instead of leaving a server that never loads."""
    delay = 0.5
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, retried
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, max_delay_s)


def stream_position(entry_id: str) -> tuple[int, int]:
    """A Redis stream id ("<ms>-<seq>") as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Lifecycle:
    def __init__(self, engine: Engine, redis: AsyncRedis | None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.redis = redis
        self.consumer: DeltaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, list[Delta]] = {}  # model version being built -> deltas that arrived meanwhile
        self._compacting = False
        self._signals: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_compact = time.monotonic()
        self.stale_deltas = 0
        self.forgotten_since_snapshot = False
        # Builds a model version's index (None: the newest), in a thread: from Neo4j unless set. bench.switch_stall
        # sets it to synthetic vectors of 1M items, more than the Neo4j here holds in reasonable time.
        self.build_version: Callable[[str | None], ItemIndex] = self._build_from_graph
        engine.on_forget.append(self._note_forget)
        if redis is not None:
            engine.on_forget.append(self._publish_forget)
            engine.on_ingest.append(self._signal_changed)

    def _signal_changed(self, _count: int, result: IngestResult) -> None:
        """Wake the recompute scheduler: the graph changed (fire and forget; its periodic poll is the fallback).
        Called from the RPC's worker thread."""
        if result.accepted and self.redis is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._background(self._push_changed()))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, holding a reference until done so the task is not collected early."""
        task = asyncio.get_running_loop().create_task(coro)
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)

    async def _push_changed(self) -> None:
        try:
            assert self.redis is not None  # only signalled with Redis
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(self.settings.changed_key, b"1")
            pipe.ltrim(self.settings.changed_key, 0, 0)
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: the scheduler's poll picks the change up
            log.debug("change signal not sent: %s", exc)

    @property
    def switching(self) -> tuple[str, ...]:
        """The model versions being built beside the serving one (a switch in progress), oldest first."""
        return tuple(self._pending)

    # -- start / stop --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the index (snapshot, else Neo4j), catches up with the delta stream, then reports ready (health
        SERVING) and keeps the background loops running. Queries are answered from the loaded index meanwhile."""
        position = "0-0"
        self._loop = asyncio.get_running_loop()
        self.engine.hold_ready = self.redis is not None
        snap = None
        if self.settings.snapshot_dir is not None:
            try:
                snap = await asyncio.to_thread(load_snapshot, self.settings.snapshot_dir, self.engine.params, self.engine.labels)
            except Exception:  # noqa: BLE001 - a broken snapshot is not fatal: Neo4j has everything
                log.exception("snapshot unreadable; rebuilding from Neo4j")
        if snap is not None and snap.index.dim == self.engine.dim:
            users = UserVectors(snap.index.model_version, self.settings.user_cache_size)
            for pseudonym, (vec, ts) in snap.users.items():
                users.put(pseudonym, vec, ts)
            self.engine.install(snap.index, users)
            position = snap.stream_id
            log.info("loaded snapshot: %d items, stream position %s", len(snap.index), position)
        else:
            if (redis := self.redis) is not None:  # deltas after this point are replayed; replays are idempotent
                position = await _retrying("reading the delta stream's tail", lambda: stream_tail(redis, self.settings.delta_stream))
            index = await _retrying("building the index from Neo4j", lambda: asyncio.to_thread(self.build_version, None))
            self.engine.install(index)
        await _retrying("reading the item facets from Neo4j", self.refresh_facets)
        _freeze_heap()
        if self.redis is not None:
            self.consumer = DeltaConsumer(
                self.redis,
                self.settings.delta_stream,
                position,
                self.apply,
                block_ms=self.settings.delta_block_ms,
                batch=self.settings.delta_batch,
            )
            self._spawn(self.consumer.run())
            await self._catch_up()
            self.engine.hold_ready = False
            await self.engine.notify_ready(True)
        self._spawn(self._every(self.settings.compact_interval_s / 4, self._maybe_compact))
        self._spawn(self._every(self.settings.catalog_refresh_s, self.refresh_facets))
        if self.settings.snapshot_dir is not None and self.settings.snapshot_writer:
            self._spawn(self._every(self.settings.snapshot_interval_s, self.save_snapshot))
            self._spawn(self._every(self.settings.forget_snapshot_s, self._snapshot_after_forget))

    async def _catch_up(self) -> None:
        """Waits until the consumer has applied the stream up to its newest entry as of now (bounded: with the
        stream unreachable or a huge backlog the loaded index is served rather than nothing)."""
        assert self.redis is not None and self.consumer is not None  # called once both are there
        started = time.monotonic()
        try:
            target = await asyncio.wait_for(stream_tail(self.redis, self.settings.delta_stream), CATCH_UP_MAX_S)
        except Exception as exc:  # noqa: BLE001 - Redis away: serve the snapshot; the consumer retries
            log.warning("delta stream unreachable (%s); serving without catching up first", exc)
            return
        while stream_position(self.consumer.position) < stream_position(target):
            if time.monotonic() - started > CATCH_UP_MAX_S:
                log.warning(
                    "still catching up with the delta stream after %.0f s (at %s of %s); serving meanwhile",
                    CATCH_UP_MAX_S,
                    self.consumer.position,
                    target,
                )
                return
            await asyncio.sleep(0.01)
        log.info("caught up with the delta stream at %s in %.2f s", target, time.monotonic() - started)

    async def stop(self, snapshot: bool = True) -> None:
        if self.consumer is not None:
            self.consumer.stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a client library swallowing a cancel must not hang shutdown
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:
                log.warning("background task %r did not stop in time", task.get_coro())
        self._tasks.clear()
        if snapshot and self.settings.snapshot_dir is not None and self.engine.ready:
            await self.save_snapshot()
        gc.unfreeze()  # what was frozen is the collector's again, so cycles among it are freed at exit

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _every(self, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - background upkeep must survive a failed round
                log.exception("background task %s failed", getattr(fn, "__name__", fn))

    # -- building --------------------------------------------------------------------------------------------
    def _build_from_graph(self, model_version: str | None) -> ItemIndex:
        """All item vectors of a model version (default: the newest) from Neo4j, as a new index (thread)."""
        engine = self.engine
        if engine.driver is None:
            return ItemIndex(engine.dim, model_version or "", engine.labels, engine.params)
        version = model_version or catalog.latest_model_version(engine.driver, database=engine.database)
        if version is None:
            return ItemIndex(engine.dim, "", engine.labels, engine.params)
        ids, vecs, ts, scales = [], [], [], []
        for rec in iter_embeddings(engine.driver, ITEM, model_version=version, database=engine.database):
            if len(rec.vector) == engine.dim:
                ids.append(rec.id)
                vecs.append(rec.vector)
                ts.append(rec.updated_at or 0.0)
                scales.append(rec.in_scale or 0.0)
        matrix = np.asarray(vecs, np.float32).reshape(len(ids), engine.dim)
        log.info("building index of model %r from Neo4j: %d items", version, len(ids))
        return engine.load_vectors(ids, matrix, version, np.asarray(ts, np.float64), np.asarray(scales, np.float32))

    async def refresh_facets(self) -> None:
        if (driver := self.engine.driver) is None:
            return
        facets = await asyncio.to_thread(lambda: list(catalog.iter_item_facets(driver, database=self.engine.database)))
        self.engine.update_facets(facets)

    # -- the delta stream --------------------------------------------------------------------------------------
    async def apply(self, msg: Delta) -> None:
        engine = self.engine
        serving = engine.serving
        if msg.op == Delta.OP_SNAPSHOT:  # asked by a worker task: every replica writes its own
            self._background(self.save_snapshot())
            return
        if msg.op == Delta.OP_ACTIVATE_MODEL:
            if serving is None or msg.model_version != serving.index.model_version:
                if msg.model_version not in self._pending:
                    self._pending[msg.model_version] = []
                    self._spawn(self._switch(msg.model_version))
            return
        if msg.model_version in self._pending:
            self._pending[msg.model_version].append(msg)
            return
        if serving is None:
            return
        with engine.lock:
            if msg.op == Delta.OP_UPSERT and serving.index.model_version == "" and len(serving.index) == 0:
                serving.index.model_version = serving.users.model_version = msg.model_version  # first model ever
            apply_to(serving.index, serving.users, msg, self)
            served = (
                msg.op == Delta.OP_UPSERT and msg.model_version == serving.index.model_version and len(msg.vector) == serving.index.dim
            )
        if served and engine.metrics is not None:
            engine.metrics.served_change(msg.changed_at)

    async def _switch(self, version: str) -> None:
        """Builds ``version`` beside the serving index, replays the deltas that arrived meanwhile, swaps."""
        try:
            index = await asyncio.to_thread(self.build_version, version)
            users = UserVectors(version, self.settings.user_cache_size)
            with self.engine.lock:
                if self.engine.serving is not None:
                    users.carry_forgotten(self.engine.serving.users)
            for msg in self._pending.get(version, []):
                apply_to(index, users, msg, self)
            self.engine.install(index, users)
            _freeze_heap()
        finally:
            self._pending.pop(version, None)

    async def _note_forget(self, pseudonym: str) -> None:
        self.forgotten_since_snapshot = True

    async def _snapshot_after_forget(self) -> None:
        """A forgotten user's cached vector must not linger on disk until the next regular snapshot."""
        if self.forgotten_since_snapshot:
            self.forgotten_since_snapshot = False
            await self.save_snapshot()

    async def _publish_forget(self, pseudonym: str) -> None:
        """Other replicas drop the user from their caches too."""
        try:
            assert self.redis is not None  # only registered with Redis
            await publish(self.redis, self.settings.delta_stream, encode_delete(pb.NODE_TYPE_USER, pseudonym))
        except Exception:  # noqa: BLE001 - the graph is already forgotten; replicas' caches expire anyway
            log.exception("could not publish the forget of a user to the delta stream")

    # -- compaction and snapshots -------------------------------------------------------------------------------
    async def _maybe_compact(self, force: bool = False) -> bool:
        serving = self.engine.serving
        if serving is None or self._compacting:
            return False
        index = serving.index
        changed = index.delta_rows > 0 or index.tombstones > 0
        due = time.monotonic() - self._last_compact >= self.settings.compact_interval_s
        if not force and not (index.delta_rows >= self.settings.compact_delta_max or (changed and due)):
            return False
        self._compacting = True
        try:
            with self.engine.lock:
                labels, vecs, versions, cents = index.compaction_input()
            base = await asyncio.to_thread(build_base, vecs, labels, index.params, cents)
            with self.engine.lock:
                if self.engine.serving is not None and self.engine.serving.index is index:  # no switch meanwhile
                    index.apply_compaction(base, versions)
            self._last_compact = time.monotonic()
            return True
        finally:
            self._compacting = False

    async def compact(self) -> bool:
        return await self._maybe_compact(force=True)

    async def save_snapshot(self) -> None:
        serving = self.engine.serving
        if serving is None or self.settings.snapshot_dir is None or not self.settings.snapshot_writer:
            return
        position = self.consumer.position if self.consumer else "0-0"
        with self.engine.lock:
            users = serving.users.items()
        await asyncio.to_thread(save_snapshot, self.settings.snapshot_dir, serving.index, users, position, serving.index.base)


def apply_to(index: ItemIndex, users: UserVectors, msg: Delta, lifecycle: Lifecycle | None = None) -> None:
    """Applies one upsert/delete to the given serving state; other model versions are counted and dropped."""
    if msg.node_type == pb.NODE_TYPE_USER:
        if msg.op == Delta.OP_DELETE:
            users.forget(msg.id, msg.ts)  # also refuses older upserts still in flight
            if lifecycle is not None:  # forgotten on another server or process: our snapshot must drop it too
                lifecycle.forgotten_since_snapshot = True
        elif msg.model_version == users.model_version and len(msg.vector) == index.dim:
            users.put(msg.id, msg.vector, msg.ts)
        elif lifecycle is not None:
            lifecycle.stale_deltas += 1
        return
    if msg.node_type != pb.NODE_TYPE_ITEM:
        return
    if msg.op == Delta.OP_DELETE:
        index.delete(msg.id)
    elif msg.op == Delta.OP_UPSERT and msg.model_version == index.model_version and len(msg.vector) == index.dim:
        index.upsert(msg.id, np.asarray(msg.vector, np.float32), msg.ts, msg.in_scale)
    elif lifecycle is not None:
        lifecycle.stale_deltas += 1
