"""The serving front ends in one run (issue 20): SimilarItems calls/s at c=16 (bench/loadgen, Go) on the native
front end on tonic and on grpc's Python server, each plaintext and TLS. Same servers as bench.serving
(bench._serving_server, one process per core, the index loaded from a snapshot), on a synthetic set small enough
that the transport's cost shows.

    python -m bench.fronts [--items 200000] [--dim 64] [--seconds 8] [--rounds 2]

Rounds alternate the peers so drift of the shared machine falls on all of them; each peer's figure is its best
round. Prints ``RESULT {json}`` last: calls/s, p50/p99, server CPU per call, and the ratios (tonic/grpc,
TLS/plaintext).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit_result
from bench.serving import (
    CONNECTIONS,
    STREAM,
    loadgen_binary,
    log,
    servers_cpu,
    start_servers,
    stop_servers,
    synthetic_snapshot,
    write_requests,
)
from graphdb import localstack
from graphdb.settings import LocalStackSettings
from server.front import available as front_built

# (name, IG_SERVER_FRONT, TLS)
PEERS = [
    ("tonic", "native", False),
    ("grpc", "grpc", False),
    ("tonic_tls", "native", True),
    ("grpc_tls", "grpc", True),
]


def load(binary: Path, requests: Path, port: int, concurrency: int, seconds: float, ca: Path | None) -> dict[str, Any]:
    """bench/loadgen's SimilarItems run (as bench.serving.loadgen_load), over TLS when ``ca`` is given."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [str(binary), "-addr", f"127.0.0.1:{port}", "-method", "/interest.v1.InterestService/SimilarItems"]
    command += ["-data", str(requests), "-c", str(concurrency), "-conns", str(CONNECTIONS), "-duration", f"{seconds}s"]
    command += ["-tls-ca", str(ca)] if ca else []
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, GOMAXPROCS="1"), timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"loadgen failed: {run.stderr.strip()[-500:]}")
    report = json.loads(run.stdout)
    calls = int(report["ok"])
    return {
        "qps": report["qps"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "calls": calls,
        "errors": int(sum(report["codes"].values()) - calls),
        "client_cpu_us_per_call": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / max(calls, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ivf-codes", default="pq4", choices=["pq4", "flat"])
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--redis-url", help="use a running Redis instead of starting one")
    parser.add_argument("--peers", default=",".join(name for name, _, _ in PEERS), help="which peers, comma-separated")
    args = parser.parse_args()
    peers = [peer for peer in PEERS if peer[0] in args.peers.split(",")]
    if not front_built():
        raise SystemExit("the native front end is not built: run `make setup`")
    import trustme  # dev dependency: the TLS runs' CA and certificate

    work = Path(tempfile.mkdtemp(prefix="ig-bench-fronts-"))
    started = None
    redis_url = args.redis_url
    if redis_url is None:
        stack = LocalStackSettings(var_dir=work / "var", redis_port=localstack.free_port())
        started = localstack.start_redis(stack)
        redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
    try:
        import redis

        redis.Redis.from_url(redis_url).delete(STREAM)  # the servers follow it from the start: nothing to replay
        binary = loadgen_binary(work)
        if binary is None:
            raise SystemExit("bench/loadgen could not be built (needs Go)")
        snap, names, dim = synthetic_snapshot(work, args)
        n = len(names)
        queries = [names[j] for j in np.random.default_rng(1).integers(0, n, 5000)]
        requests = write_requests(work / "queries.bin", queries)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_file, cert_file, key_file = work / "ca.pem", work / "server.pem", work / "server.key"
        ca.cert_pem.write_to_path(str(ca_file))
        cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_file))
        processes = max(1, os.cpu_count() or 1)

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in peers}
        for r in range(args.rounds):
            for name, front, tls in peers:
                saved = {k: os.environ.get(k) for k in ("IG_SERVER_TLS_CERT_FILE", "IG_SERVER_TLS_KEY_FILE")}
                if tls:
                    os.environ.update(IG_SERVER_TLS_CERT_FILE=str(cert_file), IG_SERVER_TLS_KEY_FILE=str(key_file))
                else:
                    os.environ.pop("IG_SERVER_TLS_CERT_FILE", None)
                    os.environ.pop("IG_SERVER_TLS_KEY_FILE", None)
                try:
                    procs, port = start_servers(snap, redis_url, args.categories, args.nprobe, processes, dim, False, front)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                try:
                    load(binary, requests, port, args.concurrency, 1.0, ca_file if tls else None)  # warm-up
                    s0 = servers_cpu(procs)
                    run = load(binary, requests, port, args.concurrency, args.seconds, ca_file if tls else None)
                    run["server_cpu_us_per_call"] = (servers_cpu(procs) - s0) / max(run["calls"], 1) * 1e6
                finally:
                    stop_servers(procs)
                runs[name].append(run)
                log(
                    f"round {r + 1}: {name}: {run['qps']:.0f} calls/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, "
                    f"{run['errors']} errors, server CPU {run['server_cpu_us_per_call']:.0f} us/call"
                )
        best = {name: max(rs, key=lambda x: x["qps"]) for name, rs in runs.items()}
        qps = {name: b["qps"] for name, b in best.items()}

        def ratio(a: str, b: str) -> float | None:
            return qps[a] / qps[b] if a in qps and b in qps else None

        emit_result(
            {
                "items": n,
                "dim": dim,
                "concurrency": args.concurrency,
                "server_processes": processes,
                "seconds": args.seconds,
                "rounds": runs,
                "best": best,
                "tonic_vs_grpc": ratio("tonic", "grpc"),
                "tonic_tls_vs_plaintext": ratio("tonic_tls", "tonic"),
                "grpc_tls_vs_plaintext": ratio("grpc_tls", "grpc"),
            }
        )
    finally:
        if started is not None:
            localstack.stop_service(started)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
