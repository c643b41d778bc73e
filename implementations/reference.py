"""Exact softmax attention in float64, chunked over queries so long sequences fit in memory.

This is the oracle every exact implementation is checked against. Forward and backward are written
out (the backward in FlashAttention's form) so that gradients need no N×N autograd graph:

    S = scale·QKᵀ,  P = softmax(S),  O = PV
    dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Implementation, device_reasons, expand_kv, query_offset
from .documents import DocLens, same_document

# Scores of one chunk: batch·heads·chunk·seq float64 values; about 512 MiB.
_CHUNK_ELEMENTS = 1 << 26


def _chunk_rows(batch: int, heads: int, q_len: int, kv_len: int) -> int:
    return max(1, min(q_len, _CHUNK_ELEMENTS // max(1, batch * heads * kv_len)))


# mask(query_pos (c, 1), key_pos (1, n)) -> bool (c, n), True where the query may see the key. Positions
# are in the sequence of keys: with fewer queries than keys, the queries are its last positions.
MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _probabilities(
    q_chunk: torch.Tensor, k: torch.Tensor, start: int, causal: bool, scale: float, mask: MaskFn | None
) -> torch.Tensor:
    """Softmax weights of the queries at positions start..start+c over the keys they may see: (B, H, c, visible)."""
    rows = q_chunk.shape[-2]
    visible = start + rows if causal else k.shape[-2]
    scores = (q_chunk @ k[..., :visible, :].transpose(-2, -1)) * scale
    if causal or mask is not None:
        query_pos = torch.arange(start, start + rows, device=q_chunk.device)[:, None]
        key_pos = torch.arange(visible, device=q_chunk.device)[None, :]
        allowed = key_pos <= query_pos if causal else torch.ones((), dtype=torch.bool, device=q_chunk.device)
        if mask is not None:
            allowed = allowed & mask(query_pos, key_pos)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask: MaskFn | None
    ) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        offset = query_offset(q, k)
        step = _chunk_rows(q.shape[0], q.shape[1], q.shape[-2], k.shape[-2])
        for start in range(0, q.shape[-2], step):
            probs = _probabilities(q[..., start : start + step, :], k, offset + start, causal, scale, mask)
            out[..., start : start + step, :] = probs @ v[..., : probs.shape[-1], :]
        ctx.save_for_backward(q, k, v, out)
        ctx.causal, ctx.mask = causal, mask
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        q, k, v, out = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        offset = query_offset(q, k)
        step = _chunk_rows(q.shape[0], q.shape[1], q.shape[-2], k.shape[-2])
        for start in range(0, q.shape[-2], step):
            rows = slice(start, start + step)
            probs = _probabilities(q[..., rows, :], k, offset + start, ctx.causal, scale, ctx.mask)
            visible = probs.shape[-1]
            do = dout[..., rows, :]
            dv[..., :visible, :] += probs.transpose(-2, -1) @ do
            dprobs = do @ v[..., :visible, :].transpose(-2, -1)
            row_dot = (do * out[..., rows, :]).sum(-1, keepdim=True)
            dscores = probs * (dprobs - row_dot)
            dq[..., rows, :] = scale * (dscores @ k[..., :visible, :])
            dk[..., :visible, :] += scale * (dscores.transpose(-2, -1) @ q[..., rows, :])
        return dq, dk, dv, None, None


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: MaskFn | None = None,
    doc_lens: DocLens | None = None,
) -> torch.Tensor:
    """Softmax attention computed in float64; differentiable, returns float64 (B, H, Q, D).

    q (B, H, Q, D) holds the last Q of the N positions of k and v (B, KV, N, D), Q ≤ N; causal, the query at
    position p sees keys 0..p (the mask aligned to the last key, as in decoding against a KV cache).
    `mask` restricts which keys each query sees (on top of `causal`); every query must see one key.
    `doc_lens` (one tuple of lengths per batch sequence): packed documents, each query seeing its own only.
    Fewer key/value heads than query heads (grouped-query attention) are repeated per group.
    """
    k, v = expand_kv(q, k, v)
    if doc_lens is not None:
        mask = _both(mask, same_document(doc_lens, q.device))
    return _ChunkedAttention.apply(q.double(), k.double(), v.double(), causal, mask)


def _both(mask: MaskFn | None, documents: MaskFn) -> MaskFn:
    if mask is None:
        return documents
    return lambda qi, ki: mask(qi, ki) & documents(qi, ki)


def softmax_weights(
    q: torch.Tensor, k: torch.Tensor, *, causal: bool = False, mask: MaskFn | None = None
) -> torch.Tensor:
    """The full (…, Q, N) float64 softmax weights, for small inputs (attention-map charts)."""
    return _probabilities(
        q.double(), k.double(), query_offset(q, k), False, q.shape[-1] ** -0.5, _combine(mask, causal)
    )


def _combine(mask: MaskFn | None, causal: bool) -> MaskFn | None:
    if not causal:
        return mask
    if mask is None:
        return lambda qi, ki: ki <= qi
    return lambda qi, ki: (ki <= qi) & mask(qi, ki)


class ReferenceAttention(Implementation):
    """The float64 oracle as a registry entry: returns its output in the input dtype."""

    def supports(self, case) -> list[str]:
        return device_reasons(case, {"cpu", "cuda"})

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        return reference_attention(q, k, v, causal=causal, doc_lens=doc_lens).to(q.dtype)
