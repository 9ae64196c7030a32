"""Pseudonymisation of external user ids.

External ids never reach the graph: a User node's ``id`` is a keyed hash (HMAC-SHA256) of the external id.
Without the key, the pseudonym cannot be linked back to the person; with it, the same external id always maps
to the same node, so every reader (ingestion, serving, forgetting) calls this one function.
"""

from __future__ import annotations

import hashlib
import hmac

# 128 bits of the HMAC: collisions are out of reach for any realistic user count, ids stay short.
PSEUDONYM_HEX_CHARS = 32


def pseudonymise(key: str, external_id: str) -> str:
    if not key:
        raise ValueError("the pseudonymisation key must not be empty")
    digest = hmac.new(key.encode(), external_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return "u_" + digest[:PSEUDONYM_HEX_CHARS]
