"""Add the local-inputs error to an existing results file's approximate rows, without timing anything.

An approximation's error against softmax attention on local inputs (expected.LocalErrors) depends on
the maths and the dtype, not on the timings beside it. Rows measured without it (an older version
of the local inputs, or a run cut short) get it here: each such row is appended again, unchanged
but for the `softmax_local_*` figures and `local_errors_run_id`, which names the header of the
amending run (its environment). Readers keep the later row of a case, so reports pick it up.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from implementations import Implementation

from ..case import Case, key_of_row
from ..measure import failures, stop_signals
from ..results.files import ResultsWriter
from . import runner
from .config import label_matches

LOCAL_COLUMNS = ("softmax_local_max_abs_err", "softmax_local_rel_rms_err", "softmax_local_note")


@dataclass
class Amendment:
    amended: int = 0
    already_there: int = 0
    cannot_run_here: Counter = field(default_factory=Counter)  # reason -> rows


def approximate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of approximate families that ran: those that can carry the figure."""
    return [row for row in rows if row.get("status") in ("ok", "mismatch") and row.get("family") not in (None, "exact")]


def rows_to_amend(rows: list[dict[str, Any]], redo: bool, impls: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Approximate rows that ran (of `impls` only, if given: labels or names), with neither the figure nor a
    note saying why it is missing (all of them with `redo`), ordered so that a forward case's rows (fwd,
    fwd+bwd; every implementation) come together."""
    chosen = [
        row
        for row in approximate_rows(rows)
        if (impls is None or label_matches(row["impl"], impls))
        and (redo or (row.get("softmax_local_rel_rms_err") is None and row.get("softmax_local_note") is None))
    ]
    forward = [replace(Case.from_row(row), mode="fwd") for row in chosen]
    first_seen: dict[Case, int] = {}
    for case in forward:
        first_seen.setdefault(case, len(first_seen))
    order = sorted(range(len(chosen)), key=lambda i: first_seen[forward[i]])
    return [chosen[i] for i in order]


DIED_NOTE = (
    "not measured: the process died while measuring it (no exception: killed by the operating system, "
    "or a crash in native code); --redo measures it again"
)


def amend_local_errors(
    rows: list[dict[str, Any]],
    writer: ResultsWriter,
    measure: Callable[[Implementation, Case], dict[str, Any]],
    build_impl: Callable[[str], Implementation],
    *,
    redo: bool = False,
    impls: Collection[str] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> Amendment:
    """Appends, through `writer`, each of a file's `rows` (of `impls`, if given) that lacks the figure, with
    `measure(impl, case)`'s. `on_start` is given each row before it is measured. Ctrl-C and SIGTERM stop it
    (KeyboardInterrupt); whatever else an implementation raises is noted in its row (stop_signals)."""
    with stop_signals.stop_signals_recorded():
        return _amend(rows, writer, measure, build_impl, redo, impls, on_start)


def _amend(
    rows: list[dict[str, Any]],
    writer: ResultsWriter,
    measure: Callable[[Implementation, Case], dict[str, Any]],
    build_impl: Callable[[str], Implementation],
    redo: bool,
    impls: Collection[str] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
) -> Amendment:
    todo = rows_to_amend(rows, redo, impls)
    result = Amendment(already_there=len(rows_to_amend(rows, True, impls)) - len(todo))
    built: dict[str, Implementation] = {}
    label_width = max([15, *(len(row["impl"]) for row in todo)])  # the case column lines up after the longest
    for number, row in enumerate(todo, 1):
        case = Case.from_row(row)
        if row["impl"] not in built:  # one instance per label: it keeps its per-shape state (masks, features)
            built[row["impl"]] = build_impl(row["impl"])
        impl = built[row["impl"]]
        reasons = impl.supports(case)
        if reasons:
            result.cannot_run_here["; ".join(reasons)] += 1
            continue
        if on_start:
            on_start(row)
        figures = measure(impl, case)
        if (stop := stop_signals.stop_asked()) is not None:  # the implementation swallowed Ctrl-C: stop all the same
            raise stop
        lost = "softmax_local_note" in figures and not failures.device_usable(case.device)
        if lost:  # written with its note, so that the next call does not run into the same failure
            figures["softmax_local_note"] += " [the device was unusable after this error; amending stopped here]"
        amended = {key: value for key, value in row.items() if key not in ("record", *LOCAL_COLUMNS)}
        writer.append({**amended, **figures, "local_errors_run_id": writer.run_id})
        result.amended += 1
        if lost:
            raise runner.DeviceLost({**amended, "reason": figures["softmax_local_note"]})
        figure = figures.get("softmax_local_rel_rms_err")
        outcome = f"{figure:.3g}" if figure is not None else figures.get("softmax_local_note", "?")
        position = f"{number:>{len(str(len(todo)))}}/{len(todo)}"
        print(
            f"[{position}] {row['impl']:<{label_width}} {case.label}  local-inputs error: {outcome}",
            file=sys.stderr,
            flush=True,
        )
    return result


def amend_died_row(
    rows: list[dict[str, Any]], died: dict[str, Any] | None, writer: ResultsWriter
) -> list[dict[str, Any]]:
    """`rows` with the row a previous amending process died in (if it still lacks the figure) noted as such and
    appended through `writer`, so that it is not measured again to die again."""
    if died is None:
        return rows
    key = key_of_row(died)
    pending = {key_of_row(row) for row in rows_to_amend(rows, False)}
    if key not in pending:
        return rows
    updated = []
    for row in rows:
        if key_of_row(row) == key:
            row = {
                **{k: v for k, v in row.items() if k not in ("record", *LOCAL_COLUMNS)},
                "softmax_local_note": DIED_NOTE,
                "local_errors_run_id": writer.run_id,
            }
            writer.append(row)
            print(
                f"the previous local-errors died while measuring {row['impl']} on {Case.from_row(row).label}: "
                "noted in its row",
                file=sys.stderr,
            )
        updated.append(row)
    return updated
