"""A clone with nothing next to it (no ../shared/datasets) runs the demo on the bundled data, and a dataset that is
nowhere fails in one line before anything starts.

The clone is made with git from this checkout into an empty temporary folder; edits not yet committed are copied
over it, so the test checks the working tree. It runs with this checkout's virtual environment (a fresh `make setup`
is the CI run itself), on its own stack and ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphdb import localstack

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("fresh") / "interest-graph"
    _git("clone", "--quiet", "--no-hardlinks", str(ROOT), str(target))
    for rel in _git("ls-files", "--modified", "--others", "--exclude-standard", "-z").split("\0"):
        if rel and (ROOT / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target / rel)
    for rel in _git("ls-files", "--deleted", "-z").split("\0"):
        if rel:
            (target / rel).unlink(missing_ok=True)
    assert not (target.parent / "shared").exists()
    # the one step of `make setup` that writes into the checkout: the generated gRPC stubs (ignored by git)
    subprocess.run(
        [sys.executable, "-m", "proto.generate"],
        cwd=target,
        env=dict(os.environ, PYTHONPATH=str(target)),
        check=True,
        capture_output=True,
    )
    return target


def _env(clone: Path, var: Path) -> dict[str, str]:
    neo4j_port, redis_port = localstack.free_port(), localstack.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IG_", "NEO4J_"))}
    env.update(
        {
            "PYTHONPATH": str(clone),  # the clone's code, not this checkout's (the venv's editable install)
            "IG_STACK_VAR_DIR": str(var),
            "IG_STACK_NEO4J_PORT": str(neo4j_port),
            "IG_STACK_REDIS_PORT": str(redis_port),
            "IG_STACK_NEO4J_HEAP_MB": "1536",
            "IG_STACK_NEO4J_PAGECACHE_MB": "512",
            "NEO4J_URI": f"bolt://127.0.0.1:{neo4j_port}",
            "IG_WORKER_MODEL_DIR": str(var / "models"),
            "IG_WORKER_TEXT_CACHE_DIR": str(var / "text-cache"),
            "IG_WORKER_METRICS_PORT": "0",
            "IG_SERVER_METRICS_PORT": str(localstack.free_port()),
            "IG_SERVER_SNAPSHOT_DIR": str(var / "index"),
            "IG_TRAIN_BUDGET_MIN": "1",
        }
    )
    return env


def _interest(clone: Path, env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_dataset_that_is_nowhere_fails_in_one_line_before_anything_starts(clone: Path, tmp_path: Path) -> None:
    env = _env(clone, tmp_path / "var")
    out = _interest(clone, env, "demo", "--dataset", "gowalla", timeout=120)
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "gowalla" in lines[0] and "IG_DATASETS_DIR" in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "var").exists()  # no stack was started: nothing wrote its state


def test_the_demo_runs_on_the_bundled_data(clone: Path, tmp_path: Path) -> None:
    env = _env(clone, tmp_path / "var")
    port = localstack.free_port()
    try:
        out = _interest(clone, env, "demo", "--port", str(port), timeout=900)
    finally:
        _interest(clone, env, "stack", "down", timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert f"data: amazon-office from {clone / 'data' / 'amazon-office'}" in text.replace("\n", "")
    assert "demo finished" in text and "freshness:" in text
    assert "Traceback" not in text and "Warning" not in text
