"""``interest graph import`` against the real Neo4j: each format, rejects with positions and reasons, resuming
after an interruption (in process and a killed subprocess), and re-importing changing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graphdb.columns import load_mapping, parse_ts
from graphdb.errors import InvalidInput
from graphdb.importer import import_catalogue, import_events
from graphdb.pseudonym import pseudonymise
from graphdb.schema import wipe
from graphdb.stats import graph_counts

REPO = Path(__file__).resolve().parents[2]
HEADER = ["order_line", "customer", "action", "sku", "time", "stars", "text"]
MAPPING = """
events:
  columns: {order_line: event_id, customer: user_id, action: type, sku: item_id, time: ts, stars: rating, text: review}
  behaviours: {pv: view, cart: add_to_cart, buy: purchase, stars: rate, wrote: review}
catalogue:
  columns: {sku: id, name: title, blurb: description, maker: brand, path: categories}
"""
ITEMS = [
    {"sku": "s1", "name": "Stapler", "blurb": "Staples paper", "maker": "Acme", "path": "Office > Desk > Staplers"},
    {"sku": "s2", "name": "Paper", "blurb": "", "maker": "Acme", "path": "Office > Paper"},
    {"sku": "s3", "name": "Pen", "blurb": "Blue ink", "maker": "Inky", "path": "Office > Desk"},
]
# order_line, customer, action, sku, time (unix seconds or ISO 8601), stars, text; the order line is empty on
# some rows (an id is derived from the row).
EVENTS = [
    ["o1", "alice", "pv", "s1", "1700000000", "", ""],
    ["o2", "alice", "buy", "s1", "2023-11-14T22:13:30Z", "", ""],
    ["", "bob", "pv", "s2", "1700000100", "", ""],
    ["o4", "bob", "cart", "s3", "2023-11-14T22:15:00+00:00", "", ""],
    ["", "carol", "stars", "s3", "1700000200", "4", ""],
    ["o6", "carol", "wrote", "s1", "1700000300", "5", "Works well"],
]


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """The rows as CSV, JSON Lines or Parquet by the name's suffix; bytes cells are written raw (maybe not UTF-8)."""

    def raw(v: Any) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode()

    if path.suffix == ".csv":

        def cell(v: Any) -> bytes:
            b = raw(v)
            return b'"' + b.replace(b'"', b'""') + b'"' if any(c in b for c in (b",", b'"', b"\n")) else b

        path.write_bytes(b"".join(b",".join(cell(v) for v in row) + b"\n" for row in [header, *rows]))
    elif path.suffix == ".jsonl":
        lines = []
        for row in rows:
            obj = {k: v for k, v in zip(header, row) if v != ""}
            text = json.dumps({k: ("\x00BYTES" if isinstance(v, bytes) else v) for k, v in obj.items()}).encode()
            for v in obj.values():
                if isinstance(v, bytes):
                    text = text.replace(b"\\u0000BYTES", v.replace(b'"', b'\\"'), 1)
            lines.append(text + b"\n")
        path.write_bytes(b"".join(lines))
    else:
        binary = any(isinstance(v, bytes) for row in rows for v in row)
        columns = {
            h: pa.array([raw(row[i]) if binary else str(row[i]) for row in rows], pa.binary() if binary else pa.string())
            for i, h in enumerate(header)
        }
        pq.write_table(pa.table(columns), path, row_group_size=4)
    return path


def _mapping(tmp_path: Path):
    file = tmp_path / "shop.yaml"
    file.write_text(MAPPING)
    return load_mapping(file)


def _snapshot(driver) -> dict[str, Any]:
    """What the graph holds, independent of internal ids and mark tokens."""
    rels = driver.execute_query(
        "MATCH (u)-[r]->(t) RETURN u.id AS u, type(r) AS type, t.id AS t, r.count AS count, r.first_ts AS first, "
        "r.last_ts AS last, round(r.weight, 9) AS weight, r.rating AS rating, r.review AS review "
        "ORDER BY u, type, t"
    ).records
    items = driver.execute_query("MATCH (i:Item) RETURN i.id AS id, i.title AS title, i.description AS d ORDER BY id").records
    return {"counts": graph_counts(driver), "rels": [dict(r) for r in rels], "items": [dict(r) for r in items]}


