"""Textbook attention: materialize QKᵀ, softmax, multiply by V — O(N²) memory, in the input dtype.

`naive:compile=true` runs the same code through torch.compile: what Inductor makes of attention written by
hand (it fuses the scale, mask and softmax passes, and some PyTorch versions replace such patterns with a
fused SDPA kernel), beside the hand-written kernels a model could call instead.
"""

from __future__ import annotations

import torch

from .base import Implementation, expand_kv
from .compiling import COMPILE_OPTION, CompileOnRequest
from .documents import VisibleMaskCache


def _materialized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    k, v = expand_kv(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs @ v


class NaiveAttention(Implementation):
    """QKᵀ and PV in the input dtype; the softmax upcasts to float32 as most model code does."""

    options = {"compile": COMPILE_OPTION}

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._documents = VisibleMaskCache(hidden=True)
        self._attend = CompileOnRequest(_materialized, self.settings.get("compile", False))

    def _causal_mask(self, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
        """True where a key is hidden: the queries are the last q_len of kv_len positions. Built once per shape
        and device: mask construction is setup, not attention."""
        key = (q_len, kv_len, device)
        if key not in self._masks:
            self._masks.clear()
            self._masks[key] = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).triu(1 + kv_len - q_len)
        return self._masks[key]

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is not None:  # packed documents: the block-diagonal mask, materialized
            return self._attend(q, k, v, self._documents.get(doc_lens, causal, q.device))
        return self._attend(q, k, v, self._causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None)

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        return self._attend.backend
