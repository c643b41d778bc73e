"""FLOPs of one case for one implementation: the family's forward count times the mode's factor.

The per-family forward formulas and their derivations live in `implementations/flops.py`.
"""
from __future__ import annotations

import inspect

from implementations import Implementation
from implementations.flops import MODE_FACTOR, attention_pairs, softmax_attention_flops

from ..case import Case


def case_flops(impl: Implementation, case: Case) -> float:
    # q_len only where it differs, so an implementation written before it existed serves the other cases; kv_heads
    # only to those that take it (grouped heads change only the linear families' count).
    differing = {"q_len": case.q_len} if case.q_len else {}
    if case.kv_heads and case.kv_heads != case.heads and "kv_heads" in inspect.signature(impl.forward_flops).parameters:
        differing["kv_heads"] = case.kv_heads
    forward = impl.forward_flops(case.batch, case.heads, case.seq_len, case.head_dim, case.causal, **differing)
    return forward * MODE_FACTOR[case.mode]


def softmax_case_flops(case: Case) -> float:
    """What exact softmax attention costs on this case (used to bound the float64 reference)."""
    pairs = attention_pairs(case.query_len, case.seq_len, case.causal)
    return softmax_attention_flops(case.batch, case.heads, pairs, case.head_dim) * MODE_FACTOR[case.mode]