def _rejects(report) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.rejects.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_imports_catalogue_and_events(graph, graph_settings, tmp_path, suffix):
    spec = _mapping(tmp_path)
    items = _write(tmp_path / f"items{suffix}", list(ITEMS[0]), [list(i.values()) for i in ITEMS])
    events = _write(tmp_path / f"events{suffix}", HEADER, EVENTS)

    cat = import_catalogue(graph, graph_settings, items, spec.catalogue)
    assert (cat.totals.read, cat.totals.stored, sum(cat.totals.rejected.values()), cat.complete) == (3, 3, 0, True)
    ev = import_events(graph, graph_settings, events, spec.events)
    assert (ev.totals.read, ev.totals.stored, ev.totals.duplicates, sum(ev.totals.rejected.values())) == (6, 6, 0, 0)
    assert _rejects(ev) == []

    c = graph_counts(graph)
    assert c["nodes"]["Item"] == 3 and c["nodes"]["User"] == 3 and c["nodes"]["Brand"] == 2
    assert c["nodes"]["Category"] == 4  # Office, Office > Desk, Office > Desk > Staplers, Office > Paper
    assert c["relationships"] == {
        **c["relationships"],
        "VIEWED": 2,
        "PURCHASED": 1,
        "ADDED_TO_CART": 1,
        "RATED": 2,
        "HAS_BRAND": 3,
        "IN_CATEGORY": 3,
        "SUBCATEGORY_OF": 3,
    }
    stapler = graph.execute_query(
        "MATCH (i:Item {id: 's1'})-[:IN_CATEGORY]->(c), (i)-[:HAS_BRAND]->(b) RETURN i.title AS t, c.id AS c, b.id AS b"
    ).records[0]
    assert (stapler["t"], stapler["c"], stapler["b"]) == ("Stapler", "Office > Desk > Staplers", "Acme")
    # External ids are pseudonymised; ISO 8601 and unix seconds are the same clock.
    alice = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "alice")
    bought = graph.execute_query("MATCH (:User {id: $u})-[r:PURCHASED]->(:Item {id: 's1'}) RETURN r.last_ts AS ts", u=alice).records
    assert [r["ts"] for r in bought] == [1700000010.0]
    review = graph.execute_query("MATCH (:User)-[r:RATED]->(:Item {id: 's1'}) RETURN r.rating AS r, r.review AS t").records
    assert [(r["r"], r["t"]) for r in review] == [(5.0, "Works well")]


