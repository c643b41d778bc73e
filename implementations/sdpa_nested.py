"""Packed documents through PyTorch's scaled_dot_product_attention over nested jagged tensors (torch.nested,
layout torch.jagged): each document one entry of a batch of variable length, no padding and no mask.

The packed (B, H, N, D) tensors are viewed as one buffer of B·N tokens (B·N, H, D), cut at the documents'
offsets into a jagged tensor of shape (documents, j, H, D), and transposed to SDPA's (documents, H, j, D). On
CUDA PyTorch sends it to its flash or memory-efficient variable-length kernels (the one that ran is recorded);
its math backend, the only one on a CPU, takes no `is_causal` with jagged tensors, so causal packed cases run on
CUDA only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation, Unsupported, device_reasons, grouped_query_reasons, query_length_reasons
from .documents import DocLens, is_packed

_NO_KERNEL_MESSAGES = ("No viable backend", "No available kernel")


def document_offsets(doc_lens: DocLens, device: torch.device | str) -> torch.Tensor:
    """(documents + 1,) int64: where each document starts among the batch's B·N tokens, and where the last ends."""
    lengths = torch.tensor([length for lens in doc_lens for length in lens], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)]).to(device)


def as_jagged(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) packed -> a jagged (documents, H, j, D) nested tensor; differentiable."""
    batch, heads, seq_len, head_dim = x.shape
    tokens = x.transpose(1, 2).reshape(batch * seq_len, heads, head_dim)
    return torch.nested.nested_tensor_from_jagged(tokens, offsets).transpose(1, 2)


def from_jagged(out: torch.Tensor, batch: int) -> torch.Tensor:
    """The inverse of `as_jagged`: a jagged (documents, H, j, D) output -> (B, H, N, D)."""
    tokens = out.transpose(1, 2).values()
    return tokens.reshape(batch, -1, tokens.shape[-2], tokens.shape[-1]).transpose(1, 2)


class NestedSdpaAttention(Implementation):
    """SDPA over a jagged nested tensor of the documents (PyTorch's choice of variable-length kernel)."""

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._offsets: tuple[tuple, torch.Tensor] | None = None

    def supports(self, case) -> list[str]:
        if not is_packed(case):  # the one reason: what follows is about running documents
            return ["docs=fixed (supported: packed documents, --docs; with one per sequence it is sdpa)"]
        reasons = device_reasons(case, {"cpu", "cuda"}) + query_length_reasons(case, "documents are whole")
        reasons += grouped_query_reasons(case, "jagged SDPA is called with as many key/value heads as query heads")
        if case.device == "cpu" and case.causal:
            reasons.append("causal=True on a CPU (supported: causal=False; jagged SDPA's math backend takes no causal)")
        return reasons

    def _document_offsets(self, doc_lens: DocLens, device: torch.device) -> torch.Tensor:
        """The last packing's offsets, built on its first call (set-up, as a data loader would)."""
        key = (doc_lens, device)
        if self._offsets is None or self._offsets[0] != key:
            self._offsets = (key, document_offsets(doc_lens, device))
        return self._offsets[1]

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is None:
            raise ValueError(f"{self.name} runs packed documents: pass doc_lens")
        offsets = self._document_offsets(doc_lens, q.device)
        try:
            out = F.scaled_dot_product_attention(*(as_jagged(t, offsets) for t in (q, k, v)), is_causal=causal)
        except RuntimeError as error:
            if not any(message in str(error) for message in _NO_KERNEL_MESSAGES):
                raise
            raise Unsupported([f"jagged SDPA has no kernel for these inputs: {error}"]) from None
        return from_jagged(out, q.shape[0])

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        """The backend PyTorch's jagged SDPA picks (torch.nested._internal.sdpa, private: None where it moved)."""
        if doc_lens is None:
            return None
        try:
            from torch.nested._internal.sdpa import _select_sdp_backend
        except ImportError:
            return None
        offsets = self._document_offsets(doc_lens, q.device)
        jagged = [as_jagged(t.detach(), offsets) for t in (q, k, v)]
        choice = _select_sdp_backend(*jagged, None, 0.0, causal, False)
        return f"{choice.name.lower()} over {len(offsets) - 1} jagged documents"
