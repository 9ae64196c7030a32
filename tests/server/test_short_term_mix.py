"""server.short_term on tiny hand-written inputs: which recent items make a short-term interest, how many slots it
gets, and the deterministic mix of the two rankings."""

from __future__ import annotations

from graphdb.subgraph import EdgeRow
from server.short_term import ShortTermParams, mix, recent_items, reserved_slots

P = ShortTermParams(share=0.3, window_s=600.0, min_items=3, max_items=4)
DAY = 86400.0


def _edge(item: str, t: float, w: float = 1.0) -> EdgeRow:
    return EdgeRow("u", item, w, t)


def test_a_recent_burst_beside_an_older_history_is_a_short_term_interest() -> None:
    old = [_edge(f"old-{j}", 1000.0 + j) for j in range(5)]
    burst = [_edge("b1", 10 * DAY), _edge("b2", 10 * DAY + 30), _edge("b2", 10 * DAY + 20, 3.0), _edge("b3", 10 * DAY + 60)]
    # weights summed over an item's behaviour types; only items within the window of the latest interaction
    assert recent_items(old + burst, 8, P) == {"b1": 1.0, "b2": 4.0, "b3": 1.0}


def test_the_newest_items_are_kept_up_to_max_items_ties_by_id() -> None:
    edges = [_edge(f"i{j}", 5000.0 + (j // 2)) for j in range(6)] + [_edge("old", 0.0)]
    assert sorted(recent_items(edges, 7, P) or {}) == ["i2", "i3", "i4", "i5"]


def test_no_short_term_interest_for_one_odd_click_or_a_whole_history() -> None:
    old = [_edge(f"old-{j}", 1000.0 + j) for j in range(5)]
    assert recent_items(old + [_edge("odd", 10 * DAY)], 6, P) is None  # fewer than min_items recent items
    session = [_edge(f"s{j}", 10 * DAY + j) for j in range(3)]
    assert recent_items(session, 3, P) is None  # everything the shopper has: the long-term vector already
    assert recent_items(old + session, 8, P) is not None
    assert recent_items(old + session, 8, ShortTermParams(0.0, 600.0, 3, 4)) is None  # switched off
    assert recent_items([], 0, P) is None


def test_reserved_slots_leave_a_long_term_item() -> None:
    assert [reserved_slots(k, 0.3) for k in (1, 2, 3, 10, 20)] == [0, 1, 1, 3, 6]
    assert reserved_slots(10, 0.9) == 9 and reserved_slots(10, 0.0) == 0


def test_mix_alternates_from_the_second_rank_and_never_repeats_an_item() -> None:
    long = [(f"L{j}", 1.0 - j / 100) for j in range(10)]
    short = [("L1", 0.9), ("S0", 0.8), ("S1", 0.7), ("S2", 0.6), ("S3", 0.5)]
    got = mix(long, short, 8, 3)
    # the short-term ranking's best item is one the long-term ranking has too: it fills a short-term slot, so a
    # short-term interest close to the long-term one changes little
    assert [i for i, _ in got] == ["L0", "L1", "L2", "S0", "L3", "S1", "L4", "L5"]
    assert dict(got)["L1"] == 0.9 and dict(got)["S0"] == 0.8 and dict(got)["L3"] == 0.97  # the placing ranking's score
    assert mix(long, short, 8, 0) == long[:8]


def test_mix_fills_from_the_other_ranking_when_one_runs_out() -> None:
    long = [("L0", 1.0), ("L1", 0.9)]
    short = [("S0", 0.5), ("S1", 0.4), ("S2", 0.3)]
    assert [i for i, _ in mix(long, short, 5, 1)] == ["L0", "S0", "L1", "S1", "S2"]
    assert [i for i, _ in mix(long[:1], [], 5, 2)] == ["L0"]
    assert [i for i, _ in mix([("L0", 1.0)] * 1 + [("S0", 0.9)], [("S0", 0.5)], 3, 1)] == ["L0", "S0"]
