"""One-time costs: each case's first call, timed apart from the measured calls (compilation, autotuning,
plan building, lazy set-up), per implementation and mode.

A program with one shape pays these once; one whose shapes change (new lengths, new batch sizes) pays
them again for each, so they can weigh in the choice of a variant as much as the steady-state time.
"""

from __future__ import annotations

import pandas as pd

from ..case import Case
from .blocks import Table
from .data import MEASURED, fmt_duration, fmt_num, impl_order


def first_call_table(frame: pd.DataFrame) -> Table | None:
    """Per (device, implementation, mode): the median and the largest first call, and the median first call
    over the timed median of the same row (how many steady-state calls one first call costs)."""
    ran = frame[frame.status.isin(MEASURED)]
    ran = ran[pd.to_numeric(ran.first_call_ms, errors="coerce").notna() & (ran.time_ms > 0)]
    if ran.empty:
        return None
    ran = ran.assign(first_call_ms=pd.to_numeric(ran.first_call_ms), calls_worth=lambda f: f.first_call_ms / f.time_ms)
    several_devices = ran.gpu.nunique() > 1
    order = impl_order(ran.impl)
    rows = []
    for (gpu, label, mode), part in ran.groupby(["gpu", "impl", "mode"], sort=False):
        largest = part.loc[part.first_call_ms.idxmax()]
        rows.append(
            (
                (gpu, order.index(label), mode),
                [
                    *([gpu] if several_devices else []),
                    label,
                    mode,
                    str(len(part)),
                    fmt_duration(part.first_call_ms.median()),
                    f"{fmt_duration(largest.first_call_ms)} ({Case.from_row(largest.to_dict()).label})",
                    f"{fmt_num(part.calls_worth.median())}×",
                ],
            )
        )
    rows.sort(key=lambda item: item[0])
    header = [
        *(["device"] if several_devices else []),
        "implementation",
        "mode",
        "rows",
        "first call: median",
        "first call: largest (case)",
        "first call ÷ timed median (median)",
    ]
    return Table(header, [cells for _, cells in rows])
