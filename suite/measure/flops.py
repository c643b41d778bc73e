"""FLOPs of one case for one implementation: the family's forward count times the mode's factor.

The per-family forward formulas and their derivations live in `implementations/flops.py`.
"""

from __future__ import annotations

from implementations import Implementation
from implementations.flops import MODE_FACTOR, attention_pairs, softmax_attention_flops

from ..case import Case


def case_flops(impl: Implementation, case: Case) -> float:
    return impl.forward_flops(case) * MODE_FACTOR[case.mode]


def softmax_case_flops(case: Case) -> float:
    """What exact softmax attention costs on this case (used to bound the float64 reference)."""
    pairs = attention_pairs(case.query_len, case.seq_len, case.causal)
    return softmax_attention_flops(case.batch, case.heads, pairs, case.head_dim) * MODE_FACTOR[case.mode]
