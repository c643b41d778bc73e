"""What a run would do, before it spends device time (`attnbench run --dry-run`).

Per implementation: the rows it would measure, those it would record as unsupported here (with
why), and those a resumed results file already holds; and how long the rows to measure took when earlier
runs on this machine model measured them. Nothing is measured or written.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from implementations import Implementation

from ..case import Case, key_of_row, row_key
from ..results.files import ResultsFormatError, read, recorded_machine

_REASON_CHARS = 160  # an unsupported reason is shortened to this in the plan; the real row keeps it whole


@dataclass
class ImplementationPlan:
    label: str
    to_measure: int = 0
    already_done: int = 0
    unsupported_cases: int = 0
    unsupported: Counter = field(default_factory=Counter)  # each reason -> the cases it applies to
    earlier_s: float = 0.0  # what the rows to measure took in earlier runs, where one measured them
    earlier_rows: int = 0
    earlier_files: set = field(default_factory=set)  # the files those times come from


@dataclass
class EarlierRows:
    """How long each (implementation, case) row took (`row_s`) in results files timed on one machine model."""

    seconds: dict[tuple, float] = field(default_factory=dict)
    file_of: dict[tuple, Path] = field(default_factory=dict)  # the file each row's time comes from

    @classmethod
    def read(cls, paths: Iterable[Path], machine: str) -> EarlierRows:
        """The newest file's row where several have one (by modification time); files that cannot be read, or
        were timed on another model, are passed over."""
        found = cls()
        for path in sorted({Path(p) for p in paths if Path(p).is_file()}, key=os.path.getmtime):
            if _first_machine(path) not in (machine, None):  # a file is timed on one model: skip reading it all
                continue
            try:
                runs, rows = read(path)
            except (ResultsFormatError, OSError):
                continue
            here = {run["run_id"] for run in runs if recorded_machine(run.get("environment", {})) == machine}
            timed = {
                key_of_row(row): row["row_s"]
                for row in rows
                if row.get("run_id") in here and isinstance(row.get("row_s"), (int, float))
            }
            found.seconds.update(timed)
            found.file_of.update(dict.fromkeys(timed, path))
        return found


def _first_machine(path: Path) -> str | None:
    """The model the first run header of `path` names, or None where the first line says nothing clear."""
    try:
        with open(path, encoding="utf-8") as lines:
            header = json.loads(lines.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict) or header.get("record") != "run" or header.get("amends"):
        return None
    return recorded_machine(header.get("environment") or {})


def plan_run(
    impls: list[Implementation], cases: list[Case], skip: set[tuple], earlier: EarlierRows | None = None
) -> list[ImplementationPlan]:
    plans = []
    for impl in impls:
        plan = ImplementationPlan(impl.label)
        for case in cases:
            if row_key(impl.label, case) in skip:
                plan.already_done += 1
                continue
            try:
                reasons = impl.supports(case)
            except Exception as error:  # noqa: BLE001 - the run itself would record this as the case's row
                reasons = [f"supports() raised {type(error).__name__}: {error}"]
            if reasons:
                plan.unsupported_cases += 1
                plan.unsupported.update(reasons)
            else:
                plan.to_measure += 1
                key = row_key(impl.label, case)
                if earlier and key in earlier.seconds:
                    plan.earlier_s += earlier.seconds[key]
                    plan.earlier_rows += 1
                    plan.earlier_files.add(earlier.file_of[key])
        plans.append(plan)
    return plans


def _shorten(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _earlier_cell(measure: int, known: int, seconds: float) -> str:
    if not measure or not known:
        return "–"
    return _duration(seconds) + ("" if known == measure else f" ({known} rows)")


def format_plan(plans: list[ImplementationPlan], cases: list[Case], device: str) -> str:
    width = max([len("implementation"), *(len(plan.label) for plan in plans)])
    lines = [
        f"dry run on {device}: {len(plans)} implementations x {len(cases)} cases; nothing measured or written",
        f"{'implementation':<{width}}  {'measure':>8}  {'unsupported':>11}  {'already in file':>15}  took before",
    ]
    for plan in plans:
        lines.append(
            f"{plan.label:<{width}}  {plan.to_measure:>8}  {plan.unsupported_cases:>11}  "
            f"{plan.already_done:>15}  {_earlier_cell(plan.to_measure, plan.earlier_rows, plan.earlier_s)}"
        )
    totals = [
        sum(plan.to_measure for plan in plans),
        sum(plan.unsupported_cases for plan in plans),
        sum(plan.already_done for plan in plans),
    ]
    known, seconds = sum(plan.earlier_rows for plan in plans), sum(plan.earlier_s for plan in plans)
    lines.append(
        f"{'total':<{width}}  {totals[0]:>8}  {totals[1]:>11}  {totals[2]:>15}  "
        f"{_earlier_cell(totals[0], known, seconds)}"
    )
    if totals[0]:
        lines.append(_estimate_line(totals[0], known, sorted(set().union(*(plan.earlier_files for plan in plans)))))
    unsupported = [(plan.label, reason, count) for plan in plans for reason, count in plan.unsupported.most_common()]
    if unsupported:
        lines.append("why not here (a case may have several reasons; its row records them all):")
        lines += [f"  {label} ({count}): {_shorten(reason)}" for label, reason, count in unsupported]
    return "\n".join(lines)


def _estimate_line(measure: int, known: int, files: list[Path]) -> str:
    """What `took before` rests on: earlier rows of the same implementation and case on this machine model
    (checks, reference, warm-up, timing and memory included; compilation too, unless caches on disk now hold it)."""
    if not known:
        return (
            "took before: no results file of this machine model (in results/, or --out) holds the time of any "
            "of these rows, so no estimate"
        )
    files = ", ".join(map(str, files))
    return (
        f"took before: {known} of the {measure} rows to measure were measured on this machine model, in {files}; "
        "the column sums their wall times"
        + ("" if known == measure else f", and the other {measure - known} rows have none")
    )


LARGE_PLAN_ROWS = 10_000  # a plan past this many rows, or past LONG_PLAN_S by earlier times, is announced
LONG_PLAN_S = 24 * 3600


def size_warning(keys: Iterable[tuple], earlier: Mapping[tuple, float]) -> str | None:
    """One line for a plan (the row keys to measure) larger than LARGE_PLAN_ROWS rows or, by what those of its rows
    that earlier runs on this machine model measured took then, longer than LONG_PLAN_S; None for a smaller one."""
    rows = known = 0
    seconds = 0.0
    for key in keys:
        rows += 1
        if key in earlier:
            known += 1
            seconds += earlier[key]
    estimate = seconds / known * rows if known else None
    if rows <= LARGE_PLAN_ROWS and (estimate is None or estimate <= LONG_PLAN_S):
        return None
    took = (
        f", about {_duration(estimate)} by what {known} of them took in earlier runs on this machine" if known else ""
    )
    return (
        f"this run plans {rows} rows{took}: --dry-run shows the plan, and --time-limit S stops a run cleanly between "
        "rows (continue it with --resume)"
    )
