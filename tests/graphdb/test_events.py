"""Per-event validation (pure: no services)."""

import math

import pytest

from graphdb.events import validate_events
from graphdb.settings import GraphSettings

NOW = 1_700_000_000.0
S = GraphSettings(max_text_chars=100, max_id_chars=32)


def ev(**kw):
    base = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "i1", "ts": NOW - 10}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    "event, reason",
    [
        (ev(type="teleport"), "unknown event type 'teleport'"),
        (ev(item_id=...), "a view event needs an item_id"),
        (ev(event_id=""), "event_id must be non-empty"),
        (ev(user_id=" u1"), "user_id must be non-empty without leading or trailing spaces"),
        (ev(item_id="x" * 33), "item_id is 33 characters; the limit is 32"),
        (ev(user_id="a\x00b"), "user_id contains control characters"),
        (ev(ts=NOW + 3600), "ts is 3600 s in the future"),
        (ev(ts=math.nan), "is not a valid unix time"),
        (ev(ts=-5), "is not a valid unix time"),
        (ev(ts="yesterday"), "ts: Input should be a valid number"),
        (ev(ts=True), "ts: Input should be a valid number"),
        (ev(type="rate", rating=7), "rating 7.0 is outside 1..5"),
        (ev(type="rate"), "a rate event needs a rating"),
        (ev(rating=4), "only rate and review events carry a rating"),
        (ev(type="review", review="x" * 101), "review is 101 characters; the limit is 100"),
        (ev(type="search", item_id=..., query="  "), "a search event needs a non-empty query"),
        (ev(user_id=42), "user_id: Input should be a valid string"),
        (ev(colour="red"), "colour: Extra inputs are not permitted"),
        (ev(item={"title": 5}), "item.title: Input should be a valid string"),
        (ev(item={"categories": [[]]}), "a category path has 1 to 8 names"),
        ("not an event", "an event is an object, got str"),
    ],
)
def test_invalid_event_is_rejected_with_its_reason(event, reason):
    valid, rejected = validate_events([ev(event_id="ok"), event], S, now=NOW)
    assert [i for i, _ in valid] == [0]
    assert len(rejected) == 1 and rejected[0].index == 1
    assert reason in rejected[0].reason


def test_valid_events_of_every_type_pass():
    events = [
        ev(event_id="a"),
        ev(event_id="b", type="click"),
        ev(event_id="c", type="add_to_cart"),
        ev(event_id="d", type="purchase", item={"title": "Pen", "brand": "Bic", "categories": [["Office", "Pens"]]}),
        ev(event_id="e", type="rate", rating=4),
        ev(event_id="f", type="review", review="good", rating=5),
        ev(event_id="g", type="search", item_id=..., query="blue pens"),
        ev(event_id="h", ts=int(NOW)),
    ]
    valid, rejected = validate_events(events, S, now=NOW)
    assert rejected == []
    assert [e.event_id for _, e in valid] == list("abcdefgh")
