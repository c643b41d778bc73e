"""Peak memory beside the speed-ups: each implementation's memory over the baseline's, at the longest
length where both ran and measured it. O(N²) scores and O(N) kernels part most at the longest lengths,
and there a model either fits or does not."""

from __future__ import annotations

import pandas as pd

from .blocks import Table
from .data import MEASURED, fmt_bytes, fmt_length, fmt_num, impl_order
from .shape_tables import shape_tables


def _memory_cell(part: pd.DataFrame, impl: str, baseline: str) -> str:
    """E.g. `0.52× · 1.1 GiB at 64K`: memory over the baseline's at the longest length both measured."""
    measured = part[part.status.isin(MEASURED) & part.peak_mem_bytes.notna()]
    mine = measured[measured.impl == impl].set_index("seq_len").peak_mem_bytes
    base = measured[measured.impl == baseline].set_index("seq_len").peak_mem_bytes
    if impl == baseline:
        return f"{fmt_bytes(mine.iloc[-1])} at {fmt_length(int(mine.index[-1]))}" if len(mine) else ""
    both = sorted(set(mine.index) & set(base.index))
    if not both:
        return ""
    length = both[-1]
    if base[length] <= 0:
        return f"{fmt_bytes(mine[length])} at {fmt_length(int(length))}"
    return f"{fmt_num(mine[length] / base[length], 3)}× · {fmt_bytes(mine[length])} at {fmt_length(int(length))}"


def memory_summary(frame: pd.DataFrame, baseline: str) -> list[tuple[str, Table]]:
    """Per shape (machine, heads, head dim, dtype): one row per implementation (the baseline's own memory
    first), one column per mask × mode; shapes where the baseline measured no memory are left out."""
    return shape_tables(
        frame.sort_values("seq_len"),
        lambda rows: {impl: _memory_cell(rows, impl, baseline) for impl in impl_order(rows.impl)},
        first=baseline,
        min_rows=2,
    )
