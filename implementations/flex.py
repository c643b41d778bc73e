"""PyTorch's FlexAttention: the compiled call that the sparse families share, and `flex`, which runs it on
plain softmax attention.

`flex` is exact attention through FlexAttention, unmasked (dense) or with a causal block mask, compiled
once per shape. Against `sdpa-flash` and `sdpa-cudnn` it shows what FlexAttention's generality costs on
the maths the hand-written kernels were written for; against `sparse-window` and `sparse-block`, which
run the same kernel with their masks, it shows what their masks alone gain.

FlexAttention has no backward on a CPU, and compiling it for a CPU takes tens of seconds per shape, so
`flex` runs on CUDA only; `FlexCall(compile_it=False)` runs the same call eagerly (unfused, the scores
materialized), which is how its masks are tested on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Implementation, device_reasons
from .block_mask import Visible, block_mask_by_rows
from .compiling import compiled
from .flex_documents import DocumentBlockMasks


def flex_reasons(case) -> list[str]:
    """Why FlexAttention cannot run `case` on its device, where it is CUDA (empty otherwise)."""
    if case.device != "cuda":
        return []
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return [f"FlexAttention is not in this PyTorch ({torch.__version__}; needs >= 2.5)"]
    return []


class FlexCall:
    """flex_attention, compiled on the first call (one graph per shape), with the block mask of the shape
    it last ran kept (building one costs more than a call at long lengths; one shape at a time keeps the
    memory bounded)."""

    def __init__(self, compile_it: bool = True):
        self.compile_it = compile_it
        self._call = None
        self._block_masks: dict[tuple, Any] = {}

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: Visible | None, mask_key: tuple = ()
    ) -> torch.Tensor:
        """`visible(q_idx, kv_idx)`: which keys each query sees (None: all of them), in positions among the keys
        (the queries are the last ones); `mask_key` names it among the masks this caller uses (the block mask is
        also keyed by the lengths and device)."""
        block_mask = None
        if visible is not None:
            key = (q.shape[-2], k.shape[-2], q.device, *mask_key)
            if key not in self._block_masks:
                self._block_masks = {key: block_mask_by_rows(visible, k.shape[-2], q.device, q_len=q.shape[-2])}
            block_mask = self._block_masks[key]
        return self.with_block_mask(q, k, v, block_mask)

    def with_block_mask(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
        """flex_attention with a BlockMask the caller built (None: no mask)."""
        from torch.nn.attention.flex_attention import flex_attention

        if self._call is None:
            self._call = compiled(flex_attention) if self.compile_it else flex_attention
        return self._call(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def _causal(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return kv_idx <= q_idx


class FlexAttention(Implementation):
    """Softmax attention through compiled FlexAttention: no mask, or a causal block mask."""

    def __init__(self, name: str, **options: Any):
        super().__init__(name, **options)
        self._flex = FlexCall()
        self._documents = DocumentBlockMasks()

    def supports(self, case) -> list[str]:
        reasons = device_reasons(case, {"cuda"})
        return reasons or flex_reasons(case)

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is not None:  # packed documents: the document mask_mod's block mask, built once per packing
            return self._flex.with_block_mask(q, k, v, self._documents.get(doc_lens, causal, q.device))
        return self._flex(q, k, v, _causal if causal else None, mask_key=("causal",))

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        return "flex_attention (compiled)" if doc_lens is None else "flex_attention (compiled), document block mask"

    def setup_ms(self) -> float | None:
        return self._documents.build_ms
