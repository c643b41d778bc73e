"""The memory traffic no implementation can avoid, so rows can say how close a kernel is to memory-bound.

Whatever it does inside, an attention call must read its inputs from device memory once and write
its outputs once; anything beyond (materialized scores, feature maps, running states, dtype copies)
is extra traffic. Per case, in elements of the input dtype:

    fwd       read q, k, v; write out                    (2·H + 2·KV)·B·N·D
    bwd       read q, k, v, dout; write dq, dk, dv       (3·H + 4·KV)·B·N·D
    fwd+bwd   read q, k, v, dout; write out, dq, dk, dv  (4·H + 4·KV)·B·N·D

with H query heads and KV key/value heads; with fewer queries than keys (Q), the query-side tensors
have Q rows instead of N: a decoding step reads the whole KV cache and writes one row per query. A
decoding step that carries a state of the keys before its first query from call to call (a recurrent
decoder, `state=carried`) reads that state instead of them: the new tokens' Q rows of keys and values,
and the state's bytes, which the implementation states (`carried_state_bytes`). A backward that re-reads the
forward's output or log-sum-exp (FlashAttention's does) moves more; the model is a floor, so bytes over time is a
lower bound on achieved bandwidth: `bandwidth_fraction` near 1 means memory-bound and efficient, far below 1 with
low TFLOP/s means time goes to neither (launches, extra passes).
"""

from __future__ import annotations

from ..case import Case

_TENSORS = {"fwd": (2, 2), "bwd": (3, 4), "fwd+bwd": (4, 4)}  # (query-side, key/value-side) tensors moved


def minimum_bytes(case: Case, carried_state_bytes: int | None = None) -> int:
    query_side, key_value_side = _TENSORS[case.mode]
    key_value_rows = case.seq_len if carried_state_bytes is None else case.query_len
    rows = query_side * case.heads * case.query_len + key_value_side * case.key_value_heads * key_value_rows
    return rows * case.batch * case.head_dim * case.torch_dtype.itemsize + (carried_state_bytes or 0)
