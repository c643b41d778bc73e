"""Editing a results file in a test: as if a run had stored other rows or run elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def _rewrite(path: Path, kind: str, change: Callable[[dict], dict]) -> None:
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    Path(path).write_text("".join(json.dumps(change(r) if r["record"] == kind else r) + "\n" for r in records))


def rewrite_rows(path: Path, change: Callable[[dict], dict]) -> None:
    """Replaces each result row of `path` with `change(row)`; header lines stay as they are."""
    _rewrite(path, "result", change)


def rewrite_headers(path: Path, change: Callable[[dict], dict]) -> None:
    """Replaces each run header of `path` with `change(header)`; result rows stay as they are."""
    _rewrite(path, "run", change)
