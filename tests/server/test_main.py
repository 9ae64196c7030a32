"""``python -m server`` as operators run it: settings from the environment, health, SIGTERM shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb import localstack
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_serves_then_shuts_down_gracefully_on_sigterm(stack, graph, tmp_path) -> None:
    port = localstack.free_port()
    env = dict(
        os.environ,
        NEO4J_URI=stack.neo4j_uri,
        IG_EMBEDDING_DIM="16",
        IG_SERVER_PORT=str(port),
        IG_SERVER_SNAPSHOT_DIR=str(tmp_path / "snap"),
        IG_SERVER_REDIS_URL=stack.redis_url,
        IG_SERVER_AUTH_TOKENS="secret",
        IG_SERVER_DELTA_STREAM="ig:test-main",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "server did not become ready"
                time.sleep(0.2)
            stub = pb_grpc.InterestServiceStub(ch)
            resp = stub.NearestItems(
                pb.NearestItemsRequest(vector=[1.0] * 16, k=3), timeout=5, metadata=[("authorization", "Bearer secret")]
            )
            assert list(resp.items) == []  # an empty graph serves an empty index
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped" in out and "Traceback" not in out
        assert (tmp_path / "snap" / "CURRENT").exists()  # the index was saved on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
