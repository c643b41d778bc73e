"""Two machines side by side (an H100 against an H200, say): each implementation's speed on one over the
other, over the cases both measured. `attnbench compare` refuses that pairing, rightly, for regressions;
a report reader choosing hardware asks exactly that."""

from __future__ import annotations

import pandas as pd

from ..case import CASE_FIELDS
from .blocks import Table
from .data import MEASURED, fmt_num, geometric_mean, impl_order
from .shape_tables import SUMMARY_COLUMNS


def machines_in_order(frame: pd.DataFrame) -> list[str]:
    """The machines of the rows, in the order their files were named."""
    return list(dict.fromkeys(frame.gpu))


def machine_table(frame: pd.DataFrame, reference: str, other: str) -> Table | None:
    """One row per implementation, one column per mask × mode: the geometric mean over shared cases of the
    reference machine's median time over the other's (above 1: the other is faster), with the case count."""
    measured = frame[frame.status.isin(MEASURED) & frame.time_ms.notna()]
    joined = measured[measured.gpu == reference].merge(
        measured[measured.gpu == other], on=["impl", *CASE_FIELDS], suffixes=("_reference", "_other")
    )
    if joined.empty:
        return None
    cells: dict[str, dict[tuple[str, str], str]] = {}
    for (impl, causal, mode), part in joined.groupby(["impl", "causal", "mode"], sort=False):
        ratios = (part.time_ms_reference / part.time_ms_other).tolist()
        cells.setdefault(impl, {})[("causal" if causal else "dense", mode)] = (
            f"{fmt_num(geometric_mean(ratios), 3)}× ({len(ratios)} case{'s' * (len(ratios) != 1)})"
        )
    columns = [c for c in SUMMARY_COLUMNS if any(c in row for row in cells.values())]
    rows = [[impl, *(cells[impl].get(column, "") for column in columns)] for impl in impl_order(cells)]
    return Table(["implementation", *(" ".join(c) for c in columns)], rows)
