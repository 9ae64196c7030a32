"""Change marks: set in the writing transaction, cleared only if unchanged (the clearing race)."""

import threading
import time

from graphdb.changes import backlog, clear_marks, count_marks, read_marks
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.slots import hand_off, read_partition_marks

NOW = 1_700_000_000.0


def _view(i, user="u1", item="i1"):
    return {"event_id": f"v{i}", "user_id": user, "type": "view", "item_id": item, "ts": NOW + i % 10}


def test_every_touched_node_is_marked_and_clearing_removes_marks(graph, graph_settings):
    ingest_events(
        graph,
        graph_settings,
        [_view(0), _view(1, "u2", "i2"), {"event_id": "q", "user_id": "u3", "type": "search", "query": "lamp", "ts": NOW}],
        now=NOW + 10,
    )
    marks = read_marks(graph)
    key = graph_settings.pseudonym_key.get_secret_value()
    assert {(m.label, m.id) for m in marks} >= {
        ("User", pseudonymise(key, "u1")),
        ("User", pseudonymise(key, "u2")),
        ("Item", "i1"),
        ("Item", "i2"),
    }
    assert {m.label for m in marks} == {"User", "Item", "Query"} and len(marks) == 6
    assert clear_marks(graph, marks) == 6
    assert count_marks(graph) == 0


def test_backlog_counts_the_marks_and_dates_the_oldest(graph, graph_settings):
    assert backlog(graph) == (0, None)
    ingest_events(graph, graph_settings, [_view(0)], now=NOW + 10)  # u1, i1
    ingest_events(graph, graph_settings, [_view(1, "u2", "i1")], now=NOW + 50)  # u2; i1 keeps its first time
    assert backlog(graph) == (3, NOW + 10)
    first = [m for m in read_marks(graph) if m.since == NOW + 10]
    assert clear_marks(graph, first) == 2
    assert backlog(graph) == (1, NOW + 50)


def test_a_round_takes_the_newest_marks_as_well_as_the_oldest(graph, graph_settings):
    """Under a backlog a shopper active now is read at once (by the mark's last change), beside the oldest marks
    (by its first); a mark re-marked keeps its first time, so FIFO alone would leave it behind every older one."""
    key = graph_settings.pseudonym_key.get_secret_value()
    for k in range(1, 7):  # u1/i1 first ... u6/i6 last
        ingest_events(graph, graph_settings, [{**_view(k, f"u{k}", f"i{k}"), "ts": NOW + k}], now=NOW + k)
    ingest_events(graph, graph_settings, [{**_view(99, "u3", "i3"), "ts": NOW + 99}], now=NOW + 99)  # u3 is back now
    u = {k: pseudonymise(key, f"u{k}") for k in range(1, 7)}
    assert {m.id for m in read_marks(graph, limit=4)} == {u[1], "i1", u[2], "i2"}  # the oldest: u3 waits behind them
    mixed = read_marks(graph, limit=4, newest=2)
    assert {m.id for m in mixed} == {u[3], "i3", u[1], "i1"}
    assert {m.since for m in mixed if m.id in (u[3], "i3")} == {NOW + 3}  # its wait still counts from its first change
    assert {m.id for m in read_partition_marks(graph, 0, 1, limit=4, newest=2)} == {m.id for m in mixed}
    assert {m.id for m in read_marks(graph, limit=20, newest=2)} == {*u.values(), *(f"i{k}" for k in range(1, 7))}
    # a cleared mark leaves neither time behind
    assert clear_marks(graph, mixed) == 4
    left = graph.execute_query("MATCH (n) WHERE n.id IN $ids RETURN n.dirty_at AS at, n.dirty_since AS since", ids=[u[3], "i3"])
    assert [(r["at"], r["since"]) for r in left.records] == [(None, None)] * 2
    assert {m.id for m in read_marks(graph, limit=2, newest=2)} == {u[6], "i6"}


def test_a_hand_off_waits_with_the_oldest_not_among_the_newest(graph, graph_settings):
    """A recompute's hand-offs (the users of an item that moved) come after every event waiting; among the newest they
    would take the newest share of each round from the shoppers' own events for as long as a backlog lasted."""
    key = graph_settings.pseudonym_key.get_secret_value()
    u = {k: pseudonymise(key, f"u{k}") for k in range(1, 5)}
    for k in (1, 2, 3):
        ingest_events(graph, graph_settings, [{**_view(k, f"u{k}", f"i{k}"), "ts": NOW + k}], now=NOW + k)
    clear_marks(graph, [m for m in read_marks(graph, limit=20) if m.id == u[1]])  # u1 recomputed: unmarked
    ingest_events(graph, graph_settings, [{**_view(4, "u4", "i4"), "ts": NOW + 4}], now=NOW + 4)
    assert hand_off(graph, {"User": [u[1], u[2]]}, now=NOW + 50) == 2  # after every event: u1 anew, u2 again
    # the newest are the events' (u4, u3), not the hand-offs': u2 keeps the time of its own last change
    assert {m.id for m in read_marks(graph, limit=2, newest=2)} == {u[4], "i4"}
    assert {m.id for m in read_partition_marks(graph, 0, 1, limit=4, newest=4)} == {u[4], "i4", u[3], "i3"}
    # u1's hand-off waits with the oldest, by its first change (now), after the events before it; never lost
    oldest = [m.id for m in read_marks(graph, limit=20)]
    assert oldest.index(u[1]) > oldest.index(u[4]) and oldest.index(u[2]) < oldest.index(u[3])
    assert {m.since for m in read_marks(graph, limit=20) if m.id == u[1]} == {NOW + 50}


def test_a_change_between_read_and_clear_keeps_its_mark(graph, graph_settings):
    ingest_events(graph, graph_settings, [_view(0)], now=NOW + 10)
    seen = read_marks(graph)  # a worker starts recomputing these
    ingest_events(graph, graph_settings, [_view(1, "u2", "i1")], now=NOW + 10)  # lands meanwhile, touches i1
    assert clear_marks(graph, seen) == 1  # u1 cleared; i1 changed again, so it stays
    left = read_marks(graph)
    assert {m.id for m in left if m.label == "Item"} == {"i1"}
    assert clear_marks(graph, left) == 2 and count_marks(graph) == 0


def test_no_change_is_lost_under_concurrent_ingestion_and_clearing(graph, graph_settings):
    """Writers hit one hot item while a clearer loops; after the last write the item must still be marked
    unless a clear happened after it (checked by comparing the last write with the last successful clear)."""
    stop = threading.Event()
    last_write = {}
    errors = []

    def writer(w):
        try:
            for i in range(40):
                ingest_events(graph, graph_settings, [_view(w * 1000 + i, f"w{w}", "hot")], now=NOW + 10)
            last_write[w] = time.monotonic()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    def clearer():
        while not stop.is_set():
            clear_marks(graph, [m for m in read_marks(graph) if m.id == "hot"])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    c = threading.Thread(target=clearer)
    c.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    c.join()
    assert not errors
    # Every write after the clearer's final read keeps its mark; a final clear with stale tokens must not remove it.
    marks = [m for m in read_marks(graph) if m.id == "hot"]
    late = ingest_events(graph, graph_settings, [_view(99999, "late", "hot")], now=NOW + 10)
    assert late.accepted == 1
    assert clear_marks(graph, marks) == 0
    assert [m.id for m in read_marks(graph) if m.id == "hot"] == ["hot"]
