"""`attnbench runs`: what results files hold (machine, dates, presets, software, rows by status, implementations),
to pick a baseline or a file to resume without opening them."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from . import naming
from .config import UsageError
from .reporting.data import fmt_wall_time
from .results import ResultsFormatError, read, recorded_machine, software_of
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
        "runs": len(timed_by), "amendments": len(runs) - len(timed_by),
        "rows": len(rows), "statuses": {status: statuses[status] for status in STATUSES if statuses[status]},
        "implementations": list(dict.fromkeys(row["impl"] for row in rows)),
        "row_seconds": round(sum(row_seconds), 1) if row_seconds else None,
    }


def _text(entry: dict[str, Any]) -> str:
    if "unreadable" in entry:
        return f"{entry['file']}\n  unreadable: {entry['unreadable']}"
    statuses = ", ".join(f"{count} {status}" for status, count in entry["statuses"].items()) or "none"
    runs = f"{entry['runs']} run{'s' * (entry['runs'] != 1)}" + (
        f" + {entry['amendments']} amendment{'s' * (entry['amendments'] != 1)}" if entry["amendments"] else "")
    took = f" · rows took {fmt_wall_time(entry['row_seconds'])}" if entry["row_seconds"] is not None else ""
    dates = entry["dates"]
    when = "undated" if not dates else dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return "\n".join([
        entry["file"],
        f"  {' / '.join(entry['machines']) or 'machine not recorded'} · {when}"
        f" · preset {', '.join(entry['presets']) or '–'} · {'; '.join(entry['software']) or 'software not recorded'}",
        f"  {entry['rows']} rows: {statuses} · {runs}{took}",
        f"  {len(entry['implementations'])} implementations: {', '.join(entry['implementations'])}",
    ])


def cmd_runs(args) -> int:
    paths = [Path(p) for p in args.results] if args.results else sorted(naming.RESULTS_DIR.glob("*.jsonl"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"runs: {missing[0]!r} is not a file")
    if not paths:
        raise UsageError(f"runs: no results files in {naming.RESULTS_DIR}/ (name some, or run `attnbench run` first)")
    entries = [describe_file(path) for path in paths]
    print(json.dumps(entries, indent=2) if args.format == "json" else "\n".join(map(_text, entries)))
    return 0
