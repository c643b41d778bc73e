"""Reading a drawn chart's tick labels in a test: which are shown, and which run into each other."""

from __future__ import annotations

from itertools import combinations

from matplotlib.figure import Figure


def shown_tick_labels(axis) -> list:
    """The label texts of `axis` that a reader sees: visible, not empty, at a tick within the axis's view."""
    low, high = sorted(axis.get_view_interval())
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [
        tick.label1
        for tick in ticks
        if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
    ]


def overlapping_tick_labels(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of tick labels on one axis of `fig` whose drawn boxes overlap (after drawing it)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(label.get_text(), label.get_window_extent(renderer)) for label in shown_tick_labels(axis)]
            pairs += [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]
    return pairs
