"""Malformed input files and events, property-based: the loaders answer InvalidInput naming the file and line
(never another exception) before writing anything, and event validation rejects garbage per event without
raising, keeping the valid events of the batch."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphdb.errors import InvalidInput
from graphdb.events import validate_events
from graphdb.loaders import DATASETS, load_dataset
from graphdb.settings import GraphSettings
from graphdb.stats import graph_counts

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,  # no example files in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
NOW = 1_700_000_000.0

# -- tiny valid datasets in each format ------------------------------------------------------------------------------
GOWALLA = ["0 0 1 2", "1 2 3", "2 0 3 4 5"]
HIN = {
    "user_item.dat": ["1\t10\t5\t1386201600", "2\t10\t4\t1387670400", "2\t11\t3\t1059004800"],
    "item_category.dat": ["10,0", "10,1", "11,0"],
    "item_brand.dat": ["10,0", "11,1"],
    "item_view.dat": ["10,7", "11,8"],
}
OFFICE_INTER = {"0": [0, 1], "1": [1, 2, 0]}
OFFICE_ITEMS = {
    str(i): {"title": f"Pen {i}", "description": "", "brand": "Acme", "categories": "Office Products, Writing"} for i in range(3)
}
LINE_FILES = {"gowalla": ("train.txt", GOWALLA), **{f"amazon-hin/{k}": (k, v) for k, v in HIN.items()}}


def _write_gowalla(root: Path, lines: list[str] | bytes) -> None:
    root.mkdir(parents=True, exist_ok=True)
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    (root / "train.txt").write_bytes(data)


def _write_hin(root: Path, override: dict[str, list[str] | bytes] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in {**HIN, **(override or {})}.items():
        data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
        (root / name).write_bytes(data)


def _write_office(root: Path, inter=OFFICE_INTER, items=OFFICE_ITEMS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (("Office.inter.json", inter), ("Office.item.json", items)):
        (root / name).write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def _read_all(name: str, root: Path) -> int:
    """Everything a load reads, without a database: items, also-viewed, events, and the CLI's event count."""
    ds = DATASETS[name]
    list(ds.items(root))
    list(ds.also_viewed(root))
    events = list(ds.events(root))
    assert ds.count_events(root) == len(events)
    return len(events)


# -- strategies of broken lines ------------------------------------------------------------------------------------
junk_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
not_an_id = st.one_of(
    st.sampled_from(
        [
            "-1",
            "1.5",
            "1e3",
            "abc",
            "0x10",
            "١٢",
            "²",
            "nan",
            "inf",
            "9" * 19,
            "12345678901234567890123",
            "1_000",
            "+5",
            "' OR 1=1",
            "`x`",
            "$id",
        ]
    ),
    junk_text.filter(lambda t: not (t.strip().isascii() and t.strip().isdigit())),
)
bad_numbers = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1", "abc", "", "0", "6", "5.5e1", "2e11", "0x1", "١"])


def _bad_gowalla_line() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda bad: f"{bad} 1 2", not_an_id.filter(lambda t: " " not in t and t.strip())),
        st.builds(lambda bad: f"3 4 {bad}", not_an_id.filter(lambda t: " " not in t and t.strip())),
        st.builds(lambda n: f"7 {'9' * n}", st.integers(19, 400)),  # huge number
    )


def _bad_hin_line() -> st.SearchStrategy[str]:
    cols = st.lists(st.sampled_from(["1", "10", "5", "1386201600", "x", ""]), max_size=7).filter(lambda c: len(c) != 4)
    return st.one_of(
        cols.map("\t".join).filter(str.strip),
        st.builds(lambda u: f"{u}\t10\t5\t1386201600", not_an_id.filter(lambda t: "\t" not in t and t.strip())),
        st.builds(lambda r: f"1\t10\t{r}\t1386201600", bad_numbers.filter(lambda t: t.strip())),
        st.builds(lambda t: f"1\t10\t4\t{t}", bad_numbers.filter(lambda t: t not in ("0", "6", "5.5e1") and t.strip())),
        st.just("1,10,5,1386201600"),  # commas where tabs belong
    )


def _bad_pair_line() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["10", "10,1,2", "10;1", "10,", ",1", "10,x", "x,1", "10,-1", "10,1.0", "1" * 30 + ",1"]),
        st.builds(lambda a: f"{a},1", not_an_id.filter(lambda t: "," not in t and t.strip())),
    )


def _check_names(exc: InvalidInput, file: str, line: int | None) -> None:
    msg = str(exc)
    where = f"{file}:{line}:" if line is not None else file
    assert where in msg, (where, msg)
    assert "Traceback" not in msg and len(msg) < 400


