"""FLOP counts for attention, written once.

Per visible query-key pair and head-dim element, the forward does two multiply-adds: one for the
score qᵢ·kⱼ (QKᵀ) and one for accumulating pᵢⱼ·vⱼ (PV), so forward FLOPs = 4·B·H·pairs·D.
Dense attention has N² pairs; causal has exactly N(N+1)/2 (query i sees keys 0..i), which the common
"×0.5" convention approximates. The backward recomputes QKᵀ and does four more products
(dV = PᵀdO, dP = dOVᵀ, dQ = dS·K, dK = dSᵀQ): 5 products against the forward's 2, hence ×2.5.
Softmax and elementwise work are not counted, as in FlashAttention's and Triton's benchmarks.
"""
from __future__ import annotations

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attention_flops(batch: int, heads: int, visible_pairs: int, head_dim: int, mode: str) -> float:
    return 4.0 * batch * heads * visible_pairs * head_dim * MODE_FACTOR[mode]
