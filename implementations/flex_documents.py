"""FlexAttention on packed documents: a document mask_mod and its BlockMask, built once per packing.

The mask_mod keeps each query within its document (causal: up to its own position), reading the documents' ids
of its batch sequence, `ids[b, q_idx] == ids[b, kv_idx]`, as FlexAttention's document-masking examples do. Its
BlockMask has one row of blocks per batch sequence (each packs its own documents), built a few block rows at a
time as block_mask.py builds the others: create_block_mask would evaluate the whole B × N × N grid at once. Building
it is set-up, as a training loop builds it once per batch for all its layers: it happens outside the timed calls,
and the time it took is the row's setup_ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .block_mask import FLEX_BLOCK, from_block_flags
from .documents import DocLens, document_ids

_MAX_ELEMENTS = 1 << 25  # mask elements evaluated at once


def document_mask_mod(ids: torch.Tensor, causal: bool) -> Callable[..., torch.Tensor]:
    """mask_mod(b, h, q_idx, kv_idx) of packed documents whose ids (B, N) are `ids`."""
    last = ids.shape[-1] - 1

    def mask_mod(b, h, q_idx, kv_idx):
        # Clamped: positions past the length (a last partial block) are hidden by FlexAttention itself.
        same = ids[b, q_idx.clamp(max=last)] == ids[b, kv_idx.clamp(max=last)]
        return same & (kv_idx <= q_idx) if causal else same

    return mask_mod


def _sequence_blocks(ids: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool (query blocks, key blocks) of one packed sequence whose ids (N,) are `ids`."""
    seq_len = ids.shape[0]
    blocks = -(-seq_len // FLEX_BLOCK)
    padded = blocks * FLEX_BLOCK
    kv_idx = torch.arange(padded, device=ids.device)[None, :]
    kv_ids = ids[kv_idx.clamp(max=seq_len - 1)]
    rows_at_once = max(1, _MAX_ELEMENTS // (FLEX_BLOCK * padded))
    partial, full = [], []
    for first in range(0, blocks, rows_at_once):
        last = min(blocks, first + rows_at_once)
        q_idx = torch.arange(first * FLEX_BLOCK, last * FLEX_BLOCK, device=ids.device)[:, None]
        seen = (ids[q_idx.clamp(max=seq_len - 1)] == kv_ids) & (q_idx < seq_len) & (kv_idx < seq_len)
        if causal:
            seen &= kv_idx <= q_idx
        counts = seen.view(last - first, FLEX_BLOCK, blocks, FLEX_BLOCK).sum(dim=(1, 3))
        full.append(counts == FLEX_BLOCK * FLEX_BLOCK)
        partial.append((counts > 0) & (counts < FLEX_BLOCK * FLEX_BLOCK))
    return torch.cat(partial), torch.cat(full)


def document_block_mask(doc_lens: DocLens, causal: bool, device: torch.device | str):
    """FlexAttention's BlockMask of packed documents, one batch row per sequence and one for all heads."""
    ids = document_ids(doc_lens, device)
    rows = [_sequence_blocks(sequence, causal) for sequence in ids]
    partial = torch.stack([partial for partial, _ in rows])[:, None]
    full = torch.stack([full for _, full in rows])[:, None]
    return from_block_flags(partial, full, document_mask_mod(ids, causal), (ids.shape[-1], ids.shape[-1]))


class DocumentBlockMasks:
    """The last packing's BlockMask, and the milliseconds its building took (device work included)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._mask = None
        self.build_ms: float | None = None

    def get(self, doc_lens: DocLens, causal: bool, device: torch.device):
        key = (doc_lens, causal, device)
        if self._key != key:
            self._key = self._mask = None  # the old mask goes before the new one is built
            _synchronize(device)
            start = time.perf_counter()
            self._mask = document_block_mask(doc_lens, causal, device)
            _synchronize(device)
            self.build_ms, self._key = (time.perf_counter() - start) * 1e3, key
        return self._mask


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
