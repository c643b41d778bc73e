"""Textbook attention: materialize QKᵀ, softmax, multiply by V — O(N²) memory, in the input dtype."""
from __future__ import annotations

import torch

from .base import Implementation, expand_kv


class NaiveAttention(Implementation):
    """QKᵀ and PV in the input dtype; the softmax upcasts to float32 as most model code does."""

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _causal_mask(self, seq_len: int, device: torch.device) -> torch.Tensor:
        # Built once per length and device: mask construction is setup, not attention.
        key = (seq_len, device)
        if key not in self._masks:
            self._masks.clear()
            self._masks[key] = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)
        return self._masks[key]

    def __call__(self, q, k, v, *, causal=False):
        k, v = expand_kv(q, k, v)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if causal:
            scores = scores.masked_fill(self._causal_mask(q.shape[-2], q.device), float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return probs @ v
