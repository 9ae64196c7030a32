"""Cypher fragments that mark changed nodes, shared by every write path (same transaction as the change).

A mark is the ``Dirty`` label plus ``chg``, a token unique to the writing transaction. Writes set the token
blindly (no read-modify-write), so concurrent writers can never leave a token a reader has already seen;
``graphdb.changes.clear_marks`` removes a mark only if its token is still the one the reader saw.
"""

from __future__ import annotations

import uuid

from graphdb.schema import DIRTY


def mark(var: str) -> str:
    """SET items that mark node variable ``var``; the query must bind ``$token`` and ``$now``."""
    return f"{var}:{DIRTY}, {var}.chg = $token, {var}.dirty_since = coalesce({var}.dirty_since, $now)"


def new_token() -> str:
    return uuid.uuid4().hex
