"""``interest graph picture``: one shopper's interest graph (graphdb.interest_graph) drawn with Graphviz.

Left to right: the shopper, the items they touched (edges say how and how often), each item's brand and
categories, the categories' parents up to the root; searches hang off the shopper as notes. Graphviz and the
driver are imported inside the command so that ``interest --help`` stays fast.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    import graphviz

    from graphdb.interest_graph import InterestGraph

console = Console()
FORMATS = ("svg", "png")
_TITLE_CHARS = 42
# Funnel order: an edge reads "viewed ×3, bought".
_BEHAVIOUR = {"VIEWED": "viewed", "CLICKED": "clicked", "ADDED_TO_CART": "carted", "PURCHASED": "bought", "RATED": "rated"}


def _short(text: str, limit: int = _TITLE_CHARS) -> str:
    # Catalogue text may hold HTML entities (amazon-office: &quot;, &reg;): decode before cutting one in half.
    text = html.unescape(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def to_dot(graph: InterestGraph) -> graphviz.Digraph:
    """The picture as a Graphviz digraph. Node names are generated (n0, n1, ...): ids may hold ':' which DOT
    would read as a port."""
    import graphviz

    dot = graphviz.Digraph(
        "interest",
        graph_attr={
            "rankdir": "LR",
            "fontname": "Helvetica",
            "fontsize": "12",
            "labelloc": "t",
            "nodesep": "0.15",
            "ranksep": "0.6",
            "label": graphviz.escape(
                f"Interest graph of shopper {graph.user[:14]}…: {len(graph.items)} items, {len(graph.searches)} searches"
            ),
        },
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "#777777"},
    )
    names: dict[tuple[str, str], str] = {}

    def node(kind: str, key: str, label: str, **attrs: str) -> str:
        if (kind, key) not in names:
            names[(kind, key)] = f"n{len(names)}"
            dot.node(names[(kind, key)], graphviz.escape(label), **attrs)
        return names[(kind, key)]

    by_id = {c.id: c for c in graph.categories}

    def category(cid: str) -> str:
        name = by_id[cid].name if cid in by_id else cid
        return node("category", cid, _short(name), shape="folder", fillcolor="#dff5e1")

    me = node("user", graph.user, "shopper", shape="circle", fillcolor="#f4a261")
    for item in graph.items:
        n = node("item", item.id, _short(item.title or item.id), shape="box", fillcolor="#e9f5ff")
        dot.edge(
            me,
            n,
            label=graphviz.escape(
                ", ".join(
                    _BEHAVIOUR[kind] + (f" ×{count}" if count > 1 else "")
                    for kind, count in sorted(item.behaviours, key=lambda b: list(_BEHAVIOUR).index(b[0]))
                )
            ),
        )
        if item.brand:
            dot.edge(n, node("brand", item.brand, _short(item.brand), shape="ellipse", fillcolor="#ffe8a3"), style="dashed")
        for leaf in item.categories:
            dot.edge(n, category(leaf))
    for cat in graph.categories:
        if cat.parent is not None:
            dot.edge(category(cat.id), category(cat.parent), color="#2a9d8f")
    for text, count in graph.searches:
        q = node("query", text, f"“{_short(text)}”", shape="note", fillcolor="#f1e4ff")
        dot.edge(me, q, label=f"searched ×{count}" if count > 1 else "searched", style="dotted")
    return dot


def picture(
    user: str = typer.Option(..., "--user", "-u", help="the shopper's external id (pseudonymised with IG_PSEUDONYM_KEY)"),
    out: Path = typer.Option(..., "--out", "-o", help="the picture to write: .svg or .png"),
    max_items: int = typer.Option(25, min=1, help="at most this many items, the most recently touched"),
    max_queries: int = typer.Option(10, min=0, help="at most this many searches, the most recent"),
) -> None:
    """Draw one shopper's interest graph (items, brands, categories, searches) from the live graph."""
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"the picture's name must end in .svg or .png, got {out.name!r}", param_hint="--out")
    import graphviz

    from graphdb.driver import connect
    from graphdb.errors import InterestError
    from graphdb.interest_graph import read_interest_graph
    from graphdb.pseudonym import pseudonymise
    from graphdb.settings import GraphSettings, Neo4jSettings

    pseudonym = pseudonymise(GraphSettings().pseudonym_key.get_secret_value(), user)
    try:
        with connect(Neo4jSettings()) as driver:
            graph = read_interest_graph(driver, pseudonym, max_items=max_items, max_queries=max_queries)
    except InterestError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    try:
        data = to_dot(graph).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        console.print("[red]error:[/red] Graphviz's `dot` is needed to draw (apt-get install graphviz)")
        raise typer.Exit(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    console.print(
        f"{out}: {len(graph.items)} items, {len({i.brand for i in graph.items if i.brand})} brands, "
        f"{len(graph.categories)} categories, {len(graph.searches)} searches",
        soft_wrap=True,
    )
