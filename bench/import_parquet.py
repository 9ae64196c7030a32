"""``python -m bench.ingest --import-parquet``: ``interest graph import`` of a shop's Parquet file, timed against the
same events through ``ingest_batches`` (what the loaders use) in the same run.

The file is generated: ``rows`` rows in a shop's own column names (order_id, customer, action, sku, time as a
Parquet timestamp in milliseconds), the synthetic mix of bench.ingest (50,000 shoppers, 100,000 items with a few
hot ones, mostly views), one row in ten without an order id (its id is derived from the row), and one row in
10,000 bad (no time, an unknown behaviour, no customer), which must land in the rejects file. The peer gets the
good rows as event mappings built batch by batch from memory, as a loader builds them from its files; the import
reads, maps and validates the Parquet file in record batches. Both start from an empty graph after the warm-up.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import neo4j
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from graphdb.columns import EventColumns
from graphdb.importer import ImportReport, import_events
from graphdb.ingest import ingest_batches
from graphdb.schema import wipe
from graphdb.settings import GraphSettings

ACTIONS = ["pv"] * 6 + ["click"] * 2 + ["cart", "buy"]
OURS = {"pv": "view", "click": "click", "cart": "add_to_cart", "buy": "purchase"}
MAPPING = EventColumns(
    columns={"order_id": "event_id", "customer": "user_id", "action": "type", "sku": "item_id", "time": "ts"},
    behaviours={"pv": "view", "cart": "add_to_cart", "buy": "purchase"},
)
BAD_EVERY = 10_000


def generate(path: Path, rows: int, seed: int = 11) -> dict[str, list[Any]]:
    """Write the shop's file; returns its columns (the peer reads its events from them)."""
    rng = random.Random(seed)
    start_ms = int((time.time() - 30 * 86400) * 1000)
    cols: dict[str, list[Any]] = {"order_id": [], "customer": [], "action": [], "sku": [], "time": []}
    for k in range(rows):
        item = min(int(rng.paretovariate(1.1)) - 1, 99_999) if rng.random() < 0.5 else rng.randrange(100_000)
        cols["order_id"].append(f"o{k}" if k % 10 else None)
        cols["customer"].append(f"c{rng.randrange(50_000)}")
        cols["action"].append(rng.choice(ACTIONS))
        cols["sku"].append(f"sku{item}")
        cols["time"].append(start_ms + k)
        if k % BAD_EVERY == BAD_EVERY // 2:  # a bad row: no time, an unknown behaviour or no customer, in turn
            which = (k // BAD_EVERY) % 3
            column, value = [("time", None), ("action", "wishlist"), ("customer", None)][which]
            cols[column][-1] = value
    table = pa.table(
        {
            "order_id": pa.array(cols["order_id"], pa.string()),
            "customer": pa.array(cols["customer"], pa.string()),
            "action": pa.array(cols["action"], pa.string()),
            "sku": pa.array(cols["sku"], pa.string()),
            "time": pa.array(cols["time"], pa.timestamp("ms")),
        }
    )
    pq.write_table(table, path, row_group_size=100_000)
    return cols


def _peer_batches(cols: dict[str, list[Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    rows = enumerate(zip(*cols.values()))
    while chunk := list(itertools.islice(rows, size)):
        yield [
            {"event_id": order or f"d{k}", "user_id": customer, "type": OURS[action], "item_id": sku, "ts": ms / 1000.0}
            for k, (order, customer, action, sku, ms) in chunk
            if ms is not None and customer is not None and action in OURS
        ]


def compare_import(
    driver: neo4j.Driver, gs: GraphSettings, *, rows: int, warmup_events: int, import_first: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        path = Path(tmp) / "shop-events.parquet"
        started = time.perf_counter()
        cols = generate(path, rows)
        bad = sum(1 for k in range(rows) if k % BAD_EVERY == BAD_EVERY // 2)
        out: dict[str, Any] = {
            "generate_s": round(time.perf_counter() - started, 1),
            "bad_rows": bad,
            "file_mb": round(path.stat().st_size / 1e6, 1),
        }
        if warmup_events:  # the JIT compiles Neo4j's hot paths first (see bench.ingest); wiped after
            warm = (
                cols["order_id"][:warmup_events],
                cols["customer"][:warmup_events],
                cols["action"][:warmup_events],
                cols["sku"][:warmup_events],
                cols["time"][:warmup_events],
            )
            warm_cols = dict(zip(cols, warm))
            warm_cols["order_id"] = [f"w{k}" for k in range(len(warm_cols["order_id"]))]
            for _ in tqdm(ingest_batches(driver, gs, _peer_batches(warm_cols, gs.batch_size)), desc="warm-up", unit="batch"):
                pass
            wipe(driver)

        out["load_before"] = round(os.getloadavg()[0], 2)

        def run_peer() -> tuple[int, float]:
            started = time.perf_counter()
            peer = 0
            with tqdm(total=rows, desc="ingest_batches (peer)", unit="ev") as bar:
                for r in ingest_batches(driver, gs, _peer_batches(cols, gs.batch_size)):
                    peer += r.accepted
                    bar.update(r.accepted + r.duplicates + len(r.rejected))
            return peer, time.perf_counter() - started

        def run_import() -> tuple[ImportReport, float]:
            started = time.perf_counter()
            with tqdm(total=rows, desc="graph import (parquet)", unit="row") as bar:
                report = import_events(
                    driver, gs, path, MAPPING, rejects=Path(tmp) / "rejects.jsonl", progress=lambda n, _stored: bar.update(n)
                )
            return report, time.perf_counter() - started

        # Both from an empty graph; the order is an option because the second run meets a store that has grown.
        if import_first:
            report, import_s = run_import()
            wipe(driver)
            peer, peer_s = run_peer()
        else:
            peer, peer_s = run_peer()
            wipe(driver)
            report, import_s = run_import()
        out["order"] = "import, peer" if import_first else "peer, import"
        out["load_after"] = round(os.getloadavg()[0], 2)
        rejected = sum(report.totals.rejected.values())
        assert report.totals.stored == peer == rows - bad, (report.totals, peer)
        assert rejected == bad and report.totals.read == rows, report.totals
        out.update(
            {
                "peer_events": peer,
                "peer_s": round(peer_s, 1),
                "peer_eps": round(peer / peer_s, 1),
                "import_stored": report.totals.stored,
                "import_rejected": rejected,
                "import_rejected_by": dict(report.totals.rejected),
                "import_s": round(import_s, 1),
                "import_eps": round(report.totals.stored / import_s, 1),
                "import_rows_per_s": round(rows / import_s, 1),
            }
        )
        out["ratio_import_to_peer"] = round(out["import_eps"] / out["peer_eps"], 3)
    return out
