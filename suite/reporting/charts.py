"""Comparison charts (matplotlib, Agg): each function returns a Figure, so tests can inspect it.

Conventions: log2 sequence-length axes, one line per implementation in a colour fixed for the whole
report, the IQR as a band, out-of-memory points marked with ×, legends outside the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .data import MEASURED, fmt_length, fmt_num, group_title, impl_order  # noqa: E402

PANEL_KEYS = ("heads", "kv_heads", "head_dim")


def _panels(frame: pd.DataFrame, title: str, ylabel: str, *, logy: bool = False):
    keys = sorted({tuple(row) for row in frame[list(PANEL_KEYS)].itertuples(index=False)})
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.6 * columns + 2.2, 3.6 * rows), squeeze=False, layout="constrained", sharex=True
    )
    fig.suptitle(title)
    panels = []
    for ax, key in zip(axes.flat, keys):
        part = frame[(frame.heads == key[0]) & (frame.kv_heads == key[1]) & (frame.head_dim == key[2])]
        grouped = f" ({key[1]} key/value)" if key[1] != key[0] else ""
        ax.set_title(f"{key[0]} heads{grouped}, head dim {key[2]}", fontsize=10)
        ax.set_xscale("log", base=2)
        # Lengths named as the report's tables name them (1K, 64K), not as powers of two.
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: fmt_length(round(value))))
        if logy:
            log_axis(ax.yaxis)
        decoding = "queries" in part and part["queries"].notna().any()  # a fixed number of queries, keys grow
        ax.set_xlabel("keys in the cache (tokens)" if decoding else "sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        panels.append((ax, part))
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    return fig, panels


def as_floats(values) -> np.ndarray:
    """Plain float arrays for matplotlib (pandas' nullable and object columns warn or fail)."""
    return np.asarray(pd.Series(values).astype(float))


def log_axis(axis) -> None:
    """Log scale with plain tick labels (0.5, 20, 300) instead of 5×10⁻¹ notation; an axis spanning two
    decades or less labels some minor ticks too, or it would show one number or none."""
    (axis.axes.set_xscale if axis.axis_name == "x" else axis.axes.set_yscale)("log")
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(_SparseMinorLabels(plain))


class _SparseMinorLabels(ticker.Formatter):
    """Minor tick labels on a short log axis: 2× and 5× each power of ten within ~2 decades, every
    one within 0.7 of a decade; none on a longer axis, where the powers of ten suffice."""

    def __init__(self, plain: ticker.Formatter):
        self.plain = plain

    def __call__(self, value: float, position=None) -> str:
        low, high = sorted(self.axis.get_view_interval())
        if low <= 0 or value <= 0:
            return ""
        decades = math.log10(high / low)
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        if decades < 0.7 or (decades < 2.1 and mantissa in (2, 5)):
            return self.plain(value, position)
        return ""


OOM_LABEL = "out of memory (×)"
MISMATCH_LABEL = "accuracy mismatch (red ring)"
PEAK_LABEL = "measured matmul peak"


def finish_legend(fig: Figure, handles: dict) -> Figure:
    if handles:
        # implementations first, then the markers that qualify their points and the reference lines
        ordered = sorted(
            handles.items(), key=lambda item: item[0] in (OOM_LABEL, MISMATCH_LABEL) or item[0].startswith(PEAK_LABEL)
        )
        fig.legend(
            [h for _, h in ordered],
            [label for label, _ in ordered],
            loc="outside right center",
            fontsize=9,
            title="implementation",
        )
    return fig


def _mark_oom(ax, part: pd.DataFrame, label: str, colour, handles: dict) -> None:
    failed = part[part.status == "oom"]
    if failed.empty:
        return
    ymin = ax.get_ylim()[0] if ax.has_data() else 1.0
    marker = ax.scatter(
        as_floats(failed.seq_len), [ymin] * len(failed), marker="x", color=colour, s=60, zorder=5, clip_on=False
    )
    handles.setdefault(OOM_LABEL, marker)


def _mark_mismatch(ax, x, y, handles: dict) -> None:
    """Ring the points whose row failed its accuracy check: the speed or memory of a wrong result."""
    if len(x):
        ring = ax.scatter(x, y, s=90, facecolors="none", edgecolors="red", linewidths=1.2, zorder=6)
        handles.setdefault(MISMATCH_LABEL, ring)


def throughput_chart(frame: pd.DataFrame, colour_of: dict, group: dict, metric: str = "time_ms") -> Figure:
    """Median time (ms, with IQR band), TFLOP/s or GB/s against sequence length, per (heads, head dim). TFLOP/s
    count each implementation's own FLOPs (a sparse mask's visible pairs, linear attention's own maths): they
    say how well it uses the hardware, against this GPU's measured matmul peak (dotted), not how fast it is.
    GB/s are the least traffic a call must move (inputs read once, outputs written once) over its time, against
    the measured copy bandwidth (dotted): what bounds decoding, which reads the whole KV cache for a few queries
    (or, with `state=carried`, the state a recurrent decoder keeps in its place). TFLOP/s and GB/s go on a linear
    axis from zero, unless some line would lie flat along it (below a tenth of the top): then on a log axis."""
    ylabel = {
        "time_ms": "median time per call (ms)",
        "tflops": "TFLOP/s (its own FLOPs)",
        "gbytes_per_s": "GB/s (least traffic over time)",
    }[metric]
    title = {"time_ms": "Time", "tflops": "Throughput", "gbytes_per_s": "Bandwidth"}[metric]
    peak, unit, peak_label = {
        "tflops": (measured_peak_tflops(frame), "TFLOP/s", PEAK_LABEL),
        "gbytes_per_s": (
            measured_ceiling(frame, "gbytes_per_s", "bandwidth_fraction"),
            "GB/s",
            "measured copy bandwidth",
        ),
    }.get(metric, (None, "", ""))
    drawn = frame.loc[frame.status.isin(MEASURED), metric]
    logy = metric == "time_ms" or flattened_on_a_linear_axis(drawn, peak)
    fig, panels = _panels(frame, f"{title} · {group_title(group)}", ylabel, logy=logy)
    handles: dict = {}
    for ax, part in panels:
        for label in impl_order(part.impl):
            rows = part[(part.impl == label) & part.status.isin(MEASURED)].sort_values("seq_len")
            if logy:
                rows = rows[rows[metric] > 0]  # no place on a log axis
            if not rows.empty:
                x, y = as_floats(rows.seq_len), as_floats(rows[metric])
                (line,) = ax.plot(x, y, marker="o", ms=3, color=colour_of[label], label=label)
                handles.setdefault(label, line)
                wrong = (rows.status == "mismatch").to_numpy()
                _mark_mismatch(ax, x[wrong], y[wrong], handles)
                if metric == "time_ms":
                    half = as_floats(rows.time_iqr_ms.fillna(0)) / 2
                    ax.fill_between(x, y - half, y + half, color=colour_of[label], alpha=0.2)
        if metric != "time_ms":  # up to the ceiling: the distance to it is the point
            bottom, top = ax.get_ylim()
            if peak is not None:
                handles.setdefault(
                    f"{peak_label} ({fmt_num(peak)} {unit})", ax.axhline(peak, color="black", ls=":", lw=1.2)
                )
                top = max(top, peak * 1.05)
            ax.set_ylim(bottom if logy else 0, top)
        for label in impl_order(part.impl):
            _mark_oom(ax, part[part.impl == label], label, colour_of[label], handles)
    return finish_legend(fig, handles)


def flattened_on_a_linear_axis(values: pd.Series, ceiling: float | None = None) -> bool:
    """Whether a linear axis from zero would press some line flat against it: the smallest positive value below a
    tenth of the top (the largest value, or the ceiling drawn above it). Such values are drawn on a log axis."""
    positive = pd.to_numeric(values, errors="coerce")
    positive = positive[positive > 0]
    if positive.empty:
        return False
    top = max(float(positive.max()), ceiling or 0.0)
    return float(positive.min()) < top / 10


def measured_ceiling(frame: pd.DataFrame, achieved: str, fraction: str) -> float | None:
    """What the rows' runs measured of their GPU (a row's `achieved` figure over the `fraction` of the ceiling it
    reached); the median where the rows come from several runs, each of which measured its own; None without
    one (CPU runs measure none)."""
    if fraction not in frame or achieved not in frame:
        return None
    share, value = pd.to_numeric(frame[fraction], errors="coerce"), pd.to_numeric(frame[achieved], errors="coerce")
    usable = (share > 0) & value.notna()
    return float((value[usable] / share[usable]).median()) if usable.any() else None


def measured_peak_tflops(frame: pd.DataFrame) -> float | None:
    """The matmul peak the rows' runs measured for their dtype, in TFLOP/s."""
    return measured_ceiling(frame, "tflops", "peak_fraction")


def memory_chart(frame: pd.DataFrame, colour_of: dict, group: dict) -> Figure:
    """Peak memory against sequence length, log-log: quadratic and linear growth show as slopes 2 and 1."""
    unit, unit_bytes = memory_unit(frame.loc[frame.status.isin(MEASURED), "peak_mem_bytes"].max())
    fig, panels = _panels(
        frame, f"Peak memory · {group_title(group)}", f"peak memory beyond inputs ({unit})", logy=True
    )
    handles: dict = {}
    for ax, part in panels:
        for label in impl_order(part.impl):
            rows = part[(part.impl == label) & part.status.isin(MEASURED) & (part.peak_mem_bytes > 0)].sort_values(
                "seq_len"
            )
            if not rows.empty:
                x, amount = as_floats(rows.seq_len), as_floats(rows.peak_mem_bytes) / unit_bytes
                (line,) = ax.plot(x, amount, marker="o", ms=3, color=colour_of[label])
                handles.setdefault(label, line)
                wrong = (rows.status == "mismatch").to_numpy()
                _mark_mismatch(ax, x[wrong], amount[wrong], handles)
        for label in impl_order(part.impl):
            _mark_oom(ax, part[part.impl == label], label, colour_of[label], handles)
    return finish_legend(fig, handles)


def memory_unit(largest_bytes: float) -> tuple[str, int]:
    """GiB, MiB or KiB, whichever keeps the largest value at 1 or above (CPU smoke runs hold a few MiB)."""
    for unit, unit_bytes in (("GiB", 2**30), ("MiB", 2**20)):
        if largest_bytes >= unit_bytes:
            return unit, unit_bytes
    return "KiB", 2**10


def speedup_chart(frame: pd.DataFrame, colour_of: dict, group: dict, baseline: str) -> Figure:
    """Time of the baseline over each implementation's time (above 1: faster than the baseline). Log
    scale: 0.5× and 2× lie equally far from 1, and the crossover stays legible beside 80× speed-ups."""
    fig, panels = _panels(
        frame, f"Speed-up over {baseline} · {group_title(group)}", f"speed-up over {baseline} (×)", logy=True
    )
    handles: dict = {}
    for ax, part in panels:
        ok = part[part.status.isin(MEASURED)]
        base = ok[ok.impl == baseline].set_index("seq_len")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        for label in impl_order(ok.impl):
            if label == baseline:
                continue
            rows = ok[ok.impl == label].set_index("seq_len")
            ratio = (base.time_ms / rows.time_ms).dropna()
            if not ratio.empty:
                x, y = as_floats(ratio.index), as_floats(ratio)
                (line,) = ax.plot(x, y, marker="o", ms=3, color=colour_of[label])
                handles.setdefault(label, line)
                mismatched = set(rows.index[rows.status == "mismatch"]) | set(base.index[base.status == "mismatch"])
                wrong = np.array([length in mismatched for length in ratio.index], dtype=bool)
                _mark_mismatch(ax, x[wrong], y[wrong], handles)
        for label in impl_order(part.impl):
            if label != baseline:
                _mark_oom(ax, part[part.impl == label], label, colour_of[label], handles)
    return finish_legend(fig, handles)


def accuracy_speed_chart(frame: pd.DataFrame, colour_of: dict, case: dict) -> Figure:
    """Error against time at one shape: the trade-off between fidelity and speed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    mask = "causal" if case["causal"] else "dense"
    queries = f" Q={case['q_len']}" if case.get("q_len", case["seq_len"]) != case["seq_len"] else ""
    grouped = f" KV{case['kv_heads']}" if case.get("kv_heads", case["heads"]) != case["heads"] else ""
    ax.set_title(
        f"Accuracy vs speed · N={case['seq_len']}{queries} H{case['heads']}{grouped} D{case['head_dim']} "
        f"{case['dtype']} {mask} {case['mode']}",
        fontsize=10,
    )
    for axis in (ax.xaxis, ax.yaxis):
        log_axis(axis)  # plain labels: matplotlib's own label minor ticks as 3×10⁰ over each other
    ax.set_xlabel("median time per call (ms)")
    # Approximations on local inputs where measured: on i.i.d. inputs softmax attention is nearly uniform.
    local = frame.softmax_local_rel_rms_err.notna().any()
    softmax_column = "softmax_local_rel_rms_err" if local else "softmax_rel_rms_err"
    # Where approximations are drawn the label names their inputs: the i.i.d. figure ranks windows below
    # feature maps, the local one above. Exact kernels' rounding needs no such word.
    approximate = (frame.family != "exact").any()
    inputs = "\n(local inputs)" if local else "\n(i.i.d. inputs, softmax nearly uniform)" if approximate else ""
    ax.set_ylabel(f"relative RMS error vs exact softmax attention{inputs}")
    handles, without_figure = {}, []
    for _, row in frame.sort_values("time_ms").iterrows():
        # Exact kernels: their rounding against float64. An approximation's error against its own twin
        # would put it beside them, so one without the chart's figure is left out, and named.
        exact = row.family == "exact"
        err = row.rel_rms_err if exact else row[softmax_column]
        if pd.isna(err) or pd.isna(row.time_ms):
            if not exact and pd.notna(row.time_ms):
                without_figure.append(row.impl)
            continue
        handles[row.impl] = ax.scatter(row.time_ms, max(err, 1e-8), s=50, color=colour_of[row.impl], zorder=3)
    if without_figure:
        ax.annotate(
            f"not drawn (no such figure): {', '.join(without_figure)}",
            (0.01, 0.01),
            xycoords="axes fraction",
            fontsize=8,
            color="dimgrey",
        )
    ax.grid(True, which="major", alpha=0.3)
    return finish_legend(fig, handles)


CHART_FORMATS = ("png", "svg", "pdf")
# Without these, every SVG or PDF written differs from the last (creation date, random element ids): a
# regenerated report would show as changed where nothing did.
_UNDATED = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def stamp(fig: Figure, frame: pd.DataFrame) -> None:
    """A footer with what the chart's rows were measured with (software, attnbench commit), so that a chart
    shown on its own still says where its numbers come from."""
    software = sorted({str(v) for v in frame.get("software", pd.Series(dtype=object)).dropna()})
    commits = sorted(
        {
            str(v)[:12] + ("+dirty" if str(v).endswith("+dirty") else "")
            for v in frame.get("attnbench_commit", pd.Series(dtype=object)).dropna()
        }
    )
    parts = (["; ".join(software)] if software else []) + ([f"attnbench {', '.join(commits)}"] if commits else [])
    if not parts:
        return
    text = " · ".join(parts)
    footer_in = 0.22
    fig.get_layout_engine().set(rect=(0, footer_in / fig.get_figheight(), 1, 1 - footer_in / fig.get_figheight()))
    fig.text(0.005, 0.005, f"measured with {text}", fontsize=7, color="0.4", ha="left", va="bottom")


def save(fig: Figure, stem: Path, formats: tuple[str, ...] = ("png",)) -> None:
    """Writes `stem.<format>` for each format: PNG (80 dpi) for pages, SVG and PDF (vector) for print and slides."""
    for fmt in formats:
        save_to(fig, stem.with_suffix(f".{fmt}"), close=False)
    plt.close(fig)


def save_to(fig: Figure, path: Path, close: bool = True) -> None:
    """Writes the chart in the format its suffix names (one of CHART_FORMATS), the same bytes when regenerated."""
    with plt.rc_context({"svg.hashsalt": "attnbench"}):
        fig.savefig(path, dpi=80, metadata=_UNDATED[path.suffix.lstrip(".")])
    if close:
        plt.close(fig)
