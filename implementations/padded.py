"""Packed documents as a program without a variable-length kernel runs them: every document padded to the pack's
longest and the documents run as a dense batch through PyTorch's scaled_dot_product_attention.

Padding goes after each document's tokens. Causal, no query sees a later position, so the padding needs no mask
and SDPA's own causal kernels run; not causal, a key-padding mask hides it (a boolean mask, which fewer kernels
take). The FLOPs counted are still the pairs within documents, so TFLOP/s shows what the padding wastes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation, device_reasons, query_length_reasons
from .documents import DocLens, is_packed


def padded_layout(doc_lens: DocLens, seq_len: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(token index (documents, longest), real (documents, longest) bool): where each padded slot's token is among
    the batch's B·N tokens, and which slots hold one (the others index token 0, and are never seen)."""
    lengths = torch.tensor([length for lens in doc_lens for length in lens], dtype=torch.long)
    sequence_starts = torch.tensor(
        [index * seq_len for index, lens in enumerate(doc_lens) for _ in lens], dtype=torch.long
    )
    within = torch.cat([torch.cumsum(torch.tensor((0, *lens[:-1])), 0) for lens in doc_lens])
    slots = torch.arange(int(lengths.max()))
    real = slots[None, :] < lengths[:, None]
    index = torch.where(real, (sequence_starts + within)[:, None] + slots[None, :], 0)
    return index.to(device), real.to(device)


def pad_documents(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) packed -> (documents, H, longest, D) padded."""
    batch, heads, seq_len, head_dim = x.shape
    tokens = x.transpose(1, 2).reshape(batch * seq_len, heads, head_dim)
    return tokens[index].transpose(1, 2)


def unpad_documents(padded: torch.Tensor, real: torch.Tensor, batch: int) -> torch.Tensor:
    """(documents, H, longest, D) padded -> (B, H, N, D) packed: the real slots, in order, are the B·N tokens."""
    _, heads, _, head_dim = padded.shape
    tokens = padded.transpose(1, 2)[real]
    return tokens.reshape(batch, -1, heads, head_dim).transpose(1, 2)


class PaddedDocumentsAttention(Implementation):
    """SDPA (PyTorch's own backend choice) over a batch of documents padded to the longest."""

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._layout: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def supports(self, case) -> list[str]:
        reasons = device_reasons(case, {"cpu", "cuda"}) + query_length_reasons(case, "it pads whole documents")
        if not is_packed(case):
            reasons.append("docs=fixed (supported: packed documents, --docs; with one per sequence it is sdpa)")
        return reasons

    def _padding(self, doc_lens: DocLens, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The layout of the last packing, built on its first call (set-up, as a data loader would do it)."""
        key = (doc_lens, seq_len, device)
        if self._layout is None or self._layout[0] != key:
            self._layout = (key, padded_layout(doc_lens, seq_len, device))
        return self._layout[1]

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is None:
            raise ValueError(f"{self.name} runs packed documents: pass doc_lens")
        index, real = self._padding(doc_lens, q.shape[-2], q.device)
        mask = None if causal else real[:, None, None, :]  # keys that are padding are hidden
        out = F.scaled_dot_product_attention(
            *(pad_documents(t, index) for t in (q, k, v)),
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return unpad_documents(out, real, q.shape[0])

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        if doc_lens is None:
            return None
        index, real = self._padding(doc_lens, q.shape[-2], q.device)
        return f"sdpa over {index.shape[0]} documents padded to {index.shape[1]} tokens"
