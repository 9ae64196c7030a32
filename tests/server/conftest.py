"""A real gRPC server on a free loopback port, run on its own event loop in a thread; tests talk to it
through the generated stubs over a real channel."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from graphdb.catalog import ItemFacets
from graphdb.settings import GraphSettings
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.app import create_server
from server.delta import connect_redis
from server.engine import Engine
from server.index import normalise
from server.lifecycle import Lifecycle
from server.settings import ServerSettings

DIM = 16


@dataclass
class Harness:
    engine: Engine
    port: int
    loop: asyncio.AbstractEventLoop
    lifecycle: Lifecycle | None = None
    server: Any = None  # grpc.Server, or server.front.FrontedServer when the native front end owns the port
    channels: list[grpc.Channel] = field(default_factory=list)

    def run(self, coro, timeout: float = 60.0) -> Any:
        """Runs a coroutine on the server's loop (where the engine lives) and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args) -> Any:
        async def wrapper():
            return fn(*args)

        return self.run(wrapper())

    def channel(self, token: str | None = None) -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.channels.append(ch)
        return ch

    def stub(self) -> pb_grpc.InterestServiceStub:
        return pb_grpc.InterestServiceStub(self.channel())


def start_harness(
    settings: ServerSettings,
    graph: GraphSettings,
    driver=None,
    *,
    redis_url: str | None = None,
    setup=None,
    start_lifecycle: bool = False,
) -> tuple[Harness, Any]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def boot():
        engine = Engine(settings, graph, driver)
        if setup is not None:
            setup(engine)
        server, port = create_server(settings, engine, graph)
        server.start()
        lifecycle = None
        if start_lifecycle:
            lifecycle = Lifecycle(engine, connect_redis(redis_url, settings.delta_block_ms) if redis_url else None)
            await lifecycle.start()
        return Harness(engine, port, loop, lifecycle, server), server

    harness, server = asyncio.run_coroutine_threadsafe(boot(), loop).result(120)

    def stop():
        for ch in harness.channels:
            ch.close()

        async def down():
            if harness.lifecycle is not None:
                await harness.lifecycle.stop(snapshot=False)
                if harness.lifecycle.redis is not None:
                    await harness.lifecycle.redis.aclose()
            await asyncio.to_thread(lambda: server.stop(0).wait())

        fut = asyncio.run_coroutine_threadsafe(down(), loop)
        try:
            fut.result(30)
        except TimeoutError:
            import sys

            for t in asyncio.all_tasks(loop):
                print("TASK", t.get_coro(), [(f.f_code.co_filename, f.f_lineno) for f in t.get_stack()], file=sys.stderr)
            raise
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return harness, stop


def item_vectors(n: int = 300, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, DIM)).astype(np.float32)
    x = centres[np.arange(n) % 6] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"item-{j}" for j in range(n)], normalise(x)


def seed_graph_items(
    driver, graph: GraphSettings, redis_url: str, stream: str, n: int, version: str = "m1"
) -> tuple[list[str], np.ndarray]:
    """An empty graph with ``n`` viewed items carrying vectors of ``version``, and an empty delta stream."""
    from graphdb.embeddings import write_embeddings
    from graphdb.ingest import ingest_events
    from graphdb.schema import wipe

    wipe(driver)
    redis.Redis.from_url(redis_url).delete(stream)
    ids, vecs = item_vectors(n)
    now = time.time()
    seeded = ingest_events(
        driver, graph, [{"event_id": f"seed-{i}", "user_id": "shop-bot", "type": "view", "item_id": i, "ts": now - 100} for i in ids]
    )
    assert seeded.accepted == n
    assert write_embeddings(driver, "Item", zip(ids, vecs.tolist()), version) == n
    return ids, vecs


def catalogue_facets(ids: list[str]) -> list[ItemFacets]:
    """Even items are in Electronics > Audio, odd in Fashion; brands cycle over three."""
    out = []
    for j, item_id in enumerate(ids):
        cats = ("Electronics", "Electronics > Audio") if j % 2 == 0 else ("Fashion",)
        out.append(ItemFacets(item_id, cats, (f"brand-{j % 3}",), cats[-1:]))
    return out


def load_items(engine: Engine, ids=None, vecs=None, version: str = "m1") -> None:
    if ids is None:
        ids, vecs = item_vectors()
    engine.install(engine.load_vectors(ids, vecs, version))
    engine.update_facets(catalogue_facets(ids))


@pytest.fixture(scope="session")
def server_graph_settings() -> GraphSettings:
    return GraphSettings(pseudonym_key="test-pseudonym-key", embedding_dim=DIM)


def base_settings(**overrides) -> ServerSettings:
    defaults = dict(
        port=0,
        snapshot_dir=None,
        redis_url=None,
        max_k=100,
        max_filter_ids=50,
        max_stream_events=20,
        ann_min_items=100,
        exact_filter_max=50,
        ivf_nprobe=4,
        compact_interval_s=3600.0,
    )
    defaults.update(overrides)
    return ServerSettings(**defaults)


@pytest.fixture(scope="module")
def plain_server(server_graph_settings):
    """A graph-less server with 300 items (IVF base) and facets; no auth."""
    harness, stop = start_harness(base_settings(), server_graph_settings, setup=load_items)
    yield harness
    stop()
