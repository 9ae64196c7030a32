"""The internet-scale model (issue 18 item 5): machines for a shop of 10^8 shoppers, 10^7 items, 10^5 events/s
at peak and 10^5 queries/s, from the CPU seconds per event and per query that ``bench.freshness --workers``
measured on real processes (``docs/results/freshness-load-threads1-default-2core.json``), and the index memory that
``bench.serving`` measured at the served width (4.34 GB per million 1024-d items).

    python -m bench.scale_model [--costs docs/results/freshness-load-threads1-default-2core.json] [--events-per-s 1e5] ...

It is arithmetic, not a measurement: each line says which measured figure it scales. ``docs/scaling.md``
explains the model and where the design breaks first.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from bench._common import emit_result
from graphdb.marks import SLOTS
from server.settings import ServerSettings

REFINE = ServerSettings.model_fields["ivf_refine"].default  # the served re-rank's rows (defaults, not this shell's env)

# the latest full run's costs (the ego rounds apart, one ego round at a time per partition); until one is committed
# the bench's smoke run (docs/scaling.md says what that means)
FULL_COSTS = Path("docs/results/freshness-load-threads1-default-2core.json")
DEFAULT_COSTS = FULL_COSTS if FULL_COSTS.exists() else Path("docs/results/freshness-load-smoke-amazon-office-2core.json")


@dataclass(frozen=True)
class Costs:
    """Measured CPU seconds (bench.freshness --workers: one worker's row)."""

    ingest: float  # server process, IngestEvents, per event
    neo4j_ingest: float  # Neo4j, the ingest transaction, per event
    neo4j_recompute: float  # Neo4j, the recompute's reads and writes, per event
    recompute: float  # worker, per event (without publishing)
    publish: float  # worker, publishing the deltas, per event
    delta: float  # one server replica applying the deltas of one event ("server")
    query_server: float  # server process, RecommendForUser, per query (at the measured catalogue's size)
    query_neo4j: float  # Neo4j, the reads of a RecommendForUser (exclusions, recent items), per query
    ego: float = 0.0  # worker, the ego rounds (SimilarUsers' vectors), per event (inside "recompute" before they were apart)

    @classmethod
    def from_result(cls, result: dict) -> "Costs":
        row = result["rows"][0] if "rows" in result else result
        per, detail, q = row["cpu_s_per_event"], row["cpu_s_per_event_detail"], row["cpu_s_per_query"]
        return cls(
            ingest=per["ingest"],
            neo4j_ingest=detail["neo4j_ingest"],
            neo4j_recompute=detail["neo4j_recompute"],
            recompute=per["recompute"],
            publish=per["publish"],
            delta=per["server"],
            query_server=q["server"],
            query_neo4j=q["neo4j"],
            ego=per.get("ego", 0.0),
        )


@dataclass(frozen=True)
class Load:
    shoppers: float = 1e8
    items: float = 1e7
    events_per_s: float = 1e5
    queries_per_s: float = 1e5
    dim: int = 1024


@dataclass(frozen=True)
class Machines:
    """What one machine of each role offers, and the share of it the model plans to use (headroom for peaks)."""

    server_cores: int = 32
    worker_cores: int = 32
    neo4j_cores: int = 64
    utilisation: float = 0.6
    gb_per_million_items: float = 4.34  # bench.serving, 1M x 1024 served format (IVF-PQ4 + exact re-rank rows)
    nic_gbit: float = 25.0
    # the served index's search at 1M x 1024, one thread (docs/benchmarks.md "Serving at the served width"): the
    # coarse quantizer (a scan of the 4,000 centroids' PQ codes + an exact refine of 2 x nprobe), the PQ scan of
    # nprobe 112 lists (164 us the two), the exact re-rank of 300 rows (117-131 us), of the served
    # IG_SERVER_IVF_REFINE rows now (200: a re-rank's cost is per row read)
    coarse_s: float = 33e-6
    scan_1m_s: float = 131e-6
    rerank_s: float = 124e-6 * REFINE / 300


def _up(x: float) -> int:
    """Whole machines for ``x`` machines' worth of load (float noise such as 12.000000000000002 is 12)."""
    return math.ceil(x - 1e-9)


def search_extra_s(items: float, m: Machines) -> float:
    """CPU a query spends searching ``items`` beyond the measured catalogue's search: nlist = 4 sqrt(n) and
    nprobe grown as sqrt(n / 1M) keep the probed fraction of the lists (and so recall) as at 1M, so the scan
    and the coarse quantizer's scan of the centroids' codes grow as sqrt(n); the re-rank stays."""
    return (m.coarse_s + m.scan_1m_s) * math.sqrt(max(items, 1e6) / 1e6) + m.rerank_s


def plan(c: Costs, load: Load, m: Machines) -> dict:
    eps, qps, u = load.events_per_s, load.queries_per_s, m.utilisation
    # Neo4j: every event's writes (ingest, then the recompute's vector writes and mark clears) land on a primary
    neo4j_event = c.neo4j_ingest + c.neo4j_recompute
    primary_capacity = m.neo4j_cores * u / neo4j_event  # events/s one primary takes
    primaries = _up(eps / primary_capacity)
    secondaries_per_shard = max(1, _up(qps * c.query_neo4j / (m.neo4j_cores * u) / primaries))
    # workers: one solo-pool process per core, one partition each (at most SLOTS partitions)
    worker = c.recompute + c.publish + c.ego
    worker_cores = eps * worker / u
    worker_procs = _up(worker_cores)
    worker_machines = _up(worker_procs / m.worker_cores)
    # servers: every replica applies every delta (the broadcast stream), so a replica's cores left for queries
    # and ingest are what the deltas leave; none left = the broadcast design cannot be scaled by replicas
    query_s = c.query_server + search_extra_s(load.items, m)
    per_replica_free = m.server_cores * u - eps * c.delta
    replicas = _up((qps * query_s + eps * c.ingest) / per_replica_free) if per_replica_free > 0 else None
    delta_bytes = 4 * load.dim + 64  # a 1024-d float32 vector and the delta's envelope
    delta_gbit = eps * delta_bytes * 8 / 1e9
    index_gb = load.items / 1e6 * m.gb_per_million_items
    user_vectors_gb = load.shoppers * 4 * load.dim / 1e9
    # the rate at which each single thing saturates: where the design breaks first, in order
    breaks = {
        "one Neo4j primary (all writes)": primary_capacity,
        "server replica: applying every delta": m.server_cores * u / c.delta if c.delta else math.inf,
        "delta stream: one replica's NIC": m.nic_gbit * 1e9 * u / (delta_bytes * 8),
        "workers: one per slot (SLOTS partitions)": SLOTS * u / worker,
    }
    return {
        "inputs": asdict(load),
        "costs": asdict(c),
        "neo4j": {
            "cpu_s_per_event": round(neo4j_event, 6),
            "events_per_s_per_primary": round(primary_capacity),
            "primaries": primaries,
            "write_sharding": "by user (hash of the pseudonym), catalogue copied to every shard" if primaries > 1 else "none",
            "secondaries_per_shard": secondaries_per_shard,
            "user_vectors_gb_per_shard": round(user_vectors_gb / primaries, 1),
        },
        "workers": {
            "cores": round(worker_cores, 1),
            "processes": worker_procs,
            "machines": worker_machines,
            "partitions": min(SLOTS, worker_procs),
        },
        "servers": {
            "query_cpu_s": round(query_s, 6),
            "delta_cores_per_replica": round(eps * c.delta, 2),
            "replicas": replicas,
            "ram_gb_per_replica": round(index_gb + 2.0, 1),  # + the process, caches and the user LRU
            "index": f"IVF-PQ4 fast scan (nlist 4 sqrt(n), lists picked by the centroids' PQ codes) + exact re-rank of {REFINE}",
            "nlist": round(4 * math.sqrt(load.items)),
            "nprobe": round(112 * math.sqrt(load.items / 1e6)),
            "recall_at_10": "0.775 at 1M x 1024 (synthetic, nprobe 112, re-rank 200); at 10^7 with nprobe scaled: not measured",
        },
        "delta_stream_gbit_per_replica": round(delta_gbit, 2),
        "user_vectors_gb_total": round(user_vectors_gb, 1),
        "breaks_at_events_per_s": {k: round(v) for k, v in sorted(breaks.items(), key=lambda kv: kv[1])},
    }


def table(p: dict) -> str:
    n, w, s = p["neo4j"], p["workers"], p["servers"]
    rows = [
        ("Neo4j primaries", f"{n['primaries']} ({n['events_per_s_per_primary']:,} events/s each), sharding: {n['write_sharding']}"),
        ("Neo4j secondaries per shard", str(n["secondaries_per_shard"])),
        ("user vectors in Neo4j", f"{p['user_vectors_gb_total']:,} GB ({n['user_vectors_gb_per_shard']:,} GB per shard)"),
        ("worker processes / machines", f"{w['processes']} / {w['machines']} (partitions {w['partitions']})"),
        ("server replicas", str(s["replicas"]) if s["replicas"] else "none suffice: the deltas fill every replica"),
        ("delta cores per replica", str(s["delta_cores_per_replica"])),
        ("RAM per replica", f"{s['ram_gb_per_replica']} GB"),
        ("index", f"{s['index']}, nlist {s['nlist']:,}, nprobe {s['nprobe']}"),
        ("recall@10", s["recall_at_10"]),
        ("delta stream per replica", f"{p['delta_stream_gbit_per_replica']} Gbit/s"),
    ]
    rows += [(f"breaks at (events/s): {k}", f"{v:,}") for k, v in p["breaks_at_events_per_s"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(
    costs: Path = typer.Option(DEFAULT_COSTS, help="a bench.freshness --workers RESULT JSON"),
    shoppers: float = typer.Option(1e8),
    items: float = typer.Option(1e7),
    events_per_s: float = typer.Option(1e5),
    queries_per_s: float = typer.Option(1e5),
    utilisation: float = typer.Option(0.6, help="share of each machine's cores the plan uses"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
) -> None:
    if not 0 < utilisation <= 1:
        raise typer.BadParameter("utilisation must be in (0, 1]")
    c = Costs.from_result(json.loads(costs.read_text()))
    p = plan(c, Load(shoppers, items, events_per_s, queries_per_s), Machines(utilisation=utilisation))
    print(table(p))
    emit_result({"bench": "scale_model", "costs_from": str(costs), **p}, out)


if __name__ == "__main__":
    typer.run(main)
