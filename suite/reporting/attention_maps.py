"""Exact softmax weights beside each approximate family's implied weights, for one small input."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from implementations import Implementation, get  # noqa: E402

MAP_LENGTH, MAP_HEAD_DIM = 512, 32


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


def attention_map_chart(approximations: list[Implementation], causal: bool = False, seed: int = 0) -> Figure:
    """Row 1: weights (exact first); row 2: approximate minus exact. One small seeded input."""
    q, k = map_inputs(seed)
    exact = get("reference").attention_weights(q, k, causal=causal)[0, 0].numpy()
    columns = 1 + len(approximations)
    fig, axes = plt.subplots(2, columns, figsize=(3.1 * columns + 1.2, 6.4), squeeze=False, layout="constrained")
    mask = "causal" if causal else "dense"
    fig.suptitle(f"Attention weights for one input (N={MAP_LENGTH}, D={MAP_HEAD_DIM}, {mask}): exact vs implied")
    vmax = float(exact.max()) / 2  # saturate the few largest weights so the structure shows
    image = axes[0, 0].imshow(exact, cmap="viridis", vmin=0, vmax=vmax)
    axes[0, 0].set_title("exact softmax", fontsize=10)
    axes[1, 0].set_visible(False)
    diff_image = None
    for column, impl in enumerate(approximations, start=1):
        weights = impl.attention_weights(q, k, causal=causal)[0, 0].numpy()
        axes[0, column].imshow(weights, cmap="viridis", vmin=0, vmax=vmax)
        axes[0, column].set_title(impl.label, fontsize=10)
        diff_image = axes[1, column].imshow(weights - exact, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[1, column].set_title(f"{impl.label} − exact", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=axes[0, :].tolist(), label="weight", shrink=0.8)
    if diff_image is not None:
        fig.colorbar(diff_image, ax=axes[1, 1:].tolist(), label="difference", shrink=0.8)
    return fig
