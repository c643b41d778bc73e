"""Where each implementation starts to beat a baseline, and its speed-up at every measured length.

"Faster from L" means: faster at L and at every longer length where both were measured, where
faster means a ratio of medians above 1 by more than the two rows' summed relative IQRs (a closer
ratio is a tie, marked ≈, as `attnbench compare` would call it "same"). A length where the baseline
could not run (out of memory, unsupported) but the implementation could counts in the
implementation's favour; one where the implementation could not run is shown with its status and
compares nothing. A ratio where either row failed its accuracy check is marked `!`: the speed of a
wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .blocks import Table
from .data import MEASURED, fmt_length, fmt_num, impl_order, relative_iqr
from .shape_tables import shape_tables


@dataclass
class Crossover:
    impl: str
    speedups: dict[int, float | str]  # seq_len -> baseline time / impl time, or why there is no ratio
    faster_from: int | None  # None: not faster at the longest length compared
    longest: int  # the longest length compared
    ties: set[int]  # lengths where the ratio is within the measurements' spread
    mismatched: set[int]  # lengths where it or the baseline disagreed with its float64 twin

    def describe(self) -> str:
        return f"never up to {self.longest}" if self.faster_from is None else str(self.faster_from)


def _status_by_length(part: pd.DataFrame, impl: str) -> dict[int, pd.Series]:
    rows = part[part.impl == impl]
    return {int(row.seq_len): row for _, row in rows.iterrows()}


def crossovers(part: pd.DataFrame, baseline: str) -> list[Crossover]:
    """One group of comparable cases (differing only in length and batch) -> one Crossover per other impl."""
    base = _status_by_length(part, baseline)
    found = []
    for impl in impl_order(part.impl):
        if impl == baseline:
            continue
        mine = _status_by_length(part, impl)
        speedups: dict[int, float | str] = {}
        wins: dict[int, bool] = {}
        ties: set[int] = set()
        mismatched: set[int] = set()
        for length in sorted(mine):
            row, other = mine[length], base.get(length)
            if row.status not in MEASURED:
                speedups[length] = row.status  # shown, but not a comparison of speed
            elif other is None:
                continue
            elif other.status not in MEASURED:
                speedups[length] = f"{baseline} {other.status}"
                wins[length] = True
            else:
                ratio = float(other.time_ms) / float(row.time_ms)
                noise = relative_iqr(row) + relative_iqr(other)
                speedups[length] = ratio
                wins[length] = ratio > 1 + noise
                if abs(ratio - 1) <= noise:
                    ties.add(length)
                if "mismatch" in (row.status, other.status):
                    mismatched.add(length)
        if not wins:
            continue  # nothing to compare: this implementation never ran here
        faster_from = None
        for length in sorted(wins, reverse=True):
            if not wins[length]:
                break
            faster_from = length
        found.append(Crossover(impl, speedups, faster_from, max(wins), ties, mismatched))
    return found


MISMATCH_MARK = "!"


def _ratio_cell(value: float | str | None, tie: bool, mismatch: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return f"{'≈' if tie else ''}{fmt_num(value, 3)}×{MISMATCH_MARK if mismatch else ''}"


def crossover_table(part: pd.DataFrame, baseline: str) -> Table | None:
    found = crossovers(part, baseline)
    if not found:
        return None
    lengths = sorted({length for c in found for length in c.speedups})
    rows = [
        [
            c.impl,
            c.describe(),
            *(_ratio_cell(c.speedups.get(length), length in c.ties, length in c.mismatched) for length in lengths),
        ]
        for c in found
    ]
    return Table(["implementation", f"faster than {baseline} from", *(str(length) for length in lengths)], rows)


def _summary_cell(found: Crossover) -> str:
    """E.g. `from 2K · 20× at 32K`, or `never · 0.93× at 16K`: the crossover and the longest length's ratio;
    marked `!` if any length's comparison involved an accuracy mismatch (the crossover rests on it too)."""
    start = "never" if found.faster_from is None else f"from {fmt_length(found.faster_from)}"
    at_longest = found.speedups[found.longest]
    ratio = at_longest if isinstance(at_longest, str) else _ratio_cell(at_longest, found.longest in found.ties)
    return f"{start} · {ratio} at {fmt_length(found.longest)}{MISMATCH_MARK if found.mismatched else ''}"


def crossover_summary(frame: pd.DataFrame, baseline: str) -> list[tuple[str, Table]]:
    """Per shape (GPU, heads, head dim, dtype): one row per implementation, one column per mask × mode."""
    return shape_tables(frame, lambda rows: {found.impl: _summary_cell(found) for found in crossovers(rows, baseline)})