# -- line-based files: one bad line among good ones ------------------------------------------------------------------
@FUZZ
@given(bad=_bad_gowalla_line(), pos=st.integers(0, len(GOWALLA)))
def test_gowalla_bad_line_is_named(bad, pos) -> None:
    lines = GOWALLA[:pos] + [bad] + GOWALLA[pos:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gowalla"
        _write_gowalla(root, lines)
        with pytest.raises(InvalidInput) as err:
            _read_all("gowalla", root)
        _check_names(err.value, "train.txt", pos + 1)


@FUZZ
@given(file=st.sampled_from(sorted(HIN)), data=st.data())
def test_hin_bad_line_is_named(file, data) -> None:
    good = HIN[file]
    bad = data.draw(_bad_hin_line() if file == "user_item.dat" else _bad_pair_line())
    pos = data.draw(st.integers(0, len(good)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "amazon-hin"
        _write_hin(root, {file: good[:pos] + [bad] + good[pos:]})
        with pytest.raises(InvalidInput) as err:
            _read_all("amazon-hin", root)
        _check_names(err.value, file, pos + 1)


@pytest.mark.parametrize("bad", ["\t1\t1\t1\t1", "1\t1\t1\t1\t", "1\t\t1\t1"])
def test_hin_empty_tab_field_is_named(bad: str) -> None:
    """A leading or trailing tab is an empty field (found by the fuzz test above: outer tabs were stripped once)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "amazon-hin"
        _write_hin(root, {"user_item.dat": [bad] + HIN["user_item.dat"]})
        with pytest.raises(InvalidInput) as err:
            _read_all("amazon-hin", root)
        _check_names(err.value, "user_item.dat", 1)


@FUZZ
@given(
    target=st.sampled_from(["gowalla/train.txt"] + [f"amazon-hin/{f}" for f in sorted(HIN)]),
    junk=st.binary(min_size=1, max_size=200),
    pos=st.integers(0, 3),
)
def test_binary_junk_is_invalid_input_or_parsed(target, junk, pos) -> None:
    """Arbitrary bytes spliced into a file: either it still parses (the bytes happened to be a valid line) or
    InvalidInput names the file; never a UnicodeDecodeError, ValueError or the like."""
    dataset, file = target.split("/")
    good = GOWALLA if dataset == "gowalla" else HIN[file]
    data = "\n".join(good[:pos]).encode() + b"\n" + junk + b"\n" + "\n".join(good[pos:]).encode() + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / dataset
        if dataset == "gowalla":
            _write_gowalla(root, data)
        else:
            _write_hin(root, {file: data})
        try:
            _read_all(dataset, root)
        except InvalidInput as exc:
            _check_names(exc, file, None)
            assert f"{file}:" in str(exc)  # with a line number


@pytest.mark.parametrize("dataset", ["gowalla", "amazon-hin", "amazon-office"])
def test_missing_files_are_named(tmp_path, dataset) -> None:
    with pytest.raises(InvalidInput) as err:
        _read_all(dataset, tmp_path / dataset)
    assert "does not exist" in str(err.value)


# -- JSON files (amazon-office) ----------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | junk_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    inter=st.one_of(
        json_values,
        st.dictionaries(junk_text, json_values, max_size=4),
        st.dictionaries(st.sampled_from(["0", "1", "x"]), st.lists(json_values, max_size=3), min_size=1, max_size=3),
    ),
    items=st.one_of(
        st.just(OFFICE_ITEMS),
        json_values,
        st.dictionaries(
            st.sampled_from(["0", "1", "-1", "a"]),
            st.dictionaries(st.sampled_from(["title", "brand", "categories", "x"]), json_values, max_size=4),
            max_size=3,
        ),
    ),
)
def test_office_json_garbage(inter, items) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "amazon-office"
        _write_office(root, inter, items)
        try:
            n = _read_all("amazon-office", root)
        except InvalidInput as exc:
            assert "Office.inter.json" in str(exc) or "Office.item.json" in str(exc), str(exc)
        else:  # accepted: then it really was the expected shape
            assert isinstance(inter, dict) and n == sum(len(v) for v in inter.values())


@pytest.mark.parametrize(
    "inter, where",
    [
        (b'{"0": [0, 1,\n  ]', "Office.inter.json:2:"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"0": 5}', "expected a list of item ids"),
        (b'{"0": [1.5]}', "item id #1"),
        (b'{"0": [true]}', "item id #1"),
        (b'{"0": ["x"]}', "item id #1"),
        (b'{"0": [-3]}', "item id #1"),
        (b'{"u1": [1]}', "user id 'u1'"),
        (b"[" * 100000 + b"]" * 100000, "Office.inter.json"),  # deep nesting
    ],
)
def test_office_json_errors_say_where(tmp_path, inter, where) -> None:
    _write_office(tmp_path, inter=inter)
    with pytest.raises(InvalidInput) as err:
        _read_all("amazon-office", tmp_path)
    assert where in str(err.value), str(err.value)


# -- with the database: a malformed file changes nothing -------------------------------------------------------------
def _good(root: Path) -> None:
    _write_gowalla(root / "gowalla", GOWALLA)
    _write_hin(root / "amazon-hin")
    _write_office(root / "amazon-office")


def test_malformed_files_change_nothing_and_valid_data_stays(graph, graph_settings, tmp_path) -> None:
    _good(tmp_path)
    for name in DATASETS:
        result = load_dataset(graph, graph_settings, name, tmp_path / name)
        assert result.rejected == [] and result.accepted > 0
    before = graph_counts(graph)
    broken = {
        "gowalla": lambda r: _write_gowalla(r, GOWALLA + ["9 1 2 x"]),
        "amazon-hin": lambda r: _write_hin(r, {"item_view.dat": HIN["item_view.dat"] + ["12"]}),
        "amazon-office": lambda r: _write_office(r, items={**OFFICE_ITEMS, "7": ["not", "an", "object"]}),
    }
    bad_root = tmp_path / "bad"
    _good(bad_root)
    for name, breaker in broken.items():
        breaker(bad_root / name)
        # the broken files come with new valid lines before the broken one: none of them may be written
        with pytest.raises(InvalidInput):
            load_dataset(graph, graph_settings, name, bad_root / name)
    # empty event files: a clear error, not a silent "0 events loaded"
    _write_gowalla(bad_root / "gowalla", [""])
    _write_hin(bad_root / "amazon-hin", {"user_item.dat": b""})
    _write_office(bad_root / "amazon-office", inter={})
    for name in DATASETS:
        with pytest.raises(InvalidInput) as err:
            load_dataset(graph, graph_settings, name, bad_root / name)
        assert "holds no events" in str(err.value)
    assert graph_counts(graph) == before
    # and the valid data can still be loaded again (all duplicates: nothing changes)
    for name in DATASETS:
        again = load_dataset(graph, graph_settings, name, tmp_path / name)
        assert again.accepted == 0 and again.duplicates > 0
    assert graph_counts(graph) == before


# -- event validation ---------------------------------------------------------------------------------------------------
SETTINGS = GraphSettings(pseudonym_key="k", embedding_dim=16)
FIELDS = ["event_id", "user_id", "type", "ts", "item_id", "query", "rating", "review", "item"]
valid_events = st.builds(
    lambda n, t, item: {
        "event_id": f"ev-{n}",
        "user_id": f"user-{n % 7}",
        "type": t,
        "item_id": item,
        "ts": NOW - n,
        **({"rating": 4} if t == "rate" else {}),
        **({"review": "fine", "rating": 5} if t == "review" else {}),
    },
    st.integers(0, 10**6),
    st.sampled_from(["view", "click", "add_to_cart", "purchase", "rate", "review"]),
    st.sampled_from(["item-1", "item-2", "Ω-3"]),
)
garbage_values = st.one_of(
    json_values,
    st.binary(max_size=10),
    st.tuples(st.integers()),
    st.just(object()),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=5000),
)
garbage_events = st.one_of(
    garbage_values,
    st.dictionaries(st.sampled_from(FIELDS + ["extra", ""]), garbage_values, max_size=8),
    st.builds(lambda ev, field, value: {**ev, field: value}, valid_events, st.sampled_from(FIELDS), garbage_values),
    st.builds(
        lambda ev, field: {k: v for k, v in ev.items() if k != field},
        valid_events,
        st.sampled_from(["event_id", "user_id", "type", "ts", "item_id"]),
    ),
)


@FUZZ
@given(tagged=st.lists(st.one_of(valid_events.map(lambda e: (True, e)), garbage_events.map(lambda e: (False, e))), max_size=12))
def test_validate_events_never_raises_and_keeps_the_valid(tagged) -> None:
    batch = [ev for _, ev in tagged]
    valid, rejected = validate_events(batch, SETTINGS, now=NOW)
    indexes = [i for i, _ in valid] + [r.index for r in rejected]
    assert sorted(indexes) == list(range(len(batch)))  # each event is either kept or rejected, once
    for r in rejected:
        assert isinstance(r.reason, str) and r.reason.strip() and "Traceback" not in r.reason
    kept = {i for i, _ in valid}
    assert {i for i, (ok, _) in enumerate(tagged) if ok} <= kept  # garbage next to them harms no valid event
    for _, ev in valid:  # and whatever is kept is sane
        assert math.isfinite(ev.ts) and 0 <= ev.ts <= NOW + SETTINGS.max_future_skew_s
        assert ev.event_id.strip() and ev.user_id.strip() and (ev.item_id or ev.query)
