"""Index snapshots on disk, so a restart loads in seconds and only catches up from the delta stream.

Layout: ``<dir>/<name>/`` holds ``meta.json``, ``base.faiss``, ``vec.npy`` (the item vectors, memory-mapped on load
so a process holds one copy of them, not three), ``state.npz`` and ``users.npz``; ``<dir>/CURRENT``
names the complete snapshot. A snapshot is written in full under a new name and then published by replacing
``CURRENT`` atomically, so a crash mid-write leaves the previous snapshot in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from server.index import Base, IndexParams, ItemIndex, LabelMap, headroom

FORMAT = 3  # 2: the item vectors in their own vec.npy; 3: with each item's in_scale (sessions)


@dataclass
class Snapshot:
    index: ItemIndex
    users: dict[str, tuple[np.ndarray, float]]
    stream_id: str
    created_at: float


def save_snapshot(
    directory: Path, index: ItemIndex, users: dict[str, tuple[np.ndarray, float]], stream_id: str, base: Base | None = None
) -> Path:
    """Writes a snapshot; may run in a thread. ``base`` and ``stream_id`` must be taken on the event loop
    together (a compaction may install a new base meanwhile; the index state is copied here)."""
    base = base or index.base
    state = index.state(base)
    ids = np.array(index.labels.ids()[: len(state["where"])], dtype=object)
    user_ids = list(users)
    user_vecs = np.stack([users[u][0] for u in user_ids]) if user_ids else np.zeros((0, index.dim), np.float32)
    user_ts = np.array([users[u][1] for u in user_ids], np.float64)
    meta = {
        "format": FORMAT,
        "model_version": index.model_version,
        "dim": index.dim,
        "stream_id": stream_id,
        "created_at": time.time(),
        "items": len(index),
    }
    return _write(Path(directory), base.index, state, ids, user_ids, user_vecs, user_ts, meta)


def _write(
    directory: Path,
    base: faiss.Index,
    state: dict[str, Any],
    ids: np.ndarray,
    user_ids: list[str],
    user_vecs: np.ndarray,
    user_ts: np.ndarray,
    meta: dict[str, Any],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"snap-{time.time_ns()}"
    target = directory / name
    target.mkdir()
    faiss.write_index(base, str(target / "base.faiss"))
    state = dict(state)
    np.save(target / "vec.npy", state.pop("vec"))
    np.savez(target / "state.npz", ids=ids.astype(str), **state)
    np.savez(target / "users.npz", ids=np.array(user_ids, dtype=str), vecs=user_vecs, ts=user_ts)
    (target / "meta.json").write_text(json.dumps(meta))
    tmp = directory / f"CURRENT.{os.getpid()}"
    tmp.write_text(name)
    os.replace(tmp, directory / "CURRENT")
    for old in directory.glob("snap-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_snapshot(directory: Path, params: IndexParams, labels: LabelMap | None = None) -> Snapshot | None:
    """The published snapshot, or None when there is none (or it is unreadable: then rebuild from Neo4j)."""
    current = Path(directory) / "CURRENT"
    if not current.exists():
        return None
    target = Path(directory) / current.read_text().strip()
    meta = json.loads((target / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        return None
    with np.load(target / "state.npz", allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    labels = LabelMap() if labels is None else labels  # an empty LabelMap is falsy
    ids = state.pop("ids")
    # Labels in this process may differ from the snapshot's: re-map arrays indexed by the snapshot's labels.
    remap = np.fromiter((labels.assign(str(i)) for i in ids), np.int64, len(ids))
    state["vec"] = np.load(target / "vec.npy", mmap_mode="r")  # read once, into the index's own array
    rows = headroom(len(labels))  # the arrays the index keeps, so it adopts them rather than copy them
    mapped = {}
    for key in ("vec", "where", "ts", "in_scale"):
        arr = state.pop(key)
        out = np.zeros((rows,) + arr.shape[1:], arr.dtype)
        out[remap] = arr
        mapped[key] = out
        del arr
    mapped["base_labels"] = remap[state["base_labels"]]
    mapped["centroids"] = state["centroids"]
    base = faiss.read_index(str(target / "base.faiss"))
    index = ItemIndex.from_state(int(meta["dim"]), meta["model_version"], labels, params, mapped, base)
    with np.load(target / "users.npz", allow_pickle=False) as z:
        users = {str(u): (v.astype(np.float32), float(t)) for u, v, t in zip(z["ids"], z["vecs"], z["ts"])}
    return Snapshot(index, users, str(meta["stream_id"]), float(meta["created_at"]))
