"""Linear attention (Katharopoulos et al., 2020): softmax replaced by a positive feature map φ.

    out_i = φ(q_i)ᵀ S_i / φ(q_i)ᵀ z_i,   S_i = Σ_j φ(k_j) v_jᵀ,   z_i = Σ_j φ(k_j)   (j ≤ i when causal)

with φ(x) = elu(x) + 1 and no softmax scale. Non-causal costs O(N·F·D). With fewer queries than keys
(decoding: the queries are the last Q positions), every query also sees the sums of the first N − Q keys
(KeySums), built from them on every call, or with `state=carried` once per cache and carried from call to
call as a recurrent decoder does (carried_state.py). Causal is computed in chunks of C tokens: inside a
chunk the masked quadratic form φ(Q_c)φ(K_c)ᵀ, across chunks a running state (an exclusive cumulative
sum of per-chunk φ(K_c)ᵀV_c) — batched matmuls, no loop over tokens. With
fewer key/value heads than query heads, the key side (features, states, sums) is computed once per
key/value head, and each chunk's matmuls take the group's query heads as stacked rows (ChunkRows).

The chunk size trades the two: per token, the within-chunk part costs ~C·(F + D) multiply-adds and
the materialized states ~F·D/C values of memory traffic, so C ≈ √(F·D) balances them; the default
128 is that for F = D = 128 and within a factor √2 for Performer's 256 features.

`linear_attention` is the fast path shared with FAVOR+ (performer.py); `quadratic_linear_attention`
is the float64 exact twin: the same maths as an explicit N×N weight matrix, chunked over queries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .base import DTYPES, Implementation, Option, device_reasons, expand_kv, must_be_positive
from .carried_state import (
    STATE_OPTION,
    CarriedState,
    carried_bytes,
    carried_description,
    carried_state_reasons,
    carries,
    summed_keys,
)
from .compiling import COMPILE_OPTION, CompileOnRequest
from .documents import DocLens, per_document, same_document
from .flops import linear_attention_flops

# Packed documents run one call per document: the running state (causal) or the sums (not) start afresh at each one.
PER_DOCUMENT = ", one call per packed document"


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1 as written, in two elementwise passes, as the paper's code and fla evaluate it. Below zero it
    cancels towards 0 (see docs/implementations.md#precision); the cancellation-free form takes four passes."""
    return F.elu(x) + 1


def matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16, fp32 and fp64 multiply as they are; fp16 would overflow running sums (they grow like N)."""
    return torch.float32 if dtype == torch.float16 else dtype


@dataclass(frozen=True)
class KeySums:
    """Σ_j φ(k_j) v_jᵀ (B, KV, F, D) and Σ_j φ(k_j) (B, KV, F) over keys that every query sees, per key/value
    head, in the dtype the queries multiply them in: all linear attention needs of those keys, and what a
    recurrent decoder carries."""

    state: torch.Tensor
    norm: torch.Tensor


def key_sums(fk: torch.Tensor, v: torch.Tensor, mm: torch.dtype | None = None) -> KeySums:
    """The sums of features fk (B, KV, N, F) and values v (B, KV, N, D), multiplied in `mm` (the normalizer
    summed in float32 or wider), held in `mm`."""
    mm = mm or matmul_dtype(v.dtype)
    acc = torch.promote_types(v.dtype, torch.float32)
    return KeySums(fk.to(mm).transpose(-2, -1) @ v.to(mm), fk.sum(-2, dtype=acc).to(mm))


@dataclass(frozen=True)
class ChangedFeatures:
    """The earlier keys' features as the new keys' are taken: φ' = factor·φ + offset, per key/value head (B, KV, 1, 1
    each), applied to their sums. FAVOR+ takes features under a shift that new keys can move, and adds its floor
    after the shift, so the floor is not rescaled with the rest. The offset's part of the sums needs the earlier
    values' sum `value_sum` (B, KV, D) and how many keys there were (`count`)."""

    factor: torch.Tensor
    offset: torch.Tensor
    value_sum: torch.Tensor
    count: int


