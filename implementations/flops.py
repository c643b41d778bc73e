"""Forward FLOPs of each attention family, written once with their derivations.

Softmax attention (dense, causal or any mask): per visible query-key pair and head-dim element the
forward does two multiply-adds — one for the score qᵢ·kⱼ (QKᵀ), one for accumulating pᵢⱼ·vⱼ (PV) —
so forward FLOPs = 4·B·H·pairs·D. Dense attention has N² pairs; causal exactly N(N+1)/2 (query i
sees keys 0..i), which the common "×0.5" convention approximates; a sparse mask counts its own
visible pairs, so its TFLOP/s is comparable with dense attention's. With Q queries, the last Q of N
positions (decoding against a KV cache), dense attention has Q·N pairs and causal Q·(N−Q) + Q(Q+1)/2
(query i, at position N−Q+i, sees N−Q+i+1 keys). Softmax and elementwise work are
not counted, as in FlashAttention's and Triton's benchmarks.

Linear attention with an F-dimensional feature map (F = D for elu+1, F = features for FAVOR+): the
maths is out_i = φ(q_i)ᵀ S / φ(q_i)ᵀ z with S = Σ_j φ(k_j) v_jᵀ (F×D) and z = Σ_j φ(k_j): building S
and z costs 2·N·F·(D+1), applying them 2·N·F·(D+1), so 4·B·H·N·F·(D+1) (with Q queries against N keys,
2·B·H·(N+Q)·F·(D+1)) — the same whether causal
(a running S) or not; chunked algorithms do extra work that is not counted. FAVOR+ adds the random
projections of queries and keys, 2·N·D·F each: 4·B·H·N·D·F. With KV key/value heads shared by H query heads,
S and z and the keys' projections belong to the KV heads: the key side counts KV, 2·B·(KV·N + H·Q)·F·(D+1)
(an implementation that repeats the keys per query head does extra work that is not counted).

Linformer with k projected keys: the projections E·K and F·V (E, F of shape k × N) cost 2·k·N·D each per
key/value head, 4·B·KV·N·k·D (with share_kv, E·K and E·V are still two products); the scores and the weighted
sum against the k projected keys cost 4·N·k·D per query head, 4·B·H·N·k·D: softmax attention's count with k
keys. k ≥ N is counted as it runs, k × N projections and N·k pairs. Its backward is counted as its own maths,
not by the convention below: attention's part is the convention's 2.5× (10·N·k·D per query head), and the
projections' backward is 1× their forward (dK = Eᵀ·d(EK), dV = Fᵀ·d(FV); E and F are fixed, no gradient):
B·N·k·D·(10·H + 4·KV), where the convention would count 10·H + 10·KV (27% more fwd+bwd where KV = H).

The backward of every other family is counted as 2.5× its forward (the convention of FlashAttention's
benchmarks: it recomputes QKᵀ and does four more products, 5 against the forward's 2).
"""

from __future__ import annotations

MODE_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def attention_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """Visible query-key pairs of dense or causal attention, queries being the last q_len of kv_len positions."""
    if not causal:
        return q_len * kv_len
    return q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2


def softmax_attention_flops(batch: int, heads: int, visible_pairs: int, head_dim: int) -> float:
    return 4.0 * batch * heads * visible_pairs * head_dim


def _key_and_query_rows(heads: int, seq_len: int, q_len: int | None, kv_heads: int | None) -> int:
    """Keys summed (per key/value head) plus queries (per query head), over all heads."""
    return (kv_heads or heads) * seq_len + heads * (q_len or seq_len)


def linear_attention_flops(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    features: int,
    q_len: int | None = None,
    kv_heads: int | None = None,
) -> float:
    return 2.0 * batch * _key_and_query_rows(heads, seq_len, q_len, kv_heads) * features * (head_dim + 1)


def random_feature_flops(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    features: int,
    q_len: int | None = None,
    kv_heads: int | None = None,
) -> float:
    return 2.0 * batch * _key_and_query_rows(heads, seq_len, q_len, kv_heads) * head_dim * features


def low_rank_attention_flops(
    batch: int, heads: int, seq_len: int, head_dim: int, projected: int, kv_heads: int | None = None
) -> float:
    projections = 4.0 * batch * (kv_heads or heads) * seq_len * projected * head_dim
    return projections + softmax_attention_flops(batch, heads, seq_len * projected, head_dim)


def low_rank_attention_backward_flops(
    batch: int, heads: int, seq_len: int, head_dim: int, projected: int, kv_heads: int | None = None
) -> float:
    """Attention's backward by the 2.5× convention; the fixed projections' backward is one product each."""
    projections = 4.0 * batch * (kv_heads or heads) * seq_len * projected * head_dim
    return projections + MODE_FACTOR["bwd"] * softmax_attention_flops(batch, heads, seq_len * projected, head_dim)
