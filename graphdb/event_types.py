"""The behaviours an event can record and the relationship type each is stored as: plain constants, no driver,
so the model package (``ml/``) can weigh edges by their type without reaching for the database's code."""

from __future__ import annotations

# One relationship type per behaviour, aggregated per (user, target, type).
REL_FOR_EVENT = {
    "view": "VIEWED",
    "click": "CLICKED",
    "add_to_cart": "ADDED_TO_CART",
    "purchase": "PURCHASED",
    "rate": "RATED",
    "review": "RATED",
    "search": "SEARCHED",
    # Negative feedback (graphdb.feedback has the rules): stored for analysts and serving, never a sign of interest.
    "not_interested": "NOT_INTERESTED",
    "return": "RETURNED",
}
EVENT_TYPES = tuple(REL_FOR_EVENT)
INTERACTION_TYPES = tuple(dict.fromkeys(REL_FOR_EVENT.values()))
NEGATIVE_TYPES = (REL_FOR_EVENT["not_interested"], REL_FOR_EVENT["return"])
# Positive behaviour towards items: what models, popularity and "who touched this item" read. Search points at a
# Query node; hiding and returning are negative feedback.
ITEM_INTERACTIONS = tuple(t for t in INTERACTION_TYPES if t != "SEARCHED" and t not in NEGATIVE_TYPES)
