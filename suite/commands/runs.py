"""`attnbench runs`: what results files hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "runs",
        help="what results files hold: machine, dates, preset, software, rows by status, implementations, and "
        "whether a run fell short of its plan or died",
    )
    parser.add_argument("results", nargs="*", help="results files (default: every one in results/)")
    parser.add_argument("--format", default="text", choices=("text", "json"))
    parser.set_defaults(handler=handle)


def _text(entry: dict[str, Any]) -> str:
    from ..reporting.data import fmt_wall_time

    if "unreadable" in entry:
        return f"{entry['file']}\n  unreadable: {entry['unreadable']}"
    statuses = ", ".join(f"{count} {status}" for status, count in entry["statuses"].items()) or "none"
    runs = f"{entry['runs']} run{'s' * (entry['runs'] != 1)}" + (
        f" + {entry['amendments']} amendment{'s' * (entry['amendments'] != 1)}" if entry["amendments"] else ""
    )
    took = f" · rows took {fmt_wall_time(entry['row_seconds'])}" if entry["row_seconds"] is not None else ""
    dates = entry["dates"]
    when = "undated" if not dates else dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return "\n".join(
        [
            entry["file"],
            f"  {' / '.join(entry['machines']) or 'machine not recorded'} · {when}"
            f" · preset {', '.join(entry['presets']) or '–'}"
            f" · {'; '.join(entry['software']) or 'software not recorded'}",
            f"  {entry['rows']} rows: {statuses} · {runs}{took}",
            f"  {len(entry['implementations'])} implementations: {', '.join(entry['implementations'])}",
            *([f"  {entry['shortfall']}"] if entry.get("shortfall") else []),
        ]
    )


def handle(args: argparse.Namespace) -> int:
    from ..results import naming
    from ..results.inventory import describe_file
    from ..run.completeness import shortfall
    from ..run.config import UsageError

    paths = [Path(p) for p in args.results] if args.results else sorted(naming.RESULTS_DIR.glob("*.jsonl"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"runs: {missing[0]!r} is not a file")
    if not paths:
        raise UsageError(f"runs: no results files in {naming.RESULTS_DIR}/ (name some, or run `attnbench run` first)")
    entries = [{**describe_file(path), "shortfall": shortfall(path)} for path in paths]
    print(json.dumps(entries, indent=2) if args.format == "json" else "\n".join(map(_text, entries)))
    return 0
