"""Reading a shop's file in bounded batches of rows: JSON Lines, CSV (pyarrow's streaming reader) or Parquet.

Each batch holds the rows as {our field: raw value} with their position in the file (JSON Lines: the line
number; CSV: the data row, the header not counted; Parquet: the row, from 1) and the rows that could not be read
at all (not UTF-8, not JSON, the wrong number of CSV fields) with a reason. A reader starts after a given
position, so a resumed import skips what is done without converting it.

pyarrow is imported inside the readers: the ``interest`` command must start fast.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from graphdb.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

# Not ".json": that is as often one JSON array as JSON Lines.
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
POSITION = {"jsonl": "line", "csv": "row", "parquet": "row"}
# A CSV field must fit in one block of pyarrow's reader; a larger one fails the file with pyarrow's message.
CSV_BLOCK_BYTES = 16 << 20


@dataclass
class RowBatch:
    positions: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)
    end: int = 0  # the last position this batch covers

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if not suffixes or suffixes[-1] not in FORMATS:
        raise InvalidInput(f"{path}: cannot tell the format from the name; expected one of {', '.join(FORMATS)} (or .gz)")
    return FORMATS[suffixes[-1]]


def _open(path: Path) -> "gzip.GzipFile | io.BufferedReader":
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist or is not a file")
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in the file for a progress bar (text formats: lines, a close estimate); None when unknown."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if path.suffix.lower() == ".gz":
        return None
    lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
    return max(lines - (1 if fmt == "csv" else 0), 0)


def read_rows(path: Path, fmt: str, sources: dict[str, str], *, batch_rows: int, after: int = 0) -> Iterator[RowBatch]:
    """Batches of about ``batch_rows`` rows after position ``after``; ``sources`` maps our fields to columns."""
    if fmt == "jsonl":
        return _jsonl(path, sources, batch_rows, after)
    if fmt == "csv":
        return _csv(path, sources, batch_rows, after)
    if fmt == "parquet":
        return _parquet(path, sources, batch_rows, after)
    raise InvalidInput(f"unknown format {fmt!r}; expected jsonl, csv or parquet")


def _jsonl(path: Path, sources: dict[str, str], batch_rows: int, after: int) -> Iterator[RowBatch]:
    batch = RowBatch()
    with _open(path) as f:
        for n, raw in enumerate(f, 1):
            if n <= after:
                continue
            batch.end = n
            line = raw.strip()
            if line:
                try:
                    obj = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    batch.bad.append((n, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
                except (json.JSONDecodeError, RecursionError) as exc:
                    batch.bad.append((n, f"not a JSON object ({exc})"))
                else:
                    if isinstance(obj, dict):
                        batch.positions.append(n)
                        batch.rows.append({ours: obj.get(shop) for ours, shop in sources.items()})
                    else:
                        batch.bad.append((n, f"expected a JSON object, got {type(obj).__name__}"))
            if len(batch) >= batch_rows:
                yield batch
                batch = RowBatch()
    if len(batch) or batch.end:
        yield batch


def _values(column: "pa.ChunkedArray[Any] | pa.Array[Any]") -> tuple[list[Any], dict[int, str]]:
    """A column as Python values; binary columns decoded as UTF-8 (bad cells reported by index)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_timestamp(kind):  # unix seconds, whatever the unit
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        return pc.divide(pc.cast(column.cast(pa.timestamp(kind.unit)), pa.int64()), float(per_second)).to_pylist(), {}
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        try:
            return column.cast(pa.string() if pa.types.is_binary(kind) else pa.large_string()).to_pylist(), {}
        except pa.ArrowInvalid:  # some cell is not UTF-8: decode one by one
            values: list[Any] = []
            bad: dict[int, str] = {}
            for i, raw in enumerate(column.to_pylist()):
                try:
                    values.append(None if raw is None else raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    values.append(None)
                    bad[i] = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
            return values, bad
    return column.to_pylist(), {}


def _table_batch(record_batch: "pa.RecordBatch", positions: list[int], sources: dict[str, str]) -> RowBatch:
    batch = RowBatch(end=positions[-1] if positions else 0)
    columns: dict[str, list[Any]] = {}
    bad: dict[int, str] = {}
    names = set(record_batch.schema.names)
    for ours, shop in sources.items():
        if shop in names:
            values, column_bad = _values(record_batch.column(shop))
            columns[ours] = values
            for i, reason in column_bad.items():
                bad.setdefault(i, f"{ours} (column {shop!r}): {reason}")
    fields = list(columns)
    for i, row in enumerate(zip(*columns.values())):
        if i in bad:
            batch.bad.append((positions[i], bad[i]))
        else:
            batch.positions.append(positions[i])
            batch.rows.append(dict(zip(fields, row)))
    return batch


def _header(path: Path) -> list[str]:
    with _open(path) as f:
        first = f.readline()
    try:
        return next(csv.reader(io.StringIO(first.decode("utf-8-sig"))), [])
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: the header line is not UTF-8 text") from exc


def _present(path: Path, names: list[str], sources: dict[str, str]) -> dict[str, str]:
    present = {ours: shop for ours, shop in sources.items() if shop in names}
    if not present:
        raise InvalidInput(
            f"{path}: none of the mapped columns ({', '.join(sorted(set(sources.values())))}) is in the "
            f"file, whose columns are {', '.join(names[:20])}"
        )
    return present


def _csv(path: Path, sources: dict[str, str], batch_rows: int, after: int) -> Iterator[RowBatch]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    present = _present(path, _header(path), sources)
    skipped: dict[int, str] = {}  # data row -> reason, filled by pyarrow while it parses a block

    def on_invalid(row: pacsv.InvalidRow) -> Literal["skip", "error"]:
        if row.number is None:  # not known when parsing in parallel, which use_threads=False rules out
            return "error"
        # row.number counts records from the header (1); ours count data rows.
        skipped[row.number - 1] = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        return "skip"

    try:
        reader = pacsv.open_csv(
            str(path),  # pyarrow decompresses .gz by the name
            read_options=pacsv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES),
            # Empty lines stay rows (rejected as such), so row numbers match the file's records.
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=True, ignore_empty_lines=False),
            # Binary: a cell that is not UTF-8 rejects its row instead of failing the whole block.
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in present.values()},
                include_columns=list(dict.fromkeys(present.values())),
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"{path}: cannot read as CSV: {exc}") from exc
    row = 0
    while True:
        try:
            record_batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise InvalidInput(f"{path}: after data row {row}: {exc}") from exc
        positions = []
        for _ in range(record_batch.num_rows):
            row += 1
            while row in skipped:
                row += 1
            positions.append(row)
        first = next((i for i, p in enumerate(positions) if p > after), len(positions))
        batch = _table_batch(record_batch.slice(first), positions[first:], present)
        batch.bad.extend((p, f"row: {reason}") for p, reason in skipped.items() if p > after and p <= row)
        for p in [p for p in skipped if p <= row]:
            del skipped[p]
        batch.end = max(batch.end, row)
        if len(batch):
            yield from _split(batch, batch_rows)
    for p, reason in sorted(skipped.items()):  # invalid rows after the last good one
        if p > after:
            yield RowBatch(bad=[(p, f"row: {reason}")], end=p)


