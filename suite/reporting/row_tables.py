"""Tables of one line per result row (implementation, case, then its figures), for the report's optional sections:
the rows that have a figure, or a reason for having none, in registry order."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import MEASURED, impl_order


def rows_with(
    frame: pd.DataFrame, figure: str, reason: str, reasons_shown: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Measured rows with a number in `figure` (as numbers) or a `reason` for none (only those that start with one of
    `reasons_shown`, if given: other reasons only say the measurement does not apply)."""
    if figure not in frame or reason not in frame:
        return frame.iloc[0:0]
    numbers = pd.to_numeric(frame[figure], errors="coerce")
    reasons = frame[reason].fillna("")
    why_not = reasons.str.startswith(reasons_shown) if reasons_shown else reasons != ""
    chosen = frame.status.isin(MEASURED) & (numbers.notna() | why_not)
    return frame[chosen].assign(**{figure: numbers[chosen]})


def per_row_table(rows: pd.DataFrame, headers: list[str], cells: Callable[[pd.Series, Case], list[str]]) -> Table:
    """One line per row: its implementation, its case, then `cells(row, case)` under `headers`."""
    order = impl_order(rows.impl)
    lines = []
    for _, row in rows.iterrows():
        case = Case.from_row(row.to_dict())
        lines.append(((order.index(row.impl), case.label), [row.impl, case.label, *cells(row, case)]))
    lines.sort(key=lambda item: item[0])
    return Table(["implementation", "case", *headers], [line for _, line in lines])
