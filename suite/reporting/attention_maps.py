"""Exact softmax weights beside each approximate family's implied weights, for one small input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm, SymLogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from implementations import Implementation, get  # noqa: E402

MAP_LENGTH, MAP_HEAD_DIM = 512, 32
# Weights are drawn on a log scale down to this floor: a row's mass is spread over hundreds of keys, so
# on a linear scale everything but the diagonal looks black, and so do a window's cut and linear
# attention's long tail, which are what tells the approximations apart.
WEIGHT_FLOOR = 1e-4
# Differences are coloured on a log scale beyond ± this, linearly within: smaller ones are drawn near white.
DIFFERENCE_FLOOR = WEIGHT_FLOOR * 10


def map_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys with positional structure (sinusoids) plus noise, so exact attention is local
    and the maps show what each approximation keeps: random inputs alone would give featureless maps."""
    generator = torch.Generator().manual_seed(seed)
    position = torch.arange(MAP_LENGTH, dtype=torch.float64)[:, None]
    frequency = 1.0 / (64.0 ** (torch.arange(MAP_HEAD_DIM // 2, dtype=torch.float64) / (MAP_HEAD_DIM // 2)))
    angles = position * frequency / 8
    positional = torch.cat([angles.sin(), angles.cos()], dim=-1) * 2.0
    noise = lambda: 0.5 * torch.randn(MAP_LENGTH, MAP_HEAD_DIM, generator=generator, dtype=torch.float64)  # noqa: E731
    return (positional + noise())[None, None], (positional + noise())[None, None]


def too_small_to_see(difference: np.ndarray) -> str | None:
    """Words for a difference panel that the colour scale leaves blank (every difference inside its near-white
    linear band), so that a reader can tell "no difference" from "not drawn"; None where colour shows one."""
    largest = float(np.abs(difference).max(initial=0.0))
    if largest == 0.0:
        return "no difference:\nthe same weights"
    if largest < DIFFERENCE_FLOOR:
        return f"all |differences| < {DIFFERENCE_FLOOR:g}\n(largest {largest:.2g}):\ntoo small to show"
    return None


def _say_when_too_small_to_see(ax, difference: np.ndarray) -> None:
    words = too_small_to_see(difference)
    if words is not None:
        ax.text(
            0.5,
            0.5,
            words,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"},
        )


def attention_map_chart(approximations: list[Implementation], causal: bool = False, seed: int = 0) -> Figure:
    """Row 1: weights (exact first); row 2: approximate minus exact. One small seeded input."""
    q, k = map_inputs(seed)
    exact = get("reference").attention_weights(q, k, causal=causal)[0, 0].numpy()
    columns = 1 + len(approximations)
    fig, axes = plt.subplots(2, columns, figsize=(3.1 * columns + 1.2, 6.4), squeeze=False, layout="constrained")
    mask = "causal" if causal else "dense"
    fig.suptitle(f"Attention weights for one input (N={MAP_LENGTH}, D={MAP_HEAD_DIM}, {mask}): exact vs implied")
    weight_norm = LogNorm(vmin=WEIGHT_FLOOR, vmax=float(exact.max()))
    difference_norm = SymLogNorm(linthresh=DIFFERENCE_FLOOR, vmin=-float(exact.max()), vmax=float(exact.max()))
    image = axes[0, 0].imshow(np.clip(exact, WEIGHT_FLOOR, None), cmap="viridis", norm=weight_norm)
    axes[0, 0].set_title("exact softmax", fontsize=10)
    axes[1, 0].set_visible(False)
    diff_image = None
    for column, impl in enumerate(approximations, start=1):
        weights = impl.attention_weights(q, k, causal=causal)[0, 0].numpy()
        axes[0, column].imshow(np.clip(weights, WEIGHT_FLOOR, None), cmap="viridis", norm=weight_norm)
        axes[0, column].set_title(impl.label, fontsize=10)
        diff_image = axes[1, column].imshow(weights - exact, cmap="RdBu_r", norm=difference_norm)
        axes[1, column].set_title(f"{impl.label} − exact", fontsize=9)
        _say_when_too_small_to_see(axes[1, column], weights - exact)
    for ax in axes.flat:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes[0, :].tolist(), label=f"weight (log; {WEIGHT_FLOOR:g} and below alike)", shrink=0.8)
    if diff_image is not None:
        fig.colorbar(
            diff_image, ax=axes[1, 1:].tolist(), label=f"difference (log beyond ±{DIFFERENCE_FLOOR:g})", shrink=0.8
        )
    return fig