def _split(batch: RowBatch, size: int) -> Iterator[RowBatch]:
    """A block's rows in pieces of ``size`` (pyarrow's blocks are bytes, not rows); positions stay in order."""
    if len(batch) <= size:
        batch.bad.sort()
        yield batch
        return
    items: list[tuple[int, dict[str, Any] | None, str]] = sorted(
        [(p, r, "") for p, r in zip(batch.positions, batch.rows)] + [(p, None, reason) for p, reason in batch.bad], key=lambda x: x[0]
    )
    for start in range(0, len(items), size):
        part = RowBatch(end=items[min(start + size, len(items)) - 1][0])
        for p, row, reason in items[start : start + size]:
            if row is None:
                part.bad.append((p, reason))
            else:
                part.positions.append(p)
                part.rows.append(row)
        if start + size >= len(items):
            part.end = batch.end
        yield part


def _parquet(path: Path, sources: dict[str, str], batch_rows: int, after: int) -> Iterator[RowBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InvalidInput(f"{path} does not exist or is not a file")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path}: cannot read as Parquet: {exc}") from exc
    present = _present(path, file.schema_arrow.names, sources)
    # Skip whole row groups that are done; the first one left is sliced.
    groups, row = [], 0
    for g in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(g).num_rows
        if row + size > after:
            groups.append(g)
        else:
            row += size
    if not groups:
        return
    for record_batch in file.iter_batches(batch_size=batch_rows, row_groups=groups, columns=list(dict.fromkeys(present.values()))):
        positions = list(range(row + 1, row + record_batch.num_rows + 1))
        row += record_batch.num_rows
        first = max(0, min(after - positions[0] + 1, len(positions))) if positions else 0
        if first < len(positions):
            yield _table_batch(record_batch.slice(first), positions[first:], present)
