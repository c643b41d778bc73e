"""FlexAttention block masks built a few block rows at a time.

`create_block_mask` evaluates the mask over the whole N × N grid at once; for a mask written with
integer arithmetic (block indices, distances) the temporaries are int64, 32 GiB each at 64K tokens,
and the call runs out of memory beside the case's tensors. This builds the same BlockMask (the
same partial and full blocks, in the same order) from row chunks of bounded size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

FLEX_BLOCK = 128  # FlexAttention's default block size, in tokens, for queries and keys
_MAX_ELEMENTS = 1 << 25  # mask elements evaluated at once (int64 temporaries of 256 MiB)

Visible = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (q_idx, kv_idx) -> bool, broadcasting


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) per block row: the selected key blocks first, in ascending order."""
    blocks = blocks.to(torch.int32)
    return blocks.sum(-1).to(torch.int32), torch.argsort(blocks, dim=-1, descending=True, stable=True).to(torch.int32)


def block_mask_by_rows(
    visible: Visible,
    seq_len: int,
    device: torch.device | str,
    max_elements: int | None = None,
    q_len: int | None = None,
):
    """The BlockMask of `visible` over q_len × seq_len (q_len: seq_len), with one batch and head dimension of 1.
    `visible` takes positions among the keys: the queries are the last q_len of them. max_elements bounds the
    mask elements evaluated at once (at least one block row is)."""
    q_len = q_len or seq_len
    offset = seq_len - q_len
    q_blocks, blocks = -(-q_len // FLEX_BLOCK), -(-seq_len // FLEX_BLOCK)
    padded = blocks * FLEX_BLOCK
    kv_idx = torch.arange(padded, device=device)
    rows_at_once = max(1, (max_elements or _MAX_ELEMENTS) // (FLEX_BLOCK * padded))
    full_area = FLEX_BLOCK * FLEX_BLOCK
    partial, full = [], []
    for first in range(0, q_blocks, rows_at_once):
        last = min(q_blocks, first + rows_at_once)
        q_idx = torch.arange(first * FLEX_BLOCK, last * FLEX_BLOCK, device=device)[:, None]
        # The padding past either length is never visible, so edge blocks are partial, as in create_block_mask.
        seen = visible(q_idx + offset, kv_idx[None, :]) & (q_idx < q_len) & (kv_idx[None, :] < seq_len)
        counts = seen.view(last - first, FLEX_BLOCK, blocks, FLEX_BLOCK).sum(dim=(1, 3))
        full.append(counts == full_area)
        partial.append((counts > 0) & (counts < full_area))

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(q_idx + offset, kv_idx)

    return from_block_flags(torch.cat(partial)[None, None], torch.cat(full)[None, None], mask_mod, (q_len, seq_len))


def from_block_flags(partial: torch.Tensor, full: torch.Tensor, mask_mod: Callable, seq_lengths: tuple[int, int]):
    """The BlockMask whose (batch, head, query block, key block) flags say which blocks are partly visible (mask_mod
    decides within them) and which are wholly visible."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_num_blocks, kv_indices = _ordered(partial)
    full_kv_num_blocks, full_kv_indices = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num_blocks,
        kv_indices,
        full_kv_num_blocks,
        full_kv_indices,
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=mask_mod,
        seq_lengths=seq_lengths,
    )
