"""The re-rank that pushes a hidden item's close neighbours down a shopper's answer (negative feedback).

The rule (docs/api.md, "Negative feedback"): the engine searches ``k + IG_SERVER_FEEDBACK_POOL`` candidates
(the hidden and bought items already excluded), then for each candidate ``c`` with score ``s`` (inner product
with the shopper's vector) takes ``m``, its largest cosine with the vectors of the shopper's
``IG_SERVER_FEEDBACK_MAX_HIDDEN`` most recently hidden items, and ranks by

    s' = s - strength * p * |s|,   p = clip((m - threshold) / (1 - threshold), 0, 1)

best first, ties by item id, keeping the top k with s' as their score. A candidate no closer to any hidden item
than ``threshold`` keeps its score; one pointing the same way as a hidden item (m = 1) loses ``strength`` of its
score's size. Relative to |s|, so the rule does not depend on the scale of the vectors. Pure and deterministic:
the same index, vectors and hidden items give the same answer on every replica.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.where(norms > 0, norms, 1.0), np.float32)


def penalties(candidates: np.ndarray, hidden: np.ndarray, threshold: float) -> np.ndarray:
    """p per candidate (n,) from candidate vectors (n, d) and hidden items' vectors (h, d), h >= 1."""
    closest = (_unit(candidates) @ _unit(hidden).T).max(axis=1)
    return np.asarray(np.clip((closest - threshold) / (1.0 - threshold), 0.0, 1.0), np.float32)


def push_down(
    ids: Sequence[str],
    scores: np.ndarray,
    candidates: np.ndarray,
    hidden: np.ndarray,
    k: int,
    *,
    strength: float,
    threshold: float,
) -> list[tuple[str, float]]:
    """The top ``k`` of ``ids`` (with their ``scores`` and vectors ``candidates``) re-ranked by the rule above."""
    if not len(ids):
        return []
    s = np.asarray(scores, np.float64)
    adjusted = s - strength * penalties(candidates, hidden, threshold).astype(np.float64) * np.abs(s)
    order = np.lexsort((np.asarray(ids), -adjusted))[:k]  # best first, ties by item id
    return [(ids[j], float(adjusted[j])) for j in order.tolist()]
