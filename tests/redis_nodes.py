"""Real redis-server processes on free loopback ports for the topology tests: cluster nodes, a primary with its
replica, a Sentinel. Each is stopped by the fixture that started it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import redis

from graphdb import localstack

T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Polls ``check`` (a Redis error counts as not yet) until it returns something true; fails after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except redis.exceptions.RedisError:
            pass
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.05)


def start(folder: Path, *args: str, config: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server (a Sentinel when ``config`` holds one: Sentinel rewrites its file, so it lives in ``folder``)
    answering PING on a free port, its log in ``folder``."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is installed by `make system`"
    folder.mkdir(parents=True, exist_ok=True)
    port = localstack.free_port()
    head = [exe]
    if config is not None:
        (folder / "sentinel.conf").write_text(config)
        head += [str(folder / "sentinel.conf"), "--sentinel"]
    proc = subprocess.Popen(
        head + ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "", *args],
        stdout=(folder / "redis.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port)
    until(client.ping, f"redis-server in {folder} answering")
    client.close()
    return proc, port


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)
