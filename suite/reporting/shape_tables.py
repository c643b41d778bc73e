"""Summary tables per shape: one row per implementation, one column per mask × mode side by side.

The at-a-glance speed-ups, the memory beside them and the scaling exponents all read this way: a reader
compares an implementation across dense/causal and forward/backward on one line.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .blocks import Table
from .data import GROUP_KEYS, group_title, impl_order

# The mask × mode variants of one shape, in this order (those measured).
SUMMARY_COLUMNS = tuple((mask, mode) for mask in ("dense", "causal") for mode in ("fwd", "bwd", "fwd+bwd"))
SHAPE_KEYS = tuple(key for key in GROUP_KEYS if key not in ("causal", "mode"))


def shape_tables(
    frame: pd.DataFrame,
    cells_of: Callable[[pd.DataFrame], dict[str, str]],
    *,
    first: str | None = None,
    min_rows: int = 1,
) -> list[tuple[str, Table]]:
    """(title, table) per shape (machine, batching, heads, head dim, dtype). `cells_of(rows)` gets the rows of
    one mask × mode of a shape and returns each implementation's cell (empty ones are left blank). Rows in
    registry order, `first` at the top; shapes with fewer than `min_rows` rows are left out."""
    tables = []
    for shape, part in frame.groupby(list(SHAPE_KEYS), sort=True, dropna=False):
        cells: dict[str, dict[tuple[str, str], str]] = {}
        for (causal, mode), variant in part.groupby(["causal", "mode"], sort=False):
            column = ("causal" if causal else "dense", mode)
            for impl, cell in cells_of(variant).items():
                if cell:
                    cells.setdefault(impl, {})[column] = cell
        columns = [c for c in SUMMARY_COLUMNS if any(c in row for row in cells.values())]
        order = sorted(impl_order(cells), key=lambda impl: impl != first)
        rows = [[impl, *(cells[impl].get(column, "") for column in columns)] for impl in order]
        if rows and len(rows) >= min_rows:
            tables.append(
                (
                    group_title(dict(zip(SHAPE_KEYS, shape))),
                    Table(["implementation", *(" ".join(c) for c in columns)], rows),
                )
            )
    return tables
