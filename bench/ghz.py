"""ghz (the common gRPC load tool, from the Go module proxy) across every unary method of the API on the native
front end, with gzip-compressed requests (``--enable-compression``) and without, in one run (issue 20).

    python -m bench.ghz [--items 20000] [--dim 64] [--seconds 3] [--concurrency 16]

The server is bench.serving's (bench._serving_server: the index from a snapshot of synthetic items, one process
per core, IG_SERVER_FRONT=native), which runs without Neo4j: the methods that read the graph (RecommendForUser
of a stored user, GetEmbedding, ForgetUser, SimilarUsers) answer UNAVAILABLE, fast, through the same front end
path; the table says which codes each method got. Per method: calls/s, p50/p99 and the status codes, plain and
gzip, and gzip's calls/s over plain's. Prints ``RESULT {json}`` last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench._common import emit_result
from bench.serving import GHZ_MODULE, ghz_binary, log, start_servers, stop_servers, synthetic_snapshot, write_protoset
from graphdb import localstack
from graphdb.settings import LocalStackSettings
from server.front import available as front_built


def requests(names: list[str], dim: int) -> dict[str, Any]:
    """One request per unary method (ghz's JSON form), on items of the snapshot."""
    vector = [0.1] * dim
    session = {"events": [{"item_id": names[3], "type": "EVENT_TYPE_VIEW", "ts": 1.7e9}], "k": 10}
    return {
        "SimilarItems": {"item_id": names[7], "k": 10},
        "NearestItems": {"vector": vector, "k": 10},
        "RecommendForUser": {"user_id": "ghz-user", "k": 10},
        "GetEmbedding": {"node_type": "NODE_TYPE_ITEM", "id": names[7]},
        "ForgetUser": {"user_id": "ghz-nobody"},
        "BatchRecommend": {"entries": [{"similar": {"item_id": names[7], "k": 5}}, {"nearest": {"vector": vector, "k": 5}}]},
        "RecommendForSession": session,
        "SimilarUsers": {"user_id": "ghz-user", "k": 5},
    }


def ghz_run(
    ghz: Path, protoset: Path, port: int, method: str, data: Any, concurrency: int, seconds: float, gzip: bool
) -> dict[str, Any]:
    command = [str(ghz), "--insecure", "--protoset", str(protoset), "--call", f"interest.v1.InterestService.{method}"]
    command += ["--data", json.dumps(data), "--concurrency", str(concurrency), "--connections", str(min(8, concurrency))]
    command += ["--duration", f"{seconds}s", "--duration-stop", "wait", "--cpus", "1", "--timeout", "5s", "--format", "json"]
    command += ["--enable-compression"] if gzip else []
    run = subprocess.run([*command, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0 and not run.stdout.strip():
        raise RuntimeError(f"ghz failed: {run.stderr.strip()[-500:]}")
    report = json.loads(run.stdout)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    codes = {code: int(n) for code, n in (report.get("statusCodeDistribution") or {}).items()}
    return {"qps": sum(codes.values()) / (report["total"] / 1e9), "p50_ms": lat.get(50), "p99_ms": lat.get(99), "codes": codes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ivf-codes", default="pq4", choices=["pq4", "flat"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not front_built():
        raise SystemExit("the native front end is not built: run `make setup`")
    ghz = ghz_binary()
    if ghz is None:
        raise SystemExit(f"ghz is not available: go install {GHZ_MODULE}")
    work = Path(tempfile.mkdtemp(prefix="ig-bench-ghz-"))
    stack = LocalStackSettings(var_dir=work / "var", redis_port=localstack.free_port())
    started = localstack.start_redis(stack)
    redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
    procs: list = []
    try:
        snap, names, dim = synthetic_snapshot(work, args)
        n = len(names)
        protoset = write_protoset(work / "interest.protoset")
        procs, port = start_servers(snap, redis_url, 50, args.nprobe, max(1, os.cpu_count() or 1), dim, False, "native")
        methods: dict[str, Any] = {}
        for method, data in requests(names, dim).items():
            plain = ghz_run(ghz, protoset, port, method, data, args.concurrency, args.seconds, gzip=False)
            gzip = ghz_run(ghz, protoset, port, method, data, args.concurrency, args.seconds, gzip=True)
            methods[method] = {"plain": plain, "gzip": gzip, "gzip_vs_plain": gzip["qps"] / plain["qps"] if plain["qps"] else None}
            log(f"{method}: plain {plain['qps']:.0f} calls/s {plain['codes']}; gzip {gzip['qps']:.0f} calls/s {gzip['codes']}")
        same_codes = all(set(m["plain"]["codes"]) == set(m["gzip"]["codes"]) for m in methods.values())
        result = {"bench": "ghz", "items": n, "dim": dim, "concurrency": args.concurrency, "seconds": args.seconds}
        emit_result({**result, "methods": methods, "same_codes_with_gzip": same_codes}, args.out)
    finally:
        if procs:
            stop_servers(procs)
        localstack.stop_service(started)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
