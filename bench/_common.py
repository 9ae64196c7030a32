"""Small helpers shared by benchmarks: the RESULT line and ``--out``."""

from __future__ import annotations

import json
from pathlib import Path


def emit_result(result: dict, out: Path | None = None) -> None:
    """Print ``RESULT {json}`` as the last line and, with ``out``, write the same JSON to that file."""
    text = json.dumps(result, sort_keys=False)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + text, flush=True)


def rounded(metrics: dict, digits: int = 4) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in metrics.items()}
