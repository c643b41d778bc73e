"""Block-sparse attention in the BigBird / Sparse Transformer spirit: local blocks plus global blocks.

The sequence is cut into blocks of `block` tokens (the last may be shorter); token i is in block
i // block. Query block a sees key block b iff any of:
  * |a − b| ≤ `local`        — its own block and `local` neighbouring blocks on each side;
  * b < `globals`            — the first `globals` blocks are global keys, seen by every query;
  * a < `globals`            — and global queries, which see every key.
With `causal=True` the token-level rule key ≤ query applies on top. There are no random blocks, so
the pattern is deterministic and the exact twin is the same masked softmax in float64.

Options: `block` (default 64), `local` (default 1), `globals` (default 1; 0 disables global blocks).
"""

from __future__ import annotations

from .base import Option, must_be_positive
from .masked import MaskedAttention


def _non_negative(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be a non-negative integer"
    return None


class BlockSparseAttention(MaskedAttention):
    options = {
        "block": Option(
            default=64, parse=int, check=must_be_positive, help="block: tokens per block, a positive integer"
        ),
        "local": Option(default=1, parse=int, check=_non_negative, help="local: neighbouring blocks each side, >= 0"),
        "globals": Option(default=1, parse=int, check=_non_negative, help="globals: leading global blocks, >= 0"),
    }
    # Its global blocks are the sequence's first: whether they are each document's first is another pattern.
    why_not_packed = "its blocks and global blocks are positions of the whole sequence, not of each document"

    def allowed(self, q_idx, kv_idx):
        block, local, globals_ = self.settings["block"], self.settings["local"], self.settings["globals"]
        q_block, kv_block = q_idx // block, kv_idx // block
        return ((q_block - kv_block).abs() <= local) | (kv_block < globals_) | (q_block < globals_)

    def candidate_keys(self, start, stop, seq_len):
        block, local, globals_ = self.settings["block"], self.settings["local"], self.settings["globals"]
        if start // block < globals_:
            return [(0, seq_len)]
        first, last = start // block - local, (stop - 1) // block + local
        return [(0, min(seq_len, globals_ * block)), (max(0, first * block), min(seq_len, (last + 1) * block))]
