"""User vectors for RecommendForUser: an LRU cache over Neo4j, kept fresh by the delta stream.

Only vectors of the serving model version are kept (user and item vectors served together must come from
the same model). Forgotten users are remembered for a while so a delta already in flight cannot bring them
back.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
from numpy.typing import ArrayLike

from server.index import normalise

_FORGOTTEN_TTL_S = 24 * 3600.0


class UserVectors:
    def __init__(self, model_version: str, max_size: int) -> None:
        self.model_version = model_version
        self.max_size = max_size
        self._cache: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        self._forgotten: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, pseudonym: str) -> tuple[np.ndarray, float] | None:
        hit = self._cache.get(pseudonym)
        if hit is not None:
            self._cache.move_to_end(pseudonym)
        return hit

    def put(self, pseudonym: str, vector: ArrayLike, updated_at: float) -> bool:
        """Caches a vector (normalised); refused for a user forgotten after ``updated_at``."""
        forgotten_at = self._forgotten.get(pseudonym)
        if forgotten_at is not None and updated_at <= forgotten_at:
            return False
        if self.max_size == 0:
            return False
        vec = normalise(np.asarray(vector, np.float32).reshape(1, -1))[0]
        self._cache[pseudonym] = (vec, float(updated_at))
        self._cache.move_to_end(pseudonym)
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)
        return True

    def delete(self, pseudonym: str) -> bool:
        return self._cache.pop(pseudonym, None) is not None

    def forget(self, pseudonym: str, at: float | None = None) -> bool:
        now = time.time() if at is None else at
        self._forgotten[pseudonym] = now
        for p, t in list(self._forgotten.items()):
            if t < now - _FORGOTTEN_TTL_S:
                del self._forgotten[p]
        return self.delete(pseudonym)

    def is_forgotten(self, pseudonym: str, updated_at: float) -> bool:
        t = self._forgotten.get(pseudonym)
        return t is not None and updated_at <= t

    def items(self) -> dict[str, tuple[np.ndarray, float]]:
        return dict(self._cache)

    def carry_forgotten(self, other: "UserVectors") -> None:
        self._forgotten.update(other._forgotten)
