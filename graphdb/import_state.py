"""The files an import keeps beside its input: the rejects (JSON Lines) and a checkpoint to resume from.

After each committed batch, its rejected rows are appended to the rejects file and flushed to disk, then the
checkpoint is replaced atomically: the position up to which rows are done, the rejects file's length and the
running totals. A killed import resumes from the checkpoint: the rejects file is cut back to the length it
records (so no reason is written twice) and reading starts after the position. A batch committed after the
last checkpoint is sent again, which idempotent ingestion (event ids) makes harmless.

The checkpoint is keyed by the input's identity (path, size, modification time, a hash of its first 64 KiB)
and the mapping's fingerprint: for a changed file or mapping the import starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from graphdb.errors import InvalidInput

_HEAD_BYTES = 64 << 10


def input_identity(path: Path, kind: str, mapping_fingerprint: str) -> dict[str, Any]:
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]
    return {
        "path": str(path.resolve()),
        "kind": kind,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head_sha256": head,
        "mapping": mapping_fingerprint,
    }


@dataclass
class Totals:
    read: int = 0  # rows read, good or bad
    stored: int = 0  # events (or items) written
    duplicates: int = 0  # already in the graph (or repeated within the file)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason kind


def reason_kind(reason: str) -> str:
    """The field a reason names ("ts", "rating", "row", ...), for the summary's rejected-by-reason counts."""
    head = reason.split(" ", 1)[0].split(":", 1)[0].split(".", 1)[0]
    return head or "other"


class ImportState:
    """The rejects file and checkpoint of one input; ``resume`` decides where reading starts."""

    def __init__(self, rejects: Path, identity: dict[str, Any], position_name: str) -> None:
        self.rejects_path = rejects
        self.checkpoint_path = rejects.with_name(rejects.name + ".progress.json")
        self.identity = identity
        self.position_name = position_name
        self.position = 0
        self.done = False
        self.totals = Totals()
        self.resumed_from = 0
        self._rejects: IO[str] | None = None

    def resume(self, *, restart: bool) -> None:
        """Load a checkpoint of the same input and mapping (unless ``restart``) and open the rejects file."""
        try:
            self._resume(restart)
        except OSError as exc:
            raise InvalidInput(
                f"cannot write {self.rejects_path} or its checkpoint ({exc.strerror}); choose another place with --rejects-dir"
            ) from exc

    def _resume(self, restart: bool) -> None:
        saved = None if restart else self._load()
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        if saved is None:
            self._rejects = open(self.rejects_path, "w", encoding="utf-8")
            self._save()  # the identity first, so a kill before the first batch resumes cleanly
            return
        self.position = self.resumed_from = int(saved["position"])
        self.done = bool(saved["done"])
        t = saved["totals"]
        self.totals = Totals(t["read"], t["stored"], t["duplicates"], Counter(t["rejected"]))
        self._rejects = open(self.rejects_path, "a", encoding="utf-8")
        self._rejects.truncate(int(saved["rejects_bytes"]))  # reasons of batches after the checkpoint go again
        self._rejects.seek(0, os.SEEK_END)

    def _load(self) -> dict[str, Any] | None:
        try:
            saved = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"checkpoint {self.checkpoint_path} is unreadable ({exc}); remove it or pass --restart") from exc
        if not isinstance(saved, dict) or saved.get("input") != self.identity or not self.rejects_path.is_file():
            return None  # another file, a changed file or another mapping: start over
        if self.rejects_path.stat().st_size < int(saved.get("rejects_bytes", 0)):
            return None
        return saved

    def commit(self, end: int, rejected: list[tuple[int, str]], *, read: int, stored: int, duplicates: int) -> None:
        """Record one committed batch: its rejects (position order) on disk, then the checkpoint."""
        assert self._rejects is not None, "resume() first"
        for position, reason in sorted(rejected):
            self._rejects.write(json.dumps({self.position_name: position, "reason": reason}) + "\n")
            self.totals.rejected[reason_kind(reason)] += 1
        self._rejects.flush()
        os.fsync(self._rejects.fileno())
        self.totals.read += read
        self.totals.stored += stored
        self.totals.duplicates += duplicates
        self.position = max(self.position, end)
        self._save()

    def finish(self) -> None:
        self.done = True
        self._save()
        self.close()

    def close(self) -> None:
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None

    def _save(self) -> None:
        t = self.totals
        data = {
            "input": self.identity,
            "position": self.position,
            "done": self.done,
            "rejects_bytes": self._rejects.tell() if self._rejects is not None else 0,
            "totals": {"read": t.read, "stored": t.stored, "duplicates": t.duplicates, "rejected": dict(t.rejected)},
        }
        tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)