def decoding_step(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    sums: KeySums,
    *,
    causal: bool,
    chunk: int = 128,
    mm: torch.dtype | None = None,
    changed: ChangedFeatures | None = None,
) -> torch.Tensor:
    """A decoding step: queries fq (B, H, Q, F) of the Q new tokens, their keys' features fk (B, KV, Q, F) and values
    v (B, KV, Q, D), and the sums of the keys before them (KV ≤ H heads; query head h reads key/value head h // G)
    -> (B, H, Q, D) in v's dtype. The G query heads of a group are stacked as rows of one matmul against their
    key/value head's sums, and linear_attention does the same against the new keys (one chunk of them, as a view;
    more than a chunk, a chunked prefill, in chunks), so neither is repeated per query head. `changed`: the sums'
    features are to be taken as changed so (after the matmuls: O(Q·D) more work, not O(F·D))."""
    mm = mm or matmul_dtype(v.dtype)
    acc = torch.promote_types(v.dtype, torch.float32)
    batch, heads, q_len, features = fq.shape
    kv_heads = fk.shape[1]
    grouped = fq.to(mm).reshape(batch, kv_heads, heads // kv_heads * q_len, features)  # row g·Q + i: query i of head g
    numerator = (grouped @ sums.state.to(mm)).to(acc)
    denominator = (grouped @ sums.norm.to(mm)[..., None]).to(acc)
    if changed is not None:
        # Features a·φ + b: f·Σ_j (a·φ_j + b) v_jᵀ = a·(f·S) + b·(Σ_f f)·Σ_j v_j, and a·(f·z) + b·(Σ_f f)·count.
        offset = changed.offset * grouped.sum(-1, keepdim=True, dtype=acc)
        numerator = numerator * changed.factor + offset * changed.value_sum.to(acc)[:, :, None, :]
        denominator = denominator * changed.factor + offset * changed.count
    seen = (numerator.view(batch, heads, q_len, -1), denominator.view(batch, heads, q_len, 1))
    return linear_attention(fq, fk, v, causal=causal, chunk=chunk, mm=mm, seen=seen)


@dataclass(frozen=True)
class ChunkRows:
    """Queries (B, H, N, ·) laid out as the rows of chunked matmuls (B, KV, n, G·C, ·): per chunk of C positions
    (N padded to n·C), the G query heads that share a key/value head stacked, so each chunk's products run once
    against that head's keys (B, KV, n, C, ·) and no key or value is repeated per query head. With one chunk
    (non-causal, or N ≤ C) the rows are a view of the queries; with several and G > 1, one copy."""

    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    chunk: int

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads

    @property
    def chunks(self) -> int:
        return -(-self.seq_len // self.chunk)

    def _padded(self, x: torch.Tensor, value: float) -> torch.Tensor:
        pad = self.chunks * self.chunk - x.shape[-2]  # padded keys come after every real query: no one sees them
        return F.pad(x, (0, 0, 0, pad), value=value) if pad else x

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """(B, KV, N, ·) -> (B, KV, n, C, ·), zero-padded (or already padded to n·C, as it is)."""
        return self._padded(x, 0.0).reshape(self.batch, self.kv_heads, self.chunks, self.chunk, x.shape[-1])

    def rows(self, x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """(B, H, N, ·) -> (B, KV, n, G·C, ·): row g·C + i of chunk c is position c·C + i of query head kv·G + g."""
        width = x.shape[-1]
        split = self._padded(x, pad_value).reshape(
            self.batch, self.kv_heads, self.groups, self.chunks, self.chunk, width
        )
        return split.transpose(2, 3).reshape(self.batch, self.kv_heads, self.chunks, self.groups * self.chunk, width)

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of `rows`, padding cut off: (B, KV, n, G·C, ·) -> (B, H, N, ·)."""
        width = x.shape[-1]
        split = x.reshape(self.batch, self.kv_heads, self.chunks, self.groups, self.chunk, width).transpose(2, 3)
        return split.reshape(self.batch, self.heads, self.chunks * self.chunk, width)[..., : self.seq_len, :]


def linear_attention(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    chunk: int = 128,
    mm: torch.dtype | None = None,
    seen: tuple[torch.Tensor, torch.Tensor] | None = None,
    query_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """fq: positive features (B, H, N, F) of N positions; fk (B, KV, N, F) and v (B, KV, N, D) of the same positions,
    KV dividing H (query head h reads key/value head h // (H/KV)) -> (B, H, N, D) in v's dtype. Causal, fk may come
    padded to whole chunks already (`padded_causal_len`: the padding is taken as it is, and no query sees it), so a
    caller can pad what it derives fk from rather than fk, where fk is the wider tensor. `seen`: the
    numerators (B, H, N, D) and denominators (B, H, N, 1) that keys before all of these add to each query
    (decoding_step passes them for a chunked prefill's new tokens). `query_map`: fq holds the queries themselves,
    and this row-wise feature map is applied once they are laid out as rows (padded rows are zeros, whose
    features must be positive): with grouped heads the rows are a copy, cheaper of queries than of their
    features where those are wider (FAVOR+'s 256 in float32 against 64 in bfloat16).

    Matmuls run in `mm`, by default the input dtype (tensor cores for bf16; fp32 for fp16, whose
    range the running sums would exceed); cumulative sums, normalizers and the final division in
    float32 or wider.
    """
    mm = mm or matmul_dtype(v.dtype)
    acc = torch.promote_types(v.dtype, torch.float32)
    batch, heads, seq_len, _ = fq.shape
    # Non-causal attention is one chunk of all queries against all keys, with no mask.
    layout = ChunkRows(batch, heads, fk.shape[1], seq_len, min(chunk, seq_len) if causal else seq_len)
    if causal and fk.shape[-2] not in (seq_len, padded_causal_len(seq_len, chunk)):
        raise ValueError(
            f"causal linear_attention takes as many queries as keys (got {seq_len} and "
            f"{fk.shape[-2]}): pass the earlier keys as `seen`"
        )
    # Padded queries get positive features (1, or those of a zero query), so positive denominators: their rows,
    # cut off before the output, put no NaN into the gradients.
    fq_rows = layout.rows(fq, pad_value=1.0) if query_map is None else query_map(layout.rows(fq))
    fq_rows = fq_rows.to(mm)
    if causal:
        numerator, denominator = _causal_sums(fq_rows, layout.keys(fk.to(mm)), layout.keys(v.to(mm)), acc)
    else:
        fk, values = fk.to(mm)[:, :, None], v.to(mm)[:, :, None]  # all keys as one chunk
        numerator = fq_rows @ (fk.transpose(-2, -1) @ values)  # in `mm`: the division below widens it exactly
        denominator = (fq_rows @ fk.sum(-2, dtype=acc).to(mm)[..., None]).to(acc)
    if seen is not None:
        numerator, denominator = numerator + layout.rows(seen[0]), denominator + layout.rows(seen[1], pad_value=1.0)
    if numerator.requires_grad:  # in place, autograd would copy the numerator for the backward: no gain
        return layout.heads_first((numerator.to(acc) / denominator).to(v.dtype))
    # In place: the quotient is computed in float32 and rounded into the numerator's dtype, as (n / d).to(dtype)
    # would be, without a float32 N×D tensor besides it.
    return layout.heads_first(numerator.div_(denominator).to(v.dtype))


def padded_causal_len(seq_len: int, chunk: int) -> int:
    """The length causal linear_attention pads N tokens to: whole chunks, or N itself where it fits in one."""
    return seq_len if seq_len <= chunk else -(-seq_len // chunk) * chunk


def _causal_sums(
    fq: torch.Tensor, fk: torch.Tensor, values: torch.Tensor, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal numerators (B, KV, n, G·C, D) and denominators (B, KV, n, G·C, 1) from query rows fq (B, KV, n, G·C, F)
    and the keys' chunks fk (B, KV, n, C, F) and values (B, KV, n, C, D) (ChunkRows)."""
    batch, kv_heads, chunks, rows, _ = fq.shape
    chunk = fk.shape[-2]

    def before_each_chunk(per_chunk: torch.Tensor) -> torch.Tensor:
        """From each chunk's sums (dim 2), what all earlier chunks contribute to each chunk, in float32 or wider
        (the last chunk's own sums are never needed)."""
        earlier = torch.cumsum(per_chunk[:, :, :-1], dim=2, dtype=acc)
        return torch.cat([torch.zeros_like(earlier[:, :, :1]), earlier], dim=2)

    weights = fq @ fk.transpose(-2, -1)  # (B, KV, n, G·C, C): each query head's C×C block within the chunk
    if chunk > 1:  # a chunk of one token (one decoded token) sees itself
        weights.view(batch, kv_heads, chunks, rows // chunk, chunk, chunk).tril_()  # in place: no second N·C tensor
    numerator = weights @ values
    denominator = weights.sum(-1, keepdim=True, dtype=acc)
    del weights  # without autograd, its memory goes back before the states are built
    if chunks > 1:  # one chunk (a decoding step's few new tokens) has no earlier chunks
        # Running sums accumulate in float32 (they grow like N); matmuls read them in the matmul dtype.
        mm = fq.dtype
        # Every chunk's state, the last one's unused: a matmul of all but the last chunk would first copy the keys
        # and values (their batch dims no longer flatten into one), for 1/n of the states' work saved.
        state_before = before_each_chunk(fk.transpose(-2, -1) @ values).to(mm)
        norm_before = before_each_chunk(fk.sum(-2, dtype=acc))  # (B, KV, n, F)
        # Both parts summed in float32, in place: no third float32 N×D tensor. (Adding the matmul's output as it is
        # would save widening it, but CPU kernels add mixed dtypes more slowly.)
        numerator = numerator.to(acc).add_((fq @ state_before).to(acc))
        denominator = denominator + (fq @ norm_before.to(mm)[..., None]).to(acc)
    return numerator, denominator


def quadratic_linear_attention(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    chunk_elements: int = 1 << 25,
    doc_lens: DocLens | None = None,
) -> torch.Tensor:
    """The exact twin: weights φ(q_i)ᵀφ(k_j), masked, row-normalized, times V; float64 in, float64 out.

    Chunked over queries and checkpointed, so neither forward nor backward holds all N×N weights. `doc_lens`:
    packed documents, each query weighing the keys of its own document only (the block-diagonal mask).
    """
    documents = None if doc_lens is None else same_document(doc_lens, fq.device)
    batch, heads, q_len, _ = fq.shape
    seq_len = fk.shape[-2]
    rows = max(1, min(q_len, chunk_elements // max(1, batch * heads * seq_len)))

    def block(fq_rows: torch.Tensor, start: int) -> torch.Tensor:
        weights = fq_rows @ fk.transpose(-2, -1)
        query_pos = torch.arange(start, start + fq_rows.shape[-2], device=fq.device)[:, None] + seq_len - q_len
        key_pos = torch.arange(seq_len, device=fq.device)[None, :]
        if causal:  # queries are the last q_len positions
            weights = weights * (key_pos <= query_pos)
        if documents is not None:
            weights = weights * documents(query_pos, key_pos)
        return (weights @ v) / weights.sum(-1, keepdim=True)

    # Checkpointed only where gradients will flow: without them it saves nothing and costs an import of TorchDynamo.
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (fq, fk, v))
    run = functools.partial(checkpoint, block, use_reentrant=False) if grads else block
    parts = [run(fq[..., s : s + rows, :], s) for s in range(0, q_len, rows)]
    return torch.cat(parts, dim=-2)


def linear_weights(fq: torch.Tensor, fk: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """The implied (…, Q, N) attention weights φ(q_i)ᵀφ(k_j) / Σ_j φ(q_i)ᵀφ(k_j), float64."""
    weights = fq.double() @ fk.double().transpose(-2, -1)
    if causal:
        weights = torch.tril(weights, diagonal=fk.shape[-2] - fq.shape[-2])
    return weights / weights.sum(-1, keepdim=True)


def linear_recurrence(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention token by token (S += φ(k_t)v_tᵀ): the plainest statement, for tests."""
    state = torch.zeros(*fq.shape[:-2], fq.shape[-1], v.shape[-1], dtype=torch.float64, device=fq.device)
    normalizer = torch.zeros(*fq.shape[:-2], fq.shape[-1], dtype=torch.float64, device=fq.device)
    outs = []
    for t in range(fq.shape[-2]):
        state = state + fk[..., t, :, None].double() * v[..., t, None, :].double()
        normalizer = normalizer + fk[..., t, :].double()
        q_t = fq[..., t, :].double()
        outs.append((q_t[..., None, :] @ state)[..., 0, :] / (q_t * normalizer).sum(-1, keepdim=True))
    return torch.stack(outs, dim=-2)


class LinearAttention(Implementation):
    family = "linear"
    options = {
        "chunk": Option(
            default=128,
            parse=int,
            check=must_be_positive,
            help="chunk: tokens per chunk of the causal computation, a positive integer",
        ),
        "compile": COMPILE_OPTION,
        "state": STATE_OPTION,
    }

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        # .get: linear-fla shares this class and its exact twin, without these options.
        self._attend = CompileOnRequest(self._attend_eager, self.settings.get("compile", False))
        self._step = CompileOnRequest(self._step_eager, self.settings.get("compile", False))
        self._decode = CompileOnRequest(self._decode_eager, self.settings.get("compile", False))
        self._state = self.settings.get("state", "rebuilt")
        self._carried: CarriedState[KeySums] = CarriedState()

    def supports(self, case) -> list[str]:
        return device_reasons(case, {"cpu", "cuda"}) + carried_state_reasons(case, self._state)

    def atol_scale_for(self, case) -> float:
        # With one key, out = v and dq, dk vanish in theory. In bfloat16 the numerator φ(q)ᵀ Σ φ(k)vᵀ is multiplied
        # in bfloat16 and the normalizer summed in float32, so the two do not cancel exactly, as softmax's P = 1
        # does, and the residue grows as the head dim shrinks (fewer terms in φ(q)·φ(k)). At one token, one head
        # (the fewest elements to average over), its worst over 2000 seeds was 12.8× bfloat16's allowance at head
        # dim 1, 6.9× at 2, 3.4× at 4, 2.0× at 8, 1.5× at 16, 1.0× at 32, 0.6× at 64 and 0.4× at 128, causal or
        # not: the allowance grows as 48 / head dim below 48, leaving 1.5× or more, and is as is from 48 up.
        return max(1.0, 48 / case.head_dim)

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is not None:  # packed documents: each its own call, the running state starting afresh
            return per_document(lambda *part: self._attend(*part, causal), q, k, v, doc_lens)
        earlier = k.shape[-2] - q.shape[-2]
        if not earlier:
            return self._attend(q, k, v, causal)
        if not carries(self._state, q, k, v):
            return self._decode(q, k, v, causal)
        sums = self._carried.get((k, v), earlier, lambda: self._earlier_sums(k[..., :earlier, :], v[..., :earlier, :]))
        return self._step(q, k[..., earlier:, :], v[..., earlier:, :], sums.state, sums.norm, causal)

    def _attend_eager(self, q, k, v, causal: bool) -> torch.Tensor:
        return linear_attention(
            q, elu_feature_map(k), v, causal=causal, chunk=self.settings["chunk"], query_map=elu_feature_map
        )

    @staticmethod
    def _earlier_sums(k: torch.Tensor, v: torch.Tensor) -> KeySums:
        """The state of the keys before the first query, per key/value head."""
        return key_sums(elu_feature_map(k), v)

    def _decode_eager(self, q, k, v, causal: bool) -> torch.Tensor:
        """Fewer queries than keys, the earlier keys' state built from the cache in this call (`state=rebuilt`)."""
        earlier = k.shape[-2] - q.shape[-2]
        sums = self._earlier_sums(k[..., :earlier, :], v[..., :earlier, :])
        return self._step_eager(q, k[..., earlier:, :], v[..., earlier:, :], sums.state, sums.norm, causal)

    def _step_eager(self, q, k, v, state: torch.Tensor, norm: torch.Tensor, causal: bool) -> torch.Tensor:
        """A decoding step: the new tokens' keys k and values v (B, KV, Q, D), the earlier ones' carried sums."""
        return decoding_step(
            elu_feature_map(q), elu_feature_map(k), v, KeySums(state, norm), causal=causal, chunk=self.settings["chunk"]
        )

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        documents = "" if doc_lens is None else PER_DOCUMENT
        return self._attend.backend + carried_description(self._state, q, k) + documents

    def exact_twin(self, q, k, v, *, causal=False, doc_lens=None):
        k, v = expand_kv(q, k, v)
        q, k, v = q.double(), k.double(), v.double()
        return quadratic_linear_attention(elu_feature_map(q), elu_feature_map(k), v, causal=causal, doc_lens=doc_lens)

    def attention_weights(self, q, k, *, causal=False):
        return linear_weights(elu_feature_map(q.double()), elu_feature_map(k.double()), causal=causal)

    def forward_flops(self, case) -> float:
        keys = summed_keys(self._state, case.seq_len, case.q_len)
        return linear_attention_flops(
            case.batch,
            case.heads,
            keys,
            case.head_dim,
            features=case.head_dim,
            q_len=case.q_len,
            kv_heads=case.kv_heads,
        )

    def carried_state_bytes(self, case) -> int | None:
        return carried_bytes(self._state, case, features=case.head_dim, dtype=matmul_dtype(DTYPES[case.dtype]))
