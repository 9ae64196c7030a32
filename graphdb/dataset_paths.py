"""Where a named dataset's files are: the configured folder, then the shared one next to the checkout, then the
copy that ships with the repository (``data/``: amazon-office only), so a bare clone has data for its demo and tests.
"""

from __future__ import annotations

from pathlib import Path

from graphdb.errors import InvalidInput

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED = CHECKOUT.parent / "shared" / "datasets"
BUNDLED = CHECKOUT / "data"


def search_path(configured: Path | None) -> list[Path]:
    """The folders searched for datasets, in order."""
    return ([configured] if configured is not None else []) + [SHARED, BUNDLED]


def find_dataset(name: str, configured: Path | None = None) -> Path:
    """The folder holding dataset ``name``: the first of :func:`search_path` that has it."""
    places = search_path(configured)
    for root in places:
        if (root / name).is_dir():
            return root / name
    where = ", ".join(str(p) for p in places)
    raise InvalidInput(
        f"dataset {name!r} not found in {where}; set IG_DATASETS_DIR to the folder that holds "
        f"{name}/ (the repository ships amazon-office in data/)"
    )
