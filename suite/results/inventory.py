"""What a results file holds, in a few fields: machines, dates, presets, software, rows by status, implementations."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .files import ResultsFormatError, read, recorded_machine, software_of
from .schema import STATUSES


def describe_file(path: Path) -> dict[str, Any]:
    """One results file in a few fields; `unreadable` says why where it cannot be read."""
    try:
        runs, rows = read(path)
    except ResultsFormatError as error:
        return {"file": str(path), "unreadable": str(error)}
    timed_by = [run for run in runs if not run.get("amends")]
    environments = [run.get("environment", {}) for run in timed_by]
    statuses = Counter(row["status"] for row in rows)
    row_seconds = [row["row_s"] for row in rows if isinstance(row.get("row_s"), (int, float))]
    return {
        "file": str(path),
        "machines": sorted({m for m in map(recorded_machine, environments) if m}),
        "dates": sorted({str(env.get("recorded_at", ""))[:10] for env in environments} - {""}),
        "presets": sorted({str(run.get("preset")) for run in timed_by if run.get("preset")}),
        "software": sorted({s for s in map(software_of, environments) if s}),
        "runs": len(timed_by),
        "amendments": len(runs) - len(timed_by),
        "rows": len(rows),
        "statuses": {status: statuses[status] for status in STATUSES if statuses[status]},
        "implementations": list(dict.fromkeys(row["impl"] for row in rows)),
        "row_seconds": round(sum(row_seconds), 1) if row_seconds else None,
    }
