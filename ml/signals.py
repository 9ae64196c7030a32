"""Signals beside the interactions themselves that can shape the served model: behaviour strength and time decay
on the user side, item metadata blended into warm and new items' bases.

User side (one hop, item -> user; applied after the recency weights of `ml.recency`):

* **behaviour strength**: a pair's edge weights summed over its behaviour types, each times its type's weight
  (``behaviour_weights``: relationship type -> weight, e.g. view 1 < click 2 < cart 4 < purchase 8; a type not
  named weighs 1; `typed_weight`), raised to ``behaviour_power`` (0 = every pair weighs 1, as before). On the live
  graph an edge's weight is its decayed count of events of that type;
* **time decay**: ``2^-((t_u - t)/h)`` with ``t`` the pair's latest time and ``t_u`` the user's latest. A decay to
  "now" would be ``2^-((now - t)/h)``, the same up to the factor ``2^-((now - t_u)/h)`` per user, which the
  inner-product ranking ignores: deciding at query time or at the user's last event gives the same top-k, and
  this one depends on the user's edges only, so the incremental path equals the full one.

Item side (fit time, baked into the checkpoint so every path serves the same vectors):

* **warm metadata blend** ``beta``: a trained item's base ``x = id + meta`` becomes ``(1 - beta) id + meta``,
  i.e. ``(1 - beta) x + beta meta`` (``meta`` is the ridge fit of ``x`` from text, category and brand);
* **cold metadata blend** ``gamma``: a new item's base from its text neighbours (`ml.cold.cold_bases`) is
  mixed with its own metadata vector, ``(1 - gamma) x_nb + gamma meta``, so its category and brand count too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # the server imports the user side without torch
    from torch import Tensor

__all__ = ["blend_cold", "signal_weights", "typed_weight", "weigh_by_signals"]


def signal_weights(strength: np.ndarray, times: np.ndarray, behaviour_power: float, half_life_s: float) -> np.ndarray:
    """Weights [n] of one user's items from their summed behaviour strength [n] and latest times [n] (seconds)."""
    w = np.ones(len(strength), np.float64)
    if behaviour_power and len(w):
        w *= np.maximum(np.asarray(strength, np.float64), 1e-12) ** behaviour_power
    if half_life_s > 0 and len(w):
        t = np.asarray(times, np.float64)
        w *= np.exp2(-(t.max() - t) / half_life_s)
    return w.astype(np.float32)


def weigh_by_signals(
    r: sp.csr_matrix, strength: sp.csr_matrix | None, times: sp.csr_matrix | None, behaviour_power: float, half_life_s: float
) -> sp.csr_matrix:
    """``r`` with each entry multiplied by `signal_weights` of its row (``strength`` and ``times`` on the pattern of
    ``r``; either may be None when its signal is off)."""
    r = sp.csr_matrix(r, dtype=np.float32, copy=True)
    if r.nnz == 0:
        return r
    if behaviour_power and strength is not None:
        s = _same_pattern(r, strength, "strength")
        r.data *= (np.maximum(s.data.astype(np.float64), 1e-12) ** behaviour_power).astype(np.float32)
    if half_life_s > 0 and times is not None:
        t = _same_pattern(r, times, "times").data.astype(np.float64)
        n = np.diff(r.indptr)
        starts = r.indptr[:-1][n > 0]
        latest = np.repeat(np.maximum.reduceat(t, starts), n[n > 0])
        r.data *= np.exp2(-(latest - t) / half_life_s).astype(np.float32)
    return r


def _same_pattern(r: sp.csr_matrix, m: sp.csr_matrix, what: str) -> sp.csr_matrix:
    m = sp.csr_matrix(m)
    if not (np.array_equal(m.indptr, r.indptr) and np.array_equal(m.indices, r.indices)):
        raise ValueError(f"weigh_by_signals: {what} must have the interactions' sparsity pattern")
    return m


def typed_weight(kind: str | None, weights: Mapping[str, float] | None) -> float:
    """An edge's behaviour-type weight (``kind``: its relationship type, e.g. PURCHASED); 1 where the type is not
    named or not known (the datasets' edges carry no type)."""
    if not weights or kind is None:
        return 1.0
    return float(weights.get(kind, 1.0))


def half_life_seconds(days: float) -> float:
    return days * 86400.0


def blend_cold(x_neighbours: Tensor, meta: Tensor | None, gamma: float) -> Tensor:
    """New items' bases [n, dim]: their text neighbours' mean mixed with their own metadata vector."""
    if meta is None or gamma == 0:
        return x_neighbours
    return (1.0 - gamma) * x_neighbours + gamma * meta
