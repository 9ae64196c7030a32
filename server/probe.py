"""Waiting for a server started as a separate process to report SERVING (demo, benchmarks, operators' scripts)."""

from __future__ import annotations

import contextlib
import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb.errors import Unavailable


def wait_serving(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 300.0, host: str = "127.0.0.1") -> None:
    """Until the health service says SERVING; `Unavailable` if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise Unavailable(f"the gRPC server exited with {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.3)
    raise Unavailable(f"the gRPC server on port {port} did not report SERVING within {timeout_s:.0f}s")
