"""xformers on packed documents: the batch's B·N tokens as one sequence of batch 1, and a BlockDiagonalMask
(BlockDiagonalCausalMask where causal) built from the documents' lengths with `from_seqlens`, as xformers'
variable-length examples do; its kernels take the documents' offsets, no mask is materialized.

Grouped-query heads go in xformers' 5-D layout as xformers_memeff.py lays them out.
"""

from __future__ import annotations

import torch

from .documents import DocLens


def block_diagonal_bias(fmha, doc_lens: DocLens, causal: bool):
    """xformers' bias of the packing: one block per document, over the batch's sequences back to back."""
    lengths = [length for lens in doc_lens for length in lens]
    bias = fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
    return bias.from_seqlens(lengths)


def one_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q (B, H, N, D), k and v (B, KV, N, D) -> (1, B·N, H, D) and (1, B·N, KV, D), or with grouped heads
    (1, B·N, KV, G, D) each, keys and values expanded over G as a view."""
    query, key, value = (x.transpose(1, 2).reshape(1, -1, x.shape[1], x.shape[-1]) for x in (q, k, v))
    return grouped_heads(query, key, value, q.shape[1] // k.shape[1])


def grouped_heads(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heads at dim 2: query (…, H, D), keys and values (…, KV, D) -> with G = H / KV > 1, (…, KV, G, D) each,
    query head h = kv·G + g, keys and values expanded over g as a view."""
    if groups == 1:
        return query, key, value
    query = query.unflatten(2, (key.shape[2], groups))
    key, value = (x.unsqueeze(3).expand(*x.shape[:3], groups, x.shape[-1]) for x in (key, value))
    return query, key, value


def packed_output(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """xformers' (1, B·N, H, D) (or 5-D) output -> (B, H, N, D)."""
    batch, heads, seq_len, _ = q.shape
    return out.reshape(batch, seq_len, heads, out.shape[-1]).transpose(1, 2)


def probe_lengths(case) -> DocLens:
    """The case's documents, or before they are drawn (a plan) one per sequence: lengths for a dispatch probe."""
    return getattr(case, "doc_lens", None) or ((case.seq_len,),) * case.batch
