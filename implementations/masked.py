"""Shared machinery of sparse (masked) softmax attention: one mask, three ways to run it.

A subclass defines which keys each query may see (`allowed`, before causality) and which key
ranges can hold them (`candidate_keys`). From that this class derives:
  * the GPU fast path: FlexAttention with a block mask, compiled once per shape (first call);
  * the CPU path: queries in chunks, each attending only to its candidate keys (chunked_masked.py);
  * the exact twin: float64 softmax attention with the same mask (`reference_attention(mask=...)`);
  * the exact number of visible pairs (for FLOPs and density) and the dense boolean mask.
Positions are those of the keys: with fewer queries than keys, the queries are the last positions.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CaseLike, Implementation, device_reasons
from .block_mask import block_mask_by_rows
from .chunked_masked import ChunkedMaskedAttention, QueryChunk
from .documents import packing_reasons
from .flex import FlexCall, flex_reasons
from .reference import reference_attention, softmax_weights

_CPU_QUERY_CHUNK = 128


class MaskedAttention(Implementation):
    family = "sparse"

    def __init__(self, name: str, **options: Any):
        super().__init__(name, **options)
        self._flex_call = FlexCall()
        self._pairs: dict[tuple[int, bool, int], int] = {}
        self._plans: dict[tuple, list[QueryChunk]] = {}

    # --- what a subclass defines -------------------------------------------------------------
    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """True where query q_idx may see key kv_idx (before causality); broadcasting tensors."""
        raise NotImplementedError

    def candidate_keys(self, start: int, stop: int, seq_len: int) -> list[tuple[int, int]]:
        """Key index ranges [a, b) that hold every key some query in [start, stop) may see."""
        raise NotImplementedError

    # --- derived -----------------------------------------------------------------------------
    def visible(self, q_idx: torch.Tensor, kv_idx: torch.Tensor, causal: bool) -> torch.Tensor:
        allowed = self.allowed(q_idx, kv_idx)
        return allowed & (kv_idx <= q_idx) if causal else allowed

    def dense_mask(
        self, seq_len: int, causal: bool, device: str | torch.device = "cpu", q_len: int | None = None
    ) -> torch.Tensor:
        """The (q_len, seq_len) boolean mask (q_len: seq_len): True where query i sees key j."""
        positions = torch.arange(seq_len, device=device)
        return self.visible(positions[seq_len - (q_len or seq_len) :, None], positions[None, :], causal)

    def block_mask(
        self,
        seq_len: int,
        causal: bool,
        device: str | torch.device = "cpu",
        max_elements: int | None = None,
        q_len: int | None = None,
    ):
        """FlexAttention's BlockMask of this mask, built in row chunks (memory bounded at any length)."""
        return block_mask_by_rows(
            lambda q_idx, kv_idx: self.visible(q_idx, kv_idx, causal), seq_len, device, max_elements, q_len
        )

    def _key_index(self, start: int, stop: int, seq_len: int, device) -> torch.Tensor:
        ranges = self.candidate_keys(start, stop, seq_len)
        return torch.cat([torch.arange(a, b, device=device) for a, b in ranges]).unique()

    def visible_pairs(self, case: CaseLike) -> int:
        queries = case.q_len or case.seq_len
        key = (case.seq_len, case.causal, queries)
        if key not in self._pairs:
            plan = self._cpu_plan(queries, case.seq_len, case.causal, torch.device("cpu"))
            self._pairs[key] = sum(int(chunk.seen.sum()) for chunk in plan)
        return self._pairs[key]

    def supports(self, case) -> list[str]:
        return device_reasons(case, {"cpu", "cuda"}) + flex_reasons(case) + packing_reasons(case, "not wired here yet")

    def exact_twin(self, q, k, v, *, causal=False):
        return reference_attention(q, k, v, causal=causal, mask=self.allowed)

    def attention_weights(self, q, k, *, causal=False):
        return softmax_weights(q, k, causal=causal, mask=self.allowed)

    def __call__(self, q, k, v, *, causal=False):
        if q.device.type == "cuda":
            return self._flex(q, k, v, causal)
        return self._chunked(q, k, v, causal)

    def backend(self, q, k, v, *, causal=False) -> str | None:
        return (
            "flex_attention (compiled)"
            if q.device.type == "cuda"
            else "query chunks against their candidate keys (cpu)"
        )

    def _flex(self, q, k, v, causal: bool) -> torch.Tensor:
        return self._flex_call(q, k, v, lambda q_idx, kv_idx: self.visible(q_idx, kv_idx, causal), mask_key=(causal,))

    def _chunked(self, q, k, v, causal: bool) -> torch.Tensor:
        batch, heads, q_len, head_dim = q.shape
        seq_len = k.shape[-2]
        plan = self._cpu_plan(q_len, seq_len, causal, q.device)
        rows = [t.reshape(batch * t.shape[1], t.shape[-2], head_dim) for t in (q, k, v)]
        return ChunkedMaskedAttention.apply(*rows, plan).view(batch, heads, q_len, head_dim)

    def _cpu_plan(self, q_len: int, seq_len: int, causal: bool, device) -> list[QueryChunk]:
        """Each query chunk's candidate keys and mask (the queries are the last q_len positions); built on the
        first call of a shape, like the block mask."""
        key = (q_len, seq_len, causal, device)
        if key not in self._plans:
            plan = []
            offset = seq_len - q_len
            for start in range(0, q_len, _CPU_QUERY_CHUNK):
                stop = min(q_len, start + _CPU_QUERY_CHUNK)
                index = self._key_index(offset + start, offset + stop, seq_len, device)
                contiguous = int(index[-1] - index[0]) + 1 == len(index)
                keys = slice(int(index[0]), int(index[-1]) + 1) if contiguous else index
                positions = torch.arange(offset + start, offset + stop, device=device)
                seen = self.visible(positions[:, None], index[None, :], causal)
                plan.append(QueryChunk(start, stop, keys, seen))
            self._plans = {key: plan}  # one shape at a time: a plan holds N × (candidate keys) booleans
        return self._plans[key]
