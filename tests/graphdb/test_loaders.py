"""Each loader's node and relationship counts equal the dataset's (counted here straight from the files): the whole
of amazon-office (bundled), and the slices of amazon-hin and gowalla shipped in tests/data."""

import json

from graphdb.loaders import load_dataset
from graphdb.stats import graph_counts


def test_amazon_office(graph, graph_settings, office_root):
    root = office_root
    inter = json.loads((root / "Office.inter.json").read_text())
    meta = json.loads((root / "Office.item.json").read_text())
    pairs = {(u, i) for u, items in inter.items() for i in items}
    brands = {m["brand"].replace("&amp;", "&").strip() for m in meta.values() if m["brand"].strip()}
    paths = {
        tuple(p.strip() for p in m["categories"].replace("&amp;", "&").split(",")) for m in meta.values() if m["categories"].strip()
    }
    prefixes = {p[:k] for p in paths for k in range(1, len(p) + 1)}

    result = load_dataset(graph, graph_settings, "amazon-office", root)
    assert (result.accepted, result.duplicates, result.rejected) == (sum(map(len, inter.values())), 0, [])
    c = graph_counts(graph)
    assert c["nodes"]["User"] == len(inter) == 4905
    assert c["nodes"]["Item"] == len(meta) == 2420
    assert c["nodes"]["Brand"] == len(brands)
    assert c["nodes"]["Category"] == len(prefixes)
    assert c["relationships"]["PURCHASED"] == len(pairs)
    assert c["relationships"]["HAS_BRAND"] == sum(1 for m in meta.values() if m["brand"].strip())
    assert c["relationships"]["IN_CATEGORY"] == sum(1 for m in meta.values() if m["categories"].strip())
    assert c["relationships"]["SUBCATEGORY_OF"] == sum(1 for p in prefixes if len(p) > 1)
    titled = graph.execute_query("MATCH (i:Item) WHERE i.title IS NOT NULL RETURN count(i) AS n").records[0]["n"]
    assert titled == sum(1 for m in meta.values() if m["title"].strip())
    # Loading again is harmless: every event id is recognised.
    again = load_dataset(graph, graph_settings, "amazon-office", root)
    assert (again.accepted, again.duplicates) == (0, result.accepted)
    assert graph_counts(graph)["events"] == c["events"]


def test_amazon_hin(graph, graph_settings, slices):
    root = slices / "amazon-hin"
    rows = [line.split("\t") for line in (root / "user_item.dat").read_text().split("\n") if line.strip()]
    cats = {tuple(line.split(",")) for line in (root / "item_category.dat").read_text().split() if line}
    brands = [line.split(",") for line in (root / "item_brand.dat").read_text().split() if line]
    views = {tuple(line.split(",")) for line in (root / "item_view.dat").read_text().split() if line}
    items = {r[1] for r in rows} | {c[0] for c in cats} | {b[0] for b in brands} | {v[0] for v in views}

    result = load_dataset(graph, graph_settings, "amazon-hin", root)
    assert (result.accepted, result.rejected) == (len({(r[0], r[1], r[3]) for r in rows}), [])
    c = graph_counts(graph)
    assert c["nodes"]["User"] == len({r[0] for r in rows}) == 31
    assert c["nodes"]["Item"] == len(items) + len({v[1] for v in views})
    assert c["nodes"]["Category"] == len({c[1] for c in cats}) > 1
    assert c["nodes"]["Brand"] == len({b[1] for b in brands}) > 1
    assert c["relationships"]["RATED"] == len({(r[0], r[1]) for r in rows})
    assert c["events"]["RATED"] == result.accepted
    assert c["relationships"]["IN_CATEGORY"] == len(cats)
    assert c["relationships"]["HAS_BRAND"] == len(brands)
    assert c["relationships"]["ALSO_VIEWED"] == len(views)
    # The latest rating of a pair wins; the timestamps bound every aggregate.
    latest = {}
    for u, i, rating, ts in rows:
        if (u, i) not in latest or float(ts) >= latest[(u, i)][1]:
            latest[(u, i)] = (float(rating), float(ts))
    (u, i), (rating, ts) = next(iter(sorted(latest.items())))
    rec = graph.execute_query(
        "MATCH (:User)-[e:RATED]->(:Item {id: $i}) WHERE e.last_ts = $ts RETURN e.rating AS r", i=f"hin:{i}", ts=ts
    ).records
    assert rating in [r["r"] for r in rec]


def test_gowalla(graph, graph_settings, slices):
    root = slices / "gowalla"
    lines = [line.split() for line in (root / "train.txt").read_text().split("\n") if line.strip()]
    n_events = sum(len(x) - 1 for x in lines)
    result = load_dataset(graph, graph_settings, "gowalla", root)
    assert (result.accepted, result.rejected) == (n_events, []) and n_events == 6_995
    c = graph_counts(graph)
    assert c["nodes"]["User"] == len(lines) == 60
    assert c["nodes"]["Item"] == len({i for x in lines for i in x[1:]})
    assert c["relationships"]["VIEWED"] == len({(x[0], i) for x in lines for i in x[1:]})
