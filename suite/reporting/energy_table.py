"""Rows measured with `run --energy`: the energy of one call and of one token, and the board's mean power."""

from __future__ import annotations

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import fmt_num
from .row_tables import per_row_table, rows_with

ENERGY = (
    "Each row's call ran back to back for about two seconds between two reads of the GPU's energy counter (NVML): "
    "the board's energy per call, everything it drew meanwhile included (a host-bound call pays for the GPU "
    "waiting), per token (queries, with a KV cache), and its mean power. The counter moves every 20–100 ms on "
    "recent GPUs, so figures within a few percent of each other are not told apart."
)


def energy_table(frame: pd.DataFrame) -> Table | None:
    """One line per row with an energy figure, or with a reason for having none although it was asked for."""
    rows = rows_with(frame, "energy_j", "energy_reason")
    if rows.empty:
        return None

    def cells(row: pd.Series, case: Case) -> list[str]:
        if pd.isna(row.energy_j):
            return ["–", "–", "–", str(row.energy_reason)[:200]]
        millijoules = row.energy_j * 1e3
        return [
            fmt_num(millijoules),
            fmt_num(millijoules / (case.batch * case.query_len)),
            fmt_num(pd.to_numeric(row.energy_power_w)),
            "",
        ]

    return per_row_table(rows, ["mJ per call", "mJ per token", "mean power (W)", "no figure: why"], cells)
