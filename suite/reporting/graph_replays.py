"""Rows also timed as CUDA-graph replays (`run --cuda-graph`): the eager median beside the replayed one.

Where the two differ, the host's issuing of the kernels (Python, dispatch, launches) set the eager pace;
a program that captures the call in a graph, as serving stacks capture decoding, gets the replayed time.
"""
from __future__ import annotations

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import MEASURED, fmt_duration, fmt_num, impl_order

GRAPH_REPLAYS = (
    "Forward rows were also captured in a CUDA graph and its replays timed as the eager calls are (CUDA events "
    "after an L2 flush), the replayed output compared with the checked first call. The eager time includes "
    "issuing each call from Python; the replayed one is the GPU's work alone, what a program that captures "
    "the call (as serving stacks capture decoding) would see. ‡ marks rows whose eager calls were host-bound. "
    "A row that could not be captured says why (a synchronization with the host inside the call, memory a "
    "library allocates itself).")


def graph_replay_table(frame: pd.DataFrame) -> Table | None:
    """One line per row that was replayed, or tried and could not be: eager and replayed medians and their ratio."""
    if "graph_time_ms" not in frame or "graph_reason" not in frame:
        return None
    replayed = pd.to_numeric(frame.graph_time_ms, errors="coerce")
    # Rows of a mode or device that is never replayed say so in the results; here they would only be noise.
    tried = frame.status.isin(MEASURED) & (replayed.notna() | frame.graph_reason.fillna("").str.startswith(
        ("could not", "the replayed")))
    rows = frame[tried].assign(graph_time_ms=replayed[tried])
    if rows.empty:
        return None
    order = impl_order(rows.impl)
    lines = []
    for _, row in rows.iterrows():
        case = Case.from_row(row.to_dict())
        host_bound = " ‡" if row.get("host_bound") is True else ""
        if pd.notna(row.graph_time_ms):
            cells = [fmt_duration(row.graph_time_ms), f"{fmt_num(row.time_ms / row.graph_time_ms)}×", ""]
        else:
            cells = ["–", "–", str(row.graph_reason)[:200]]
        lines.append(((order.index(row.impl), case.label),
                      [row.impl, case.label, fmt_duration(row.time_ms) + host_bound, *cells]))
    lines.sort(key=lambda item: item[0])
    return Table(["implementation", "case", "eager median", "replayed median", "eager ÷ replayed", "not replayed: why"],
                 [cells for _, cells in lines])
