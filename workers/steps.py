"""Per-step wall-clock timers of a recompute round: what a round's time goes to (issue 16's step tables).

One mechanism for every round kind: ``with timed(steps, "user_edges"):`` adds the block's seconds to
``steps["user_edges"]``, and to each further name given (a step and the phase it belongs to), also when the block
raises. Nested blocks count in both. `Laps` splits a round into the consecutive phases of its ``Timings``
(pull, forward, write) where a phase spans several blocks of code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any


@contextmanager
def timed(into: MutableMapping[str, float], *names: str) -> Iterator[None]:
    """Adds the block's wall seconds to ``into[name]`` for every name of ``names``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t
        for name in names:
            into[name] = into.get(name, 0.0) + dt


class Laps:
    """``lap(name)`` adds the seconds since the previous lap (or the start) to the attribute ``name`` of ``timings``."""

    def __init__(self, timings: Any) -> None:
        self.t, self.timings = time.perf_counter(), timings

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        setattr(self.timings, name, getattr(self.timings, name) + now - self.t)
        self.t = now
