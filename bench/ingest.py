"""Ingestion throughput: the batched path against one transaction per event, in the same run.

    python -m bench.ingest [--events 200000] [--naive-events 3000] [--warmup-events 100000]
                           [--gowalla/--no-gowalla] [--out FILE]
    python -m bench.ingest --import-parquet [--rows 1000000] [--import-first] [--out FILE]

Starts its own Neo4j on a free loopback port (or uses ``--neo4j-uri``) and first warms it up with events that
are then wiped (the JVM compiles Neo4j's hot paths during the first tens of thousands of events; a long-running
database is past that). It then loads synthetic events with realistic shape (Zipf-like item popularity, a mix of
behaviours) in batches through ``ingest_events``, one call per batch, then (after a wipe) the same events through
``ingest_batches`` (pipelined: the next batch is validated and aggregated while the current one is written), then
further events through the naive path (each event its own call and transaction) on a fresh part of the id space,
and finally times the whole gowalla train set through the loader and through ``ingest_batches``.
With ``--import-parquet`` it measures ``interest graph import`` instead (bench/import_parquet.py): a generated
Parquet file in a shop's own column names, with a few bad rows, against the same events through
``ingest_batches`` in the same run. Prints ``RESULT {json}`` last.
"""

from __future__ import annotations

import contextlib
import itertools
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
from graphdb.ingest import ingest_batches, ingest_events
from graphdb.loaders import DATASETS, load_dataset
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
            "item_id": f"item{min(int(rng.paretovariate(1.1)) - 1, items - 1)}"
            if rng.random() < 0.5
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
        stack = LocalStackSettings(var_dir=Path(tmp), neo4j_port=localstack.free_port(), redis_port=localstack.free_port())
        try:
            localstack.start_neo4j(stack)
            yield Neo4jSettings(uri=f"bolt://127.0.0.1:{stack.neo4j_port}")
        finally:
            localstack.down(stack)


def _batches(events: list[dict], size: int) -> Iterator[list[dict]]:
    return (events[i : i + size] for i in range(0, len(events), size))


def main(
    events: int = typer.Option(200_000, help="events through each batched path"),
    naive_events: int = typer.Option(3_000, help="events through the one-transaction-per-event path"),
    batch_size: int = typer.Option(5_000),
    warmup_events: int = typer.Option(100_000, help="events to warm Neo4j up with (not timed, wiped after)"),
    serial: bool = typer.Option(True, help="also time batches through ingest_events one call at a time"),
    gowalla: bool = typer.Option(True, help="also time loading the whole gowalla train set"),
    neo4j_uri: str = typer.Option(None, help="use a running Neo4j (it is wiped!) instead of starting one"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    import_parquet: bool = typer.Option(False, help="time `interest graph import` of a generated Parquet file instead"),
    rows: int = typer.Option(1_000_000, help="rows of that Parquet file"),
    import_first: bool = typer.Option(False, help="with --import-parquet: time the import before its peer"),
) -> None:
    gs = GraphSettings(batch_size=batch_size)
    with neo4j_for_bench(neo4j_uri) as ns, connect(ns) as driver:
        wipe(driver)
        migrate(driver, gs)
        if import_parquet:
            from bench.import_parquet import compare_import

            result = {"bench": "ingest-import", "rows": rows, "batch_size": batch_size, "warmup_events": warmup_events}
            result.update(compare_import(driver, gs, rows=rows, warmup_events=warmup_events, import_first=import_first))
            emit_result(result, out)
            return
        if warmup_events:  # half through each batched path, so neither is timed while the JIT is still at work
            warm = synthetic_events(warmup_events, prefix="w", users=50_000, items=100_000, seed=3)
            half = warm[: warmup_events // 2]
            for batch in tqdm(_batches(half, batch_size), desc="warm-up, serial", unit="batch"):
                ingest_events(driver, gs, batch)
            for _ in tqdm(
                ingest_batches(driver, gs, _batches(warm[len(half) :], batch_size)), desc="warm-up, pipelined", unit="batch"
            ):
                pass
            for ev in warm[:200]:
                ingest_events(driver, gs, [{**ev, "event_id": "w1-" + ev["event_id"]}])
            wipe(driver)
        data = synthetic_events(events + naive_events, prefix="b", users=50_000, items=100_000, seed=7)
        batched, naive = data[:events], data[events:]
        result: dict = {"bench": "ingest", "events": events, "batch_size": batch_size, "warmup_events": warmup_events}

        if serial:  # the same events from an empty graph, like the pipelined run below
            started = time.perf_counter()
            accepted = 0
            for batch in tqdm(_batches(batched, batch_size), desc="batched, serial", unit="batch"):
                accepted += ingest_events(driver, gs, batch).accepted
            result["batched_serial_eps"] = round(events / (time.perf_counter() - started), 1)
            assert accepted == events, "every synthetic event is valid and new"
            wipe(driver)

        started = time.perf_counter()
        accepted = 0
        for r in tqdm(ingest_batches(driver, gs, _batches(batched, batch_size)), desc="batched", unit="batch"):
            accepted += r.accepted
        result["batched_eps"] = round(events / (time.perf_counter() - started), 1)

        started = time.perf_counter()
        for ev in tqdm(naive, desc="naive", unit="ev"):
            accepted += ingest_events(driver, gs, [ev]).accepted
        naive_s = time.perf_counter() - started
        assert accepted == events + naive_events, "every synthetic event is valid and new"
        result["naive_events"] = naive_events
        result["naive_eps"] = round(naive_events / naive_s, 1)
        result["ratio"] = round(result["batched_eps"] / result["naive_eps"], 1)

        if gowalla:
            root = DataSettings().dataset_dir("gowalla")
            wipe(driver)
            bar = tqdm(total=810_128, desc="gowalla, loader", unit="ev")
            started = time.perf_counter()
            loaded = load_dataset(driver, gs, "gowalla", root, progress=bar.update)
            bar.close()
            result["gowalla_events"] = loaded.accepted
            result["gowalla_load_s"] = round(time.perf_counter() - started, 1)
            result["gowalla_eps"] = round(loaded.accepted / result["gowalla_load_s"], 1)

            wipe(driver)
            rows = DATASETS["gowalla"].events(root)
            chunks = (list(itertools.islice(rows, batch_size)) for _ in itertools.count())
            started = time.perf_counter()
            piped_accepted = 0
            with tqdm(total=810_128, desc="gowalla, pipelined", unit="ev") as bar:
                for r in ingest_batches(driver, gs, itertools.takewhile(bool, chunks)):
                    piped_accepted += r.accepted
                    bar.update(r.accepted + r.duplicates + len(r.rejected))
            assert piped_accepted == loaded.accepted
            result["gowalla_pipelined_load_s"] = round(time.perf_counter() - started, 1)
            result["gowalla_pipelined_eps"] = round(piped_accepted / result["gowalla_pipelined_load_s"], 1)
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
