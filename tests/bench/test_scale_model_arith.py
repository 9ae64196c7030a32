"""bench.scale_model's arithmetic on hand-picked costs: each count is the load over one machine's usable share,
rounded up, and the break-points order where the design saturates first."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale_model import Costs, Load, Machines, plan, search_extra_s

COSTS = Costs(
    ingest=1e-4,
    neo4j_ingest=1e-3,
    neo4j_recompute=1e-3,
    recompute=5e-4,
    publish=1e-4,
    delta=5e-5,
    query_server=5e-4,
    query_neo4j=2e-4,
)
M = Machines(server_cores=10, worker_cores=10, neo4j_cores=10, utilisation=0.5, scan_1m_s=1e-4, coarse_s=0.0, rerank_s=0.0)


def test_counts_are_the_load_over_a_machines_usable_share_rounded_up() -> None:
    p = plan(COSTS, Load(shoppers=1e6, items=4e6, events_per_s=1e4, queries_per_s=1e4, dim=4), M)
    # Neo4j: 2 ms per event, 5 usable cores a primary -> 2,500 events/s each -> 4 primaries for 10^4/s
    assert p["neo4j"]["events_per_s_per_primary"] == 2500
    assert p["neo4j"]["primaries"] == 4 and p["neo4j"]["write_sharding"].startswith("by user")
    # secondaries: 10^4 q/s x 0.2 ms = 2 cores -> 0.4 machine over 4 shards -> at least 1 each
    assert p["neo4j"]["secondaries_per_shard"] == 1
    # workers: 10^4 x 0.6 ms / 0.5 = 12 cores -> 12 processes on 2 machines
    assert p["workers"]["processes"] == 12 and p["workers"]["machines"] == 2 and p["workers"]["partitions"] == 12
    # search at 4M: the scan grows as sqrt(4) -> 0.2 ms more per query
    assert search_extra_s(4e6, M) == pytest.approx(2e-4)
    # servers: each replica spends 10^4 x 0.05 ms = 0.5 core on deltas, 4.5 left; queries 10^4 x 0.7 ms = 7 cores,
    # ingest 10^4 x 0.1 ms = 1 core -> 8 / 4.5 -> 2 replicas
    assert p["servers"]["delta_cores_per_replica"] == 0.5
    assert p["servers"]["replicas"] == math.ceil(8 / 4.5) == 2
    assert p["servers"]["ram_gb_per_replica"] == pytest.approx(4 * M.gb_per_million_items + 2.0, abs=0.1)
    assert p["user_vectors_gb_total"] == pytest.approx(1e6 * 16 / 1e9, abs=0.1)


def test_no_replica_count_suffices_when_the_deltas_fill_a_replica_and_breaks_are_ordered() -> None:
    # 10^5 events/s x 0.05 ms = 5 cores of deltas: all a replica's usable share
    p = plan(COSTS, Load(events_per_s=1e5), M)
    assert p["servers"]["replicas"] is None
    breaks = list(p["breaks_at_events_per_s"].values())
    assert breaks == sorted(breaks)
    assert next(iter(p["breaks_at_events_per_s"])) == "one Neo4j primary (all writes)"  # 2,500/s: first


def test_the_cli_prints_the_table_and_a_result_from_a_costs_file(tmp_path: Path) -> None:
    row = {
        "cpu_s_per_event": {"ingest": 1e-4, "neo4j": 2e-3, "recompute": 5e-4, "publish": 1e-4, "server": 5e-5},
        "cpu_s_per_event_detail": {"neo4j_ingest": 1e-3, "neo4j_recompute": 1e-3},
        "cpu_s_per_query": {"server": 5e-4, "neo4j": 2e-4},
    }
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"bench": "freshness", "rows": [row]}))
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale_model", "--costs", str(path)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["bench"] == "scale_model" and result["costs"]["delta"] == 5e-5
    assert "Neo4j primaries" in out
    bad = subprocess.run(
        [sys.executable, "-m", "bench.scale_model", "--costs", str(path), "--utilisation", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "utilisation" in bad.stderr
