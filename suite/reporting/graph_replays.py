"""Rows also timed as CUDA-graph replays (`run --cuda-graph`): the eager median beside the replayed one.

Where the two differ, the host's issuing of the kernels (Python, dispatch, launches) set the eager pace;
a program that captures the call in a graph, as serving stacks capture decoding, gets the replayed time.
"""

from __future__ import annotations

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import fmt_duration, fmt_num
from .row_tables import per_row_table, rows_with

GRAPH_REPLAYS = (
    "Forward rows were also captured in a CUDA graph and its replays timed as the eager calls are (CUDA events "
    "after an L2 flush), the replayed output compared with the checked first call. The eager time includes "
    "issuing each call from Python; the replayed one is the GPU's work alone, what a program that captures "
    "the call (as serving stacks capture decoding) would see. ‡ marks rows whose eager calls were host-bound. "
    "A row that could not be captured says why (a synchronization with the host inside the call, memory a "
    "library allocates itself)."
)


def graph_replay_table(frame: pd.DataFrame) -> Table | None:
    """One line per row that was replayed, or tried and could not be: eager and replayed medians and their ratio.
    Rows of a mode or device that is never replayed say so in the results; here they would only be noise."""
    rows = rows_with(frame, "graph_time_ms", "graph_reason", reasons_shown=("could not", "the replayed"))
    if rows.empty:
        return None

    def cells(row: pd.Series, case: Case) -> list[str]:
        eager = fmt_duration(row.time_ms) + (" ‡" if row.get("host_bound") is True else "")
        if pd.isna(row.graph_time_ms):
            return [eager, "–", "–", str(row.graph_reason)[:200]]
        return [eager, fmt_duration(row.graph_time_ms), f"{fmt_num(row.time_ms / row.graph_time_ms)}×", ""]

    return per_row_table(rows, ["eager median", "replayed median", "eager ÷ replayed", "not replayed: why"], cells)
