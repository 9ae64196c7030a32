"""Cypher fragments that mark changed nodes, shared by every write path (same transaction as the change).

A mark is the ``Dirty`` label plus ``chg``, a token unique to the writing transaction. Writes set the token
blindly (no read-modify-write), so concurrent writers can never leave a token a reader has already seen;
``graphdb.changes.clear_marks`` removes a mark only if its token is still the one the reader saw. A mark keeps
the time of its first change (``dirty_since``: how long it has waited) and of its last (``dirty_at``: a round
under a backlog takes the newest marks as well as the oldest, so a shopper active now need not wait behind it).

A marked node also carries ``slot``, a stable hash of its id into ``SLOTS`` buckets (set on its first mark and
never changed), so a partitioned recompute reads only the marks of its slots through an index
(``graphdb.slots``). Cypher has no hash function, so the hash is spelled in Cypher over the id's characters;
``slot_of`` is its twin in Python.
"""

from __future__ import annotations

import string
import uuid

from graphdb.schema import DIRTY

# Fixed for the life of a graph (stored on the nodes); partitions are unions of slots, so their number can change.
SLOTS = 4096
_ALPHABET = string.ascii_letters + string.digits + "_-:.|/ "  # ids' usual characters; any other counts as one more
_MOD = 1_000_000_007


def slot_expr(var: str) -> str:
    """Cypher: the slot of node ``var`` from its id (31-polynomial hash of the characters' alphabet positions)."""
    # split(alphabet, c)[0] is the part before c: its size is c's position (the whole alphabet when absent).
    return f"reduce(h = 0, c IN split({var}.id, '') | (h * 31 + size(split('{_ALPHABET}', c)[0])) % {_MOD}) % {SLOTS}"


def slot_of(node_id: str) -> int:
    """What ``slot_expr`` stores for ``node_id`` (for characters of the Basic Multilingual Plane)."""
    h = 0
    for c in node_id:
        pos = _ALPHABET.find(c)
        h = (h * 31 + (pos if pos >= 0 else len(_ALPHABET))) % _MOD
    return h % SLOTS


def mark(var: str, *, last_change: bool = True) -> str:
    """SET items that mark node variable ``var``; the query must bind ``$token`` and ``$now``.

    ``last_change=False`` (a hand-off: a recompute marks the nodes its results affect, `graphdb.slots.hand_off`)
    leaves ``dirty_at`` as it is: a hand-off is no shopper's change, and every round sets hundreds of them, so among
    the newest they would go ahead of the events waiting for as long as a backlog lasted (with rounds held at their
    target, the soak with Neo4j faults: probes p50 65.6 s). Without ``dirty_at`` a mark waits with the oldest, by its
    first change."""
    # CASE, not coalesce: the hash is computed once per node, on its first mark.
    last = f"{var}.dirty_at = $now, " if last_change else ""
    return (
        f"{var}:{DIRTY}, {var}.chg = $token, {var}.dirty_since = coalesce({var}.dirty_since, $now), {last}"
        f"{var}.slot = CASE WHEN {var}.slot IS NULL THEN {slot_expr(var)} ELSE {var}.slot END"
    )


def new_token() -> str:
    return uuid.uuid4().hex
