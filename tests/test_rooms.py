"""The rooms of DESIGN.md: the model package (ml/) talks to no database, queue or RPC, and the bench-only
baselines (bench/baselines/) are used by bench/ and tests/ only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# graphdb.errors is the project's one error hierarchy, graphdb.settings holds the one width setting (EMBEDDING_DIM)
# and graphdb.event_types the behaviours' relationship types (the typed weights); none loads a driver (the import
# probe below shows it), so the model package may name them.
ML_ALLOWED_GRAPHDB = {"graphdb.errors", "graphdb.settings", "graphdb.event_types"}
ML_FORBIDDEN = ("graphdb", "neo4j", "redis", "celery", "kombu", "grpc", "server", "workers", "bench", "proto")
SKIP = {".venv", ".git", "var", "node_modules", "target"}


def _modules(root: Path):
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py") and not name.endswith(("_pb2.py", "_pb2_grpc.py")):
                rel = (Path(top) / name).relative_to(ROOT)
                yield rel, ast.parse((ROOT / rel).read_text(), str(rel))


def _imported(tree: ast.AST, package: str) -> list[str]:
    """Every module an ``import``/``from`` names, absolute (relative imports resolved against ``package``)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def test_ml_imports_no_database_queue_or_rpc_code() -> None:
    found = []
    for rel, tree in _modules(ROOT / "ml"):
        package = ".".join(rel.with_suffix("").parts[:-1])
        for name in _imported(tree, package):
            if any(_under(name, allowed) for allowed in ML_ALLOWED_GRAPHDB):
                continue
            if any(_under(name, top) for top in ML_FORBIDDEN):
                found.append(f"{rel}: {name}")
    assert found == [], "the model package must receive tensors, not talk to storage or queues:\n" + "\n".join(found)


def test_importing_every_ml_module_loads_no_driver() -> None:
    modules = [".".join(rel.with_suffix("").parts).removesuffix(".__init__") for rel, _ in _modules(ROOT / "ml")]
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'neo4j', 'redis', 'celery', 'kombu', 'grpc', 'server', 'workers', 'bench'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_bench_baselines_are_imported_by_bench_and_tests_only() -> None:
    found = []
    for rel, tree in _modules(ROOT):
        if rel.parts[0] in {"bench", "tests"}:
            continue
        package = ".".join(rel.with_suffix("").parts[:-1])
        found += [f"{rel}: {n}" for n in _imported(tree, package) if _under(n, "bench.baselines")]
    assert found == [], "bench-only baselines imported outside bench/ and tests/:\n" + "\n".join(found)
