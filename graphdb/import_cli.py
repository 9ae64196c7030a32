"""``interest graph import``: the command around graphdb.importer (progress bar, summary).

Only typer and rich's console at the top: ``interest --help`` stays fast; the importer (pyarrow, the driver) and
the progress bar are imported when the command runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

    from graphdb.importer import ImportReport

console = Console()


def rate_progress(label: str, console: Console) -> Progress:
    """A bar with done/total, the rate (a ``rate`` field the caller updates) and the time left: loads and imports."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console
    )


def _summary(report: "ImportReport") -> None:
    from rich.table import Table

    t = report.totals
    rate = report.read_now / report.elapsed_s if report.elapsed_s > 0 else 0.0
    table = Table(title=f"{report.kind}: {report.path}", show_header=False)
    table.add_row("rows read", f"{t.read:,}" + (f" (resumed after {report.resumed_from:,})" if report.resumed_from else ""))
    table.add_row("stored", f"{t.stored:,}")
    table.add_row("duplicates" if report.kind == "events" else "unchanged or repeated", f"{t.duplicates:,}")
    table.add_row("rejected", f"{sum(t.rejected.values()):,}")
    for kind, n in t.rejected.most_common():
        table.add_row(f"  {kind}", f"{n:,}")
    table.add_row("this run", f"{report.read_now:,} rows in {report.elapsed_s:.1f} s ({rate:,.0f} rows/s)")
    table.add_row("rejects file", str(report.rejects))
    console.print(table)


def graph_import(
    events: Optional[Path] = typer.Option(None, help="behaviour events: .jsonl, .csv or .parquet (.gz for text)"),
    catalogue: Optional[Path] = typer.Option(
        None, help="items (id, title, description, brand, category path); imported before the events"
    ),
    mapping: Optional[Path] = typer.Option(
        None, "--map", help="YAML: events/catalogue sections with columns (SHOP: OURS), behaviours, timestamp"
    ),
    column: list[str] = typer.Option(
        [], "--column", help="SHOP=OURS for the event file, repeatable (event_id user_id type item_id query ts rating review)"
    ),
    item_column: list[str] = typer.Option(
        [], "--item-column", help="SHOP=OURS for the catalogue (id title description brand categories)"
    ),
    behaviour: list[str] = typer.Option(
        [], "--behaviour", help="SHOP=OURS behaviour name, repeatable (view click add_to_cart purchase rate review search)"
    ),
    event_type: Optional[str] = typer.Option(None, "--type", help="the behaviour of every row, for a file without one"),
    timestamp: Optional[str] = typer.Option(None, help="auto (default), unix, unix_ms or iso"),
    rejects_dir: Optional[Path] = typer.Option(None, help="where rejects and checkpoints go (default: beside each input)"),
    restart: bool = typer.Option(False, help="ignore a checkpoint and read the file from the start"),
) -> None:
    """Import your shop's files: rejects to FILE.rejects.jsonl, resumable, progress and a summary."""

    from graphdb.columns import load_mapping
    from graphdb.driver import connect
    from graphdb.errors import InterestError
    from graphdb.importer import default_rejects, import_catalogue, import_events, total_rows
    from graphdb.schema import migrate
    from graphdb.settings import GraphSettings, Neo4jSettings

    if events is None and catalogue is None:
        raise typer.BadParameter("give --events FILE, --catalogue FILE or both")
    gs = GraphSettings()
    try:
        spec = load_mapping(
            mapping, event_columns=column, item_columns=item_column, behaviours=behaviour, behaviour=event_type, timestamp=timestamp
        )
        with connect(Neo4jSettings()) as driver:
            migrate(driver, gs)
            for kind, path in (("catalogue", catalogue), ("events", events)):
                if path is None:
                    continue
                rejects = rejects_dir / default_rejects(path).name if rejects_dir else None
                started = time.monotonic()
                with rate_progress(f"{kind} {path.name}", console) as bar:
                    task = bar.add_task(kind, total=total_rows(path), rate="")

                    def advance(rows: int, stored: int) -> None:
                        bar.advance(task, rows)
                        done = bar.tasks[task].completed
                        bar.update(task, rate=f"{done / max(time.monotonic() - started, 1e-9):,.0f} rows/s")

                    if kind == "catalogue":
                        report = import_catalogue(driver, gs, path, spec.catalogue, rejects=rejects, restart=restart, progress=advance)
                    else:
                        report = import_events(driver, gs, path, spec.events, rejects=rejects, restart=restart, progress=advance)
                    if report.resumed_from:
                        bar.update(task, completed=report.totals.read)
                _summary(report)
    except InterestError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
