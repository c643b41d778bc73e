"""FLOPs of one case for one implementation: its forward count, its backward count, or both, as the mode times.

The per-family forward formulas and their derivations live in `implementations/flops.py`.
"""

from __future__ import annotations

from implementations import Implementation
from implementations.documents import mean_pairs
from implementations.flops import MODE_FACTOR, attention_pairs, softmax_attention_flops

from ..case import Case


def case_flops(impl: Implementation, case: Case) -> float:
    """The forward's FLOPs, the backward's, or both, as the case's mode times them."""
    forward = impl.forward_flops(case) if case.mode != "bwd" else 0.0
    return forward + (impl.backward_flops(case) if case.mode != "fwd" else 0.0)


def softmax_case_flops(case: Case) -> float:
    """What exact softmax attention costs on this case (used to bound the float64 reference)."""
    if case.packed and case.doc_lens is not None:
        pairs = mean_pairs(case.doc_lens, case.causal)
    else:
        pairs = attention_pairs(case.query_len, case.seq_len, case.causal)
    return softmax_attention_flops(case.batch, case.heads, pairs, case.head_dim) * MODE_FACTOR[case.mode]
