"""Per-step wall-clock timers of a recompute round: what a round's time goes to (issue 16's step tables).

One mechanism for every round kind: ``with timed(steps, "user_edges"):`` adds the block's seconds to
``steps["user_edges"]``, and to each further name given (a step and the phase it belongs to), also when the block
raises. Nested blocks count in both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager


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
