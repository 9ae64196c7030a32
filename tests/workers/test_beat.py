"""`interest worker beat` (Celery beat) queues the gated retrain on the gpu queue every IG_WORKER_RETRAIN_PERIOD_S,
against the test stack's real Redis (a broker db of its own, so no worker of another test takes the tasks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def test_beat_queues_the_retrain_every_period(stack, tmp_path: Path) -> None:
    broker = f"redis://127.0.0.1:{stack.settings.redis_port}/9"
    queue = redis.Redis.from_url(broker)
    queue.flushdb()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        IG_WORKER_RETRAIN_PERIOD_S="0.5",
        IG_WORKER_BROKER_URL=broker,
        IG_WORKER_RESULT_BACKEND=f"redis://127.0.0.1:{stack.settings.redis_port}/10",
    )
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "beat"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while queue.llen("gpu") < 3:  # beat's first tick sends at once, then one every period
            assert beat.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
    finally:
        beat.terminate()
        beat.wait(30)
    tasks = [json.loads(m)["headers"]["task"] for m in queue.lrange("gpu", 0, -1)]
    assert set(tasks) == {"interest.retrain"}
    assert (tmp_path / "var").is_dir() and not list(tmp_path.glob("celerybeat-schedule*"))  # under var/ only
    queue.flushdb()
    redis.Redis.from_url(env["IG_WORKER_RESULT_BACKEND"]).flushdb()
