"""Whether a results file holds every row its last run planned. A run stopped early (Ctrl-C, SIGTERM,
`--time-limit`, a lost device) or whose process died leaves a file that reads like a finished one, its missing
rows absent rather than failed: `runs`, `report` and `compare` say so, from the plan's size in the run's header
(`planned_rows`) and the row a dead process left named beside the file (in_flight)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..case import Case, key_of_row
from ..results.files import ResultsFormatError, finished_keys, read
from .in_flight import InFlight


def shortfall(path: Path) -> str | None:
    """One line saying how the file falls short of its last run's plan, or None where it does not (or cannot be
    read: the readers say why)."""
    written: Counter = Counter()
    try:
        runs, rows = read(path, written)
    except ResultsFormatError:
        return None
    return _shortfall(Path(path), runs, rows, written)


def _shortfall(path: Path, runs: list[dict[str, Any]], rows: list[dict[str, Any]], written: Counter) -> str | None:
    in_flight = InFlight(path)
    if (pid := in_flight.running_elsewhere()) is not None:
        return f"being written: a run on this machine (pid {pid}) is measuring it now"
    timed = [run for run in runs if not run.get("amends")]
    planned = timed[-1].get("planned_rows") if timed else None
    done = written[timed[-1]["run_id"]] if timed else 0
    missing = planned - done if isinstance(planned, int) and planned > done else 0
    counted = f"{done} of the {planned} rows it planned ({missing} missing"
    resume = f"`attnbench run --resume --out {path}`"
    died = in_flight.died_in()
    if died is not None and key_of_row(died) not in finished_keys(rows):
        where = f"{died['impl']} on {Case.from_row(died).label}"
        after = f", after writing {counted})" if missing else ""
        return (
            f"incomplete: its run died while measuring {where}{after}; {resume} records that row and measures the rest"
        )
    if missing:
        return (
            f"incomplete: its last run wrote {counted}: stopped early by Ctrl-C, SIGTERM, --time-limit or a lost "
            f"device); {resume} measures the rest"
        )
    return None


def shortfall_notes(paths: Iterable[Path], side: str | None = None) -> list[str]:
    """`compare`'s notes: each of `paths` that falls short, named with its side (baseline, current) if given."""
    return [f"{f'the {side} ' if side else ''}{path}: {note}" for path in paths if (note := shortfall(path))]
