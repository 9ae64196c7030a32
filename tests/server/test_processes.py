"""``python -m server`` with IG_SERVER_PROCESSES=2: two replicas on one port (SO_REUSEPORT), both serving the
delta stream's updates, a killed one started again, one snapshot writer, a clean SIGTERM stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb import localstack
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.delta import FIELD, encode_upsert

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
STREAM = "ig:test-processes"
CONNECTIONS = 32  # P(all on one process) = 2 * 2**-32


def two_free_ports() -> int:
    """A port p with p + 1 free too (process i serves metrics on base + i)."""
    for _ in range(100):
        p = localstack.free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def handled(metrics_port: int, method: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{") and f'grpc_method="{method}"' in line
    )


def children(pid: int) -> list[int]:
    """The serving processes (not multiprocessing's helper processes) under the supervisor."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmd:
            out.append(int(child))
    return out


def wait_for(condition, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except (grpc.RpcError, OSError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_two_processes_share_the_port_and_the_stream(stack, graph, tmp_path) -> None:
    port, metrics = localstack.free_port(), two_free_ports()
    snap, log = tmp_path / "snap", tmp_path / "server.log"
    env = dict(
        os.environ,
        NEO4J_URI=stack.neo4j_uri,
        IG_EMBEDDING_DIM=str(DIM),
        IG_SERVER_PORT=str(port),
        IG_SERVER_PROCESSES="2",
        IG_SERVER_METRICS_PORT=str(metrics),
        IG_SERVER_SNAPSHOT_DIR=str(snap),
        IG_SERVER_REDIS_URL=stack.redis_url,
        IG_SERVER_DELTA_STREAM=STREAM,
        IG_SERVER_DELTA_BLOCK_MS="50",
    )
    r = redis.Redis.from_url(stack.redis_url)
    r.delete(STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    # Separate connections, as separate clients would have (a local subchannel pool per channel).
    def connect() -> list[grpc.Channel]:
        return [
            grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CONNECTIONS)
        ]

    channels = connect()
    try:

        def all_serving() -> bool:
            return all(
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.SERVING
                for ch in channels
            )

        wait_for(all_serving, "every connection SERVING")
        pids = children(proc.pid)
        assert len(pids) == 2

        def publish(item: str, axis: int) -> np.ndarray:
            vec = np.zeros(DIM, np.float32)
            vec[axis] = 1.0
            r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, item, vec, "m1")})
            return vec

        def everyone_sees(item: str, vec: np.ndarray):
            def check() -> bool:
                answers = [
                    pb_grpc.InterestServiceStub(ch).NearestItems(pb.NearestItemsRequest(vector=vec.tolist(), k=1), timeout=5)
                    for ch in channels
                ]
                return all([i.item_id for i in a.items] == [item] and a.model_version == "m1" for a in answers)

            return check

        wait_for(everyone_sees("fresh", publish("fresh", 3)), "the upsert on every connection", timeout=30)
        # Both processes answered some of those calls: the kernel spread the connections over them.
        assert handled(metrics, "NearestItems") > 0 and handled(metrics + 1, "NearestItems") > 0

        # A serving process that dies is started again and follows the stream like the others.
        os.kill(pids[1], signal.SIGKILL)
        wait_for(lambda: len(children(proc.pid)) == 2 and pids[1] not in children(proc.pid), "a restarted process")
        wait_for(lambda: handled(metrics + 1, "NearestItems") is not None, "the new process's metrics endpoint")
        channels += connect()  # new clients: the old connections all went to process 0 meanwhile
        wait_for(all_serving, "every connection SERVING again")
        wait_for(everyone_sees("later", publish("later", 5)), "an upsert after the restart on every connection", timeout=30)
        assert handled(metrics + 1, "NearestItems") > 0  # the new process answered some of them
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        out = log.read_text()
        assert proc.returncode == 0, out
        assert out.count(" stopped") == 2 and "Traceback" not in out, out
        assert "exited with -9; starting it again" in out
        assert (snap / "CURRENT").exists()  # written by process 0 on the way out
        assert all(not Path(f"/proc/{p}").exists() for p in pids)
    finally:
        for ch in channels:
            ch.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
