"""How each implementation's time grows with sequence length, measured: the exponent of the power law that
fits a sequence's time (the row's median over its batch) over the longest lengths it ran.

Exact attention is O(N²) per sequence and its exponent tends to 2; windows, linear attention and random
features are O(N) and tend to 1 (decoding: a fixed number of queries against N keys is O(N) for exact attention
too). Below those limits fixed costs still weigh (launches, a state of fixed
size, a per-call set-up), so the exponent is taken where the lengths are longest. Whether an O(N) claim
holds on the hardware, and from where, is then a figure rather than an assumption.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .blocks import Table
from .data import MEASURED, fmt_length, impl_order
from .shape_tables import shape_tables

LONGEST_LENGTHS = 3  # the exponent is fitted over at most this many of the longest lengths measured


def scaling_exponent(rows: pd.DataFrame) -> tuple[float, int, int] | None:
    """(exponent, shortest, longest length fitted) for one implementation's rows of one group, or None where
    fewer than two lengths were measured. A least-squares line through log(time per sequence) against log(N)."""
    ran = rows[rows.status.isin(MEASURED) & (rows.time_ms > 0)]
    if ran.empty:
        return None
    per_sequence = (ran.time_ms / ran.batch).groupby(ran.seq_len).median().sort_index()
    per_sequence = per_sequence.iloc[-LONGEST_LENGTHS:]
    if len(per_sequence) < 2:
        return None
    x = np.log(per_sequence.index.to_numpy(dtype=float))
    y = np.log(per_sequence.to_numpy(dtype=float))
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, int(per_sequence.index[0]), int(per_sequence.index[-1])


def _cell(found: tuple[float, int, int]) -> str:
    slope, shortest, longest = found
    return f"{slope:.2f} ({fmt_length(shortest)}–{fmt_length(longest)})" if math.isfinite(slope) else ""


def scaling_tables(frame: pd.DataFrame) -> list[tuple[str, Table]]:
    """Per shape (machine, heads, head dim, dtype): one row per implementation, one column per mask × mode,
    each cell its exponent and the lengths it was fitted over."""

    def cells_of(rows: pd.DataFrame) -> dict[str, str]:
        found = {impl: scaling_exponent(rows[rows.impl == impl]) for impl in impl_order(rows.impl)}
        return {impl: _cell(fit) for impl, fit in found.items() if fit is not None}

    return shape_tables(frame, cells_of)
