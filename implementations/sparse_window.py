"""Sliding-window attention: query i sees key j iff |i − j| ≤ window (causal: 0 ≤ i − j ≤ window).

Option `window` (default 256): how many keys on each side of the query (one side when causal).
"""

from __future__ import annotations

from .base import Option, must_be_positive
from .masked import MaskedAttention


class SlidingWindowAttention(MaskedAttention):
    options = {
        "window": Option(
            default=256,
            parse=int,
            check=must_be_positive,
            help="window: keys each side of the query, a positive integer",
        )
    }

    def allowed(self, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= self.settings["window"]

    def candidate_keys(self, start, stop, seq_len):
        window = self.settings["window"]
        return [(max(0, start - window), min(seq_len, stop + window))]