BAD_ROWS = [  # (row, the reason's words), each after a good row
    (["b1", "", "pv", "s1", "1700000000", "", ""], "user_id (column 'customer'): missing"),
    (["b2", "dave", "pv", "s1", "yesterday", "", ""], "ts (column 'time'): cannot read 'yesterday'"),
    (["b3", "dave", "wishlist", "s1", "1700000000", "", ""], "unknown behaviour 'wishlist'"),
    (["b4", "dave", "stars", "s1", "1700000000", "7", ""], "rating 7.0 is outside 1..5"),
    (["b5", "dave", "pv", b"s\xff1", "1700000000", "", ""], "not UTF-8"),
    (["b6", "dave", "wrote", "s1", "1700000000", "5", "x" * 100_000], "review is 100000 characters; the limit is 4000"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_bad_rows_go_to_the_rejects_file_and_good_rows_are_stored(graph, graph_settings, tmp_path, suffix):
    rows: list[list[Any]] = []
    for k, (bad, _) in enumerate(BAD_ROWS):
        rows += [[f"g{k}", f"user{k}", "pv", "s2", str(1700000000 + k), "", ""], bad]
    path = _write(tmp_path / f"events{suffix}", HEADER, rows)

    report = import_events(graph, graph_settings, path, _mapping(tmp_path).events)

    position = "line" if suffix == ".jsonl" else "row"
    rejects = _rejects(report)
    assert [r[position] for r in rejects] == [2 * k + 2 for k in range(len(BAD_ROWS))]
    for r, (_, words) in zip(rejects, BAD_ROWS):
        assert words in r["reason"], r
    assert (report.totals.read, report.totals.stored, sum(report.totals.rejected.values())) == (12, 6, 6)
    assert report.totals.rejected["ts"] == 1 and report.totals.rejected["rating"] == 1
    assert graph_counts(graph)["events"]["VIEWED"] == len(BAD_ROWS)


def test_bad_catalogue_rows_go_to_the_rejects_file(graph, graph_settings, tmp_path):
    rows = [
        list(ITEMS[0].values()),
        ["", "No id", "", "", ""],
        ["s9", "t" * 5000, "", "", ""],
        ["s8", "Shelf", "", "", "Office >  > Shelves"],
        list(ITEMS[1].values()),
    ]
    path = _write(tmp_path / "items.csv", list(ITEMS[0]), rows)
    report = import_catalogue(graph, graph_settings, path, _mapping(tmp_path).catalogue)
    assert [(r["row"], r["reason"]) for r in _rejects(report)] == [
        (2, "id (column 'sku'): missing"),
        (3, "title is 5000 characters; the limit is 4000"),
        (4, "categories: category names must not be empty"),
    ]
    assert (report.totals.stored, graph_counts(graph)["nodes"]["Item"]) == (2, 2)


def _many_events(n: int) -> list[list[Any]]:
    """n rows over 40 shoppers and 30 items, some repeated pairs, a bad row every 97th, half without an id."""
    types = ["pv", "pv", "cart", "buy", "stars"]
    rows = []
    for k in range(n):
        kind = types[k % len(types)]
        ts = "not-a-time" if k % 97 == 96 else str(1700000000 + k)
        rows.append(
            [f"o{k}" if k % 2 else "", f"user{k % 40}", kind, f"s{(k * 7) % 30}", ts, str(1 + k % 5) if kind == "stars" else "", ""]
        )
    return rows


def test_interrupted_import_resumes_to_the_same_graph(graph, graph_settings, tmp_path):
    gs = graph_settings.model_copy(update={"batch_size": 100})
    path = _write(tmp_path / "events.csv", HEADER, _many_events(1000))
    spec = _mapping(tmp_path).events

    first = import_events(graph, gs, path, spec, stop_after_batches=3)
    assert not first.complete and first.totals.read == 300
    saved = json.loads(first.checkpoint.read_text())
    assert (saved["position"], saved["done"]) == (300, False)
    # The pipeline had already handed batch 4 to Neo4j: stored but not checkpointed, as after a kill there.
    resumed = import_events(graph, gs, path, spec)
    assert resumed.complete and resumed.resumed_from == 300 and resumed.read_now == 700
    assert resumed.totals.read == 1000 and sum(resumed.totals.rejected.values()) == 10
    assert resumed.totals.stored + resumed.totals.duplicates >= 990
    assert [r["row"] for r in _rejects(resumed)] == [k + 1 for k in range(1000) if k % 97 == 96]
    interrupted = _snapshot(graph)

    wipe(graph)
    whole = import_events(graph, gs, path, spec, restart=True)
    assert whole.totals.stored == 990 and whole.totals.duplicates == 0
    assert _snapshot(graph) == interrupted


def test_killed_import_resumes_to_the_same_graph(graph, graph_settings, neo4j_settings, tmp_path):
    path = _write(tmp_path / "events.jsonl", HEADER, _many_events(12000))
    mapping = tmp_path / "shop.yaml"
    mapping.write_text(MAPPING)
    env = {
        **os.environ,
        "NEO4J_URI": neo4j_settings.uri,
        "IG_PSEUDONYM_KEY": "test-pseudonym-key",
        "IG_EMBEDDING_DIM": str(graph_settings.embedding_dim),
        "IG_BATCH_SIZE": "200",
        "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "cli.main", "graph", "import", "--events", str(path), "--map", str(mapping)]
    checkpoint = tmp_path / "events.jsonl.rejects.jsonl.progress.json"

    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    position = 0
    while position == 0:  # kill it as soon as a batch is committed
        assert proc.poll() is None, "the import ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within five minutes"
        try:
            position = json.loads(checkpoint.read_text())["position"]
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.01)  # the poll's interval: leave the CPU to the import
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < json.loads(checkpoint.read_text())["position"] < 12000

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed after" in done.stdout
    saved = json.loads(checkpoint.read_text())
    assert (saved["position"], saved["done"], saved["totals"]["read"]) == (12000, True, 12000)
    lines = [json.loads(x)["line"] for x in (tmp_path / "events.jsonl.rejects.jsonl").read_text().splitlines()]
    assert lines == [k + 1 for k in range(12000) if k % 97 == 96]  # each reject once, in order
    killed = _snapshot(graph)

    wipe(graph)
    import_events(graph, graph_settings, path, load_mapping(mapping).events, restart=True)
    assert _snapshot(graph) == killed


def test_reimport_changes_nothing(graph, graph_settings, tmp_path):
    spec = _mapping(tmp_path)
    items = _write(tmp_path / "items.parquet", list(ITEMS[0]), [list(i.values()) for i in ITEMS])
    events = _write(tmp_path / "events.parquet", HEADER, EVENTS)
    import_catalogue(graph, graph_settings, items, spec.catalogue)
    import_events(graph, graph_settings, events, spec.events)
    before = _snapshot(graph)
    # Clear the marks, as the workers would: importing again must not mark anything for recompute.
    graph.execute_query("MATCH (n:Dirty) REMOVE n:Dirty")
    cleared = _snapshot(graph)

    done = import_events(graph, graph_settings, events, spec.events)
    assert (done.read_now, done.complete) == (0, True)  # the checkpoint says the file is done
    again_items = import_catalogue(graph, graph_settings, items, spec.catalogue, restart=True)
    again = import_events(graph, graph_settings, events, spec.events, restart=True)
    assert (again_items.totals.stored, again_items.totals.duplicates) == (0, 3)
    assert (again.totals.stored, again.totals.duplicates) == (0, 6)
    assert _snapshot(graph) == cleared
    assert {k: v for k, v in before["counts"]["nodes"].items() if k != "Dirty"} == cleared["counts"]["nodes"]


def test_mapping_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(InvalidInput, match="maps to 'userid'"):
        load_mapping(None, event_columns=["customer=userid"])
    with pytest.raises(InvalidInput, match="both map to 'user_id'"):
        load_mapping(None, event_columns=["customer=user_id", "buyer=user_id"])
    with pytest.raises(InvalidInput, match="'like' maps to 'love'"):
        load_mapping(None, behaviours=["like=love"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(InvalidInput, match="expected sections"):
        load_mapping(bad)


def test_timestamps_unix_and_iso():
    assert parse_ts("2023-11-14T22:13:20Z", "auto", "t") == 1700000000.0
    assert parse_ts("2023-11-14 22:13:20", "auto", "t") == 1700000000.0  # no zone: UTC
    assert parse_ts(1700000000, "auto", "t") == parse_ts("1700000000", "unix", "t") == 1700000000.0
    assert parse_ts(1700000000500, "unix_ms", "t") == 1700000000.5
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_ts("1700000000", "iso", "t")
