"""A roofline: each measured row's TFLOP/s against its arithmetic intensity, under the roofs its GPU measured.

The intensity is the case's FLOPs (each implementation's own maths) over the bytes it must move at least
(inputs read once, outputs written once: suite/traffic.py), so it belongs to the algorithm, not to how a kernel
runs it. The roofs are the run's measured matmul peak and its measured copy bandwidth times the intensity;
a row can sit under neither. Exact attention's intensity grows with N (about N/2 FLOPs per byte forward) and
crosses the ridge near 512 tokens on an H100; linear attention's and Performer's stay near the head dim or the
feature count, under the bandwidth roof, so their distance from it, not from the matmul peak, is what they
leave on the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .charts import PEAK_LABEL, as_floats, finish_legend, log_axis, measured_ceiling, measured_peak_tflops
from .data import MEASURED, fmt_num, group_title, impl_order

_MARKERS = {64: "o", 128: "s"}  # by head dim; others ^


def intensity(rows: pd.DataFrame) -> pd.Series:
    """FLOPs per byte of unavoidable traffic: the row's TFLOP/s over its GB/s (both over the same median time)."""
    return pd.to_numeric(rows.tflops, errors="coerce") * 1e3 / pd.to_numeric(rows.gbytes_per_s, errors="coerce")


def roofline_chart(frame: pd.DataFrame, colour_of: dict, group: dict) -> Figure:
    """Log-log: x the arithmetic intensity, y the achieved TFLOP/s, one colour per implementation, one marker per
    head dim; on a GPU the roof min(measured peak, measured bandwidth × intensity) dashed."""
    import matplotlib.pyplot as plt

    ran = frame[
        frame.status.isin(MEASURED)
        & (pd.to_numeric(frame.tflops, errors="coerce") > 0)
        & (pd.to_numeric(frame.gbytes_per_s, errors="coerce") > 0)
    ]
    fig, ax = plt.subplots(figsize=(9.5, 5.0), layout="constrained")
    fig.suptitle(f"Roofline · {group_title(group)}")
    handles: dict = {}
    for label in impl_order(ran.impl):
        rows = ran[ran.impl == label]
        for head_dim, part in rows.groupby("head_dim"):
            dots = ax.scatter(
                as_floats(intensity(part)),
                as_floats(part.tflops),
                s=18,
                color=colour_of[label],
                marker=_MARKERS.get(int(head_dim), "^"),
                alpha=0.85,
                label=label,
            )
            handles.setdefault(label, dots)
    head_dims = sorted({int(d) for d in ran.head_dim})
    if len(head_dims) > 1:  # the markers tell head dims apart
        for head_dim in head_dims:
            handles[f"head dim {head_dim}"] = Line2D([], [], ls="", marker=_MARKERS.get(head_dim, "^"), color="0.45")
    peak, bandwidth = measured_peak_tflops(ran), measured_ceiling(ran, "gbytes_per_s", "bandwidth_fraction")
    if peak is not None and bandwidth is not None and not ran.empty:
        xs = as_floats(intensity(ran))
        x = np.logspace(np.log10(xs.min() / 2), np.log10(max(xs.max() * 2, 2 * peak * 1e3 / bandwidth)), 200)
        (roof,) = ax.plot(x, np.minimum(peak, bandwidth * x / 1e3), color="black", ls="--", lw=1.1)
        handles[f"{PEAK_LABEL} {fmt_num(peak)} TFLOP/s,\ncopy bandwidth {fmt_num(bandwidth)} GB/s"] = roof
    else:
        ax.set_title("no roofs: these runs measured no matmul peak and copy bandwidth (CPU runs do not)", fontsize=9)
    log_axis(ax.xaxis)
    log_axis(ax.yaxis)
    ax.set_xlabel("arithmetic intensity (FLOPs per byte moved at least)")
    ax.set_ylabel("TFLOP/s (its own FLOPs)")
    ax.grid(True, which="major", alpha=0.3)
    return finish_legend(fig, handles)
