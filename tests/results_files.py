"""Editing a results file in a test: as if a run had stored other rows."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def rewrite_rows(path: Path, change: Callable[[dict], dict]) -> None:
    """Replaces each result row of `path` with `change(row)`; header lines stay as they are."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    Path(path).write_text("".join(json.dumps(change(r) if r["record"] == "result" else r) + "\n" for r in records))
