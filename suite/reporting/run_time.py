"""What each implementation's rows cost the run that measured them (`row_s`: wall time, everything a row does),
so that a reader planning a run on a leased GPU or in a CI job sees where the time goes."""

from __future__ import annotations

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import fmt_num, fmt_wall_time, impl_order


def run_time_table(frame: pd.DataFrame) -> Table | None:
    """Per (device, implementation): rows, their summed wall time, its share of the device's, the longest row."""
    timed = frame.assign(row_s=pd.to_numeric(frame.get("row_s"), errors="coerce")).dropna(subset=["row_s"])
    if timed.empty:
        return None
    several_devices = timed.gpu.nunique() > 1
    order = impl_order(timed.impl)
    totals = timed.groupby("gpu", sort=False).row_s.sum()
    rows = []
    for (gpu, label), part in timed.groupby(["gpu", "impl"], sort=False):
        longest = part.loc[part.row_s.idxmax()]
        rows.append(
            (
                (gpu, order.index(label)),
                [
                    *([gpu] if several_devices else []),
                    label,
                    str(len(part)),
                    fmt_wall_time(part.row_s.sum()),
                    f"{fmt_num(100 * part.row_s.sum() / totals[gpu])}%" if totals[gpu] > 0 else "–",
                    f"{fmt_wall_time(longest.row_s)} ({Case.from_row(longest.to_dict()).label}, {longest.status})",
                ],
            )
        )
    rows.sort(key=lambda item: item[0])
    header = [
        *(["device"] if several_devices else []),
        "implementation",
        "rows",
        "wall time",
        "share",
        "longest row (case, status)",
    ]
    return Table(header, [cells for _, cells in rows])
