"""`attnbench compare --chart PATH`: every case's current / baseline time, one row of points per implementation,
each coloured by its verdict, so a pull request shows at a glance what moved, for which implementation, how far
and how surely (a point outside the threshold band that is not red or green did not clear the noise)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.figure import Figure

from .regressions import Comparison

# Most telling first: where the axis is too short for all, a tick is kept only clear of those before it.
RATIO_TICKS = (1, 2, 0.5, 10, 0.1, 5, 0.2, 1.5, 0.67, 1.1, 0.9, 1.25, 0.8, 3, 0.33, 4, 0.25, 1.05, 0.95)
# The least distance between two ticks, as a share of the axis: about the width of a label such as 0.95.
MIN_TICK_GAP = 0.08
STATUS_CHANGES = ("regression", "improvement", "new", "dropped")  # verdicts of cases that ran on one side only
VERDICT_COLOURS = {"slower": "tab:red", "faster": "tab:green", "ambiguous": "tab:orange", "same": "0.55"}


def ratio_ticks(low: float, high: float) -> list[float]:
    """The ticks of RATIO_TICKS within [low, high] that fit without their labels running into each other, in order."""
    gap = MIN_TICK_GAP * math.log(high / low)
    kept: list[float] = []
    for tick in RATIO_TICKS:
        if low <= tick <= high and all(abs(math.log(tick / other)) >= gap for other in kept):
            kept.append(tick)
    return sorted(kept)


def ratio_chart(result: Comparison, threshold: float) -> Figure:
    """Points at their ratio on a log axis (the threshold band shaded); within an implementation's row they are
    spread in the order of the comparison's cases. Status changes (a new failure, a missing case) have no ratio:
    the title counts them."""
    timed = [row for row in result.rows if row.ratio is not None and row.verdict in VERDICT_COLOURS]
    impls = sorted({row.key["impl"] for row in timed}, reverse=True)  # first alphabetically at the top
    fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.45 * max(1, len(impls))), layout="constrained")
    for y, impl in enumerate(impls):
        mine = [row for row in timed if row.key["impl"] == impl]
        for i, row in enumerate(mine):
            offset = 0.0 if len(mine) == 1 else -0.3 + 0.6 * i / (len(mine) - 1)
            ax.scatter(
                row.ratio,
                y + offset,
                s=22,
                color=VERDICT_COLOURS[row.verdict],
                zorder=3,
                edgecolors="black" if row.verdict in ("slower", "faster") else "none",
                linewidths=0.6,
            )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvspan(1 / (1 + threshold), 1 + threshold, color="0.85", zorder=0, label=f"within ±{threshold:.0%}")
    ratios = [row.ratio for row in timed] or [1.0]
    spread = max(abs(math.log(r)) for r in ratios) * 1.15 + math.log(1 + threshold) * 1.5
    low, high = math.exp(-spread), math.exp(spread)
    ax.set_xlim(low, high)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(ratio_ticks(low, high)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_yticks(range(len(impls)), impls)
    ax.set_ylim(-0.7, len(impls) - 0.3)
    ax.set_xlabel("current / baseline median time (left: faster, right: slower)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    for verdict, colour in VERDICT_COLOURS.items():
        count = sum(row.verdict == verdict for row in timed)
        if count:
            ax.scatter([], [], s=22, color=colour, label=f"{verdict} ({count})")
    fig.legend(loc="outside right upper", fontsize=8, title="verdict", title_fontsize=8)
    changed = sum(row.verdict in STATUS_CHANGES for row in result.rows)
    note = f"\nnot drawn: {changed} cases whose status changed (new failures first in the text)" if changed else ""
    ax.set_title(f"Time per case, current / baseline · {len(timed)} cases timed in both{note}", fontsize=10)
    return fig
