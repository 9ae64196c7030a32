"""Ingestion throughput: the batched path against one transaction per event, in the same run.

    python -m bench.ingest [--events 200000] [--naive-events 3000] [--gowalla/--no-gowalla] [--out FILE]

Starts its own Neo4j on a free loopback port (or uses ``--neo4j-uri``), loads synthetic events with realistic
shape (Zipf-like item popularity, a mix of behaviours) through ``ingest_events`` in batches, then through the
naive path (each event its own call and transaction) on a fresh part of the id space, and finally times the
whole gowalla train set through the loader. Prints ``RESULT {json}`` last.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from pathlib import Path
from typing import Iterator

import typer
from tqdm import tqdm

from bench._common import emit_result
from graphdb import localstack
from graphdb.driver import connect
from graphdb.ingest import ingest_events
from graphdb.loaders import load_dataset
from graphdb.schema import migrate, wipe
from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings

TYPES = ["view"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase"]


def synthetic_events(n: int, *, prefix: str, users: int, items: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    now = time.time() - 3600
    return [
        {
            "event_id": f"{prefix}{k}",
            "user_id": f"user{rng.randrange(users)}",
            "type": rng.choice(TYPES),
            # Popular items are hit far more often, as in a real shop.
            "item_id": f"item{min(int(rng.paretovariate(1.1)) - 1, items - 1)}" if rng.random() < 0.5
            else f"item{rng.randrange(items)}",
            "ts": now + k * 0.001,
        }
        for k in range(n)
    ]


@contextlib.contextmanager
def neo4j_for_bench(uri: str | None) -> Iterator[Neo4jSettings]:
    if uri:
        yield Neo4jSettings(uri=uri)
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        stack = LocalStackSettings(var_dir=Path(tmp), neo4j_port=localstack.free_port(),
                                   redis_port=localstack.free_port())
        try:
            localstack.start_neo4j(stack)
            yield Neo4jSettings(uri=f"bolt://127.0.0.1:{stack.neo4j_port}")
        finally:
            localstack.down(stack)


def main(
    events: int = typer.Option(200_000, help="events through the batched path"),
    naive_events: int = typer.Option(3_000, help="events through the one-transaction-per-event path"),
    batch_size: int = typer.Option(5_000),
    gowalla: bool = typer.Option(True, help="also time loading the whole gowalla train set"),
    neo4j_uri: str = typer.Option(None, help="use a running Neo4j (it is wiped!) instead of starting one"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
) -> None:
    gs = GraphSettings(batch_size=batch_size)
    with neo4j_for_bench(neo4j_uri) as ns, connect(ns) as driver:
        wipe(driver)
        migrate(driver, gs)
        data = synthetic_events(events + naive_events, prefix="b", users=50_000, items=100_000, seed=7)
        batched, naive = data[:events], data[events:]

        started = time.perf_counter()
        accepted = 0
        for i in tqdm(range(0, len(batched), batch_size), desc="batched", unit="batch"):
            accepted += ingest_events(driver, gs, batched[i:i + batch_size]).accepted
        batched_s = time.perf_counter() - started

        started = time.perf_counter()
        for ev in tqdm(naive, desc="naive", unit="ev"):
            accepted += ingest_events(driver, gs, [ev]).accepted
        naive_s = time.perf_counter() - started
        assert accepted == events + naive_events, "every synthetic event is valid and new"

        result = {
            "bench": "ingest", "events": events, "batch_size": batch_size,
            "batched_eps": round(events / batched_s, 1), "naive_events": naive_events,
            "naive_eps": round(naive_events / naive_s, 1),
        }
        result["ratio"] = round(result["batched_eps"] / result["naive_eps"], 1)

        if gowalla:
            wipe(driver)
            root = DataSettings().datasets_dir / "gowalla"
            bar = tqdm(total=810_128, desc="gowalla", unit="ev")
            started = time.perf_counter()
            loaded = load_dataset(driver, gs, "gowalla", root, progress=bar.update)
            bar.close()
            result["gowalla_events"] = loaded.accepted
            result["gowalla_load_s"] = round(time.perf_counter() - started, 1)
            result["gowalla_eps"] = round(loaded.accepted / result["gowalla_load_s"], 1)
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
