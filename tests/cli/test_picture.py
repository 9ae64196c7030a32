"""``interest graph picture`` draws one shopper's interest graph from the real Neo4j: the picture's nodes and
edges are read back from the SVG that Graphviz wrote."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from graphdb.ingest import ingest_events
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token

NOW = 1_750_000_000.0
SVG = "{http://www.w3.org/2000/svg}"

ITEMS = [
    ItemRecord("i-head", title="Headphones One", brand="Sonic", categories=(("Electronics", "Audio", "Headphones"),)),
    ItemRecord("i-cam", title="Camera", brand="Snap", categories=(("Electronics", "Cameras"),)),
    ItemRecord("i-pen", title="A 14&quot; Pen", categories=(("Office", "Pens"),)),
    ItemRecord("i-else", title="Somebody Else's Lamp", brand="Elsewhere", categories=(("Home", "Lamps"),)),
]
EVENTS = [
    ("shopper", "view", "i-head", NOW - 300),
    ("shopper", "purchase", "i-head", NOW - 200),
    ("shopper", "view", "i-cam", NOW - 100),
    ("shopper", "view", "i-cam", NOW - 90),
    ("shopper", "purchase", "i-pen", NOW - 50),
    ("shopper", "search", "Wireless  Headphones", NOW - 400),
    ("other", "purchase", "i-else", NOW - 10),
    ("other", "search", "lamps", NOW - 20),
]


@pytest.fixture
def shopper_graph(graph, graph_settings, neo4j_settings, monkeypatch):
    with graph.session() as session:
        session.execute_write(lambda tx: upsert_items(tx, ITEMS, token=new_token(), now=NOW - 1000))
    rows = [
        {"event_id": f"e{n}", "user_id": user, "type": type_, "ts": ts, ("query" if type_ == "search" else "item_id"): target}
        for n, (user, type_, target, ts) in enumerate(EVENTS)
    ]
    assert ingest_events(graph, graph_settings, rows, now=NOW).accepted == len(EVENTS)
    monkeypatch.setenv("NEO4J_URI", neo4j_settings.uri)
    monkeypatch.setenv("IG_PSEUDONYM_KEY", graph_settings.pseudonym_key.get_secret_value())
    return graph


def read_svg(path: Path) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """(node name -> its text, {(tail text, head text, edge label)}) of a Graphviz SVG."""
    root = ET.parse(path).getroot()
    labels: dict[str, str] = {}
    raw_edges = []
    for g in root.iter(f"{SVG}g"):
        title = g.findtext(f"{SVG}title")
        text = " ".join(t.text or "" for t in g.iter(f"{SVG}text"))
        if g.get("class") == "node":
            labels[title] = text
        elif g.get("class") == "edge":
            raw_edges.append((*title.split("->"), text))
    return labels, {(labels[tail], labels[head], label) for tail, head, label in raw_edges}


def test_picture_shows_the_shoppers_items_brands_categories_and_searches(shopper_graph, tmp_path) -> None:
    """Nothing of the other shopper; catalogue HTML entities decoded."""
    out = tmp_path / "pics" / "shopper.svg"
    result = CliRunner().invoke(app, ["graph", "picture", "--user", "shopper", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 items, 2 brands, 6 categories, 1 searches" in " ".join(result.output.split())
    labels, edges = read_svg(out)
    assert sorted(labels.values()) == sorted(
        [
            "shopper",
            "Headphones One",
            "Camera",
            'A 14" Pen',
            "Sonic",
            "Snap",
            "Electronics",
            "Audio",
            "Headphones",
            "Cameras",
            "Office",
            "Pens",
            "“wireless headphones”",
        ]
    )
    assert edges == {
        ("shopper", "Headphones One", "viewed, bought"),
        ("shopper", "Camera", "viewed ×2"),
        ("shopper", 'A 14" Pen', "bought"),
        ("shopper", "“wireless headphones”", "searched"),
        ("Headphones One", "Sonic", ""),
        ("Camera", "Snap", ""),
        ("Headphones One", "Headphones", ""),
        ("Camera", "Cameras", ""),
        ('A 14" Pen', "Pens", ""),
        ("Headphones", "Audio", ""),
        ("Audio", "Electronics", ""),
        ("Cameras", "Electronics", ""),
        ("Pens", "Office", ""),
    }


def test_picture_keeps_to_the_most_recent_items_when_capped(shopper_graph, tmp_path) -> None:
    out = tmp_path / "capped.png"
    result = CliRunner().invoke(app, ["graph", "picture", "-u", "shopper", "-o", str(out), "--max-items", "1", "--max-queries", "0"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "1 items, 0 brands, 2 categories, 0 searches" in " ".join(result.output.split())  # A Pen: Office > Pens


def test_picture_errors_name_what_was_wrong(shopper_graph, tmp_path) -> None:
    unknown = CliRunner().invoke(app, ["graph", "picture", "--user", "nobody", "--out", str(tmp_path / "x.svg")])
    assert unknown.exit_code == 1 and "no user" in unknown.output
    assert not (tmp_path / "x.svg").exists()
    bad = CliRunner().invoke(app, ["graph", "picture", "--user", "shopper", "--out", str(tmp_path / "x.gif")])
    assert bad.exit_code == 2 and ".svg or .png" in bad.output


def test_the_cli_loads_without_graphviz() -> None:
    """Graphviz is imported by the command only, so ``interest --help`` stays fast."""
    code = "import sys, cli.main; print('graphviz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
