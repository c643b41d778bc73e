"""The fastest-exact-implementation tables as a chart: lengths down, head counts across, one panel per
mask × mode, each cell in the colour of the kernel that led there and labelled with its margin."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from . import charts  # noqa: F401 - selects the Agg backend before pyplot is imported
from .data import fmt_length, group_title
from .fastest import LeadGrid, grid_columns

_NOT_RUN = (0.93, 0.93, 0.93)


def _text_colour(rgb: tuple) -> str:
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "black" if luminance > 0.5 else "white"


def _cell_text(found) -> str:
    if len(found.kernels) > 1:
        return "≈"
    if found.margin is None:
        return "alone" if found.contenders == 1 else ""
    return f"{found.margin:.2g}×"


def fastest_map(group: dict, grid: LeadGrid, colour_of: dict[str, tuple]) -> Figure:
    """Colour: the fastest row's kernel (`sdpa` choosing cuDNN takes `sdpa-cudnn`'s colour, where that was
    measured); hatched with ≈ where another kernel was within the measurements' spread; otherwise the margin
    over the next kernel. Grey: no exact implementation ran correctly there."""
    import matplotlib.pyplot as plt

    columns = grid_columns(grid)
    lengths = sorted({(n, b) for n, b, _, _ in grid})
    heads = sorted({(h, kv) for _, _, h, kv in grid})
    panel_width = max(1.0 * len(heads), 1.8)  # a panel's title must fit above it
    title = f"Fastest exact implementation · {group_title(group)}"
    width = max(panel_width * len(columns) + 3.2, 0.09 * len(title))  # and the figure's title above them all
    fig, axes = plt.subplots(
        1, len(columns), figsize=(width, 0.42 * len(lengths) + 1.9), squeeze=False, layout="constrained", sharey=True
    )
    fig.suptitle(title)
    shown: dict[str, tuple] = {}
    for ax, column in zip(axes[0], columns):
        for i, (seq_len, batch) in enumerate(lengths):
            for j, (h, kv) in enumerate(heads):
                found = grid.get((seq_len, batch, h, kv), {}).get(column)
                if found is None:
                    ax.add_patch(Rectangle((j, i), 1, 1, facecolor=_NOT_RUN, edgecolor="white"))
                    continue
                name = found.kernels[0] if found.kernels[0] in colour_of else found.leaders[0].split(" (")[0]
                colour = colour_of.get(name, _NOT_RUN)[:3]
                shown[name] = colour
                ax.add_patch(
                    Rectangle(
                        (j, i),
                        1,
                        1,
                        facecolor=colour,
                        edgecolor="white",
                        hatch="///" if len(found.kernels) > 1 else None,
                    )
                )
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    _cell_text(found),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=_text_colour(colour),
                )
        ax.set_xlim(0, len(heads))
        ax.set_ylim(len(lengths), 0)
        ax.set_xticks(
            [j + 0.5 for j in range(len(heads))], [f"H{h}" + (f"/KV{kv}" if kv != h else "") for h, kv in heads]
        )
        ax.set_yticks([i + 0.5 for i in range(len(lengths))], [f"{fmt_length(n)} (B{b})" for n, b in lengths])
        ax.tick_params(length=0)
        ax.set_title(" ".join(column), fontsize=10)
        for side in ax.spines.values():
            side.set_visible(False)
    decoding = isinstance(group.get("queries"), str)  # a fixed number of queries against the cache's keys
    axes[0][0].set_ylabel("keys in the cache (batch)" if decoding else "sequence length (batch)")
    handles = [Patch(facecolor=colour, label=name) for name, colour in shown.items()]
    fig.legend(
        handles=handles, loc="outside right center", fontsize=8, frameon=False, title="fastest kernel", title_fontsize=8
    )
    return fig
