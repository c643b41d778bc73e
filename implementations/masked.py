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

from typing import Any, ClassVar

import torch

from .base import CaseLike, Implementation, device_reasons
from .block_mask import block_mask_by_rows
from .chunked_masked import ChunkedMaskedAttention, QueryChunk
from .documents import doc_lens_of, packing_reasons, per_document
from .flex import FlexCall, flex_reasons
from .reference import reference_attention, softmax_weights

_CPU_QUERY_CHUNK = 128


class MaskedAttention(Implementation):
    family = "sparse"
    # Why the mask cannot run packed documents, for one whose positions are the whole sequence's; None: it runs
    # each document on its own, which a mask of relative positions (a sliding window) allows.
    why_not_packed: ClassVar[str | None] = None

    def __init__(self, name: str, **options: Any):
        super().__init__(name, **options)
        self._flex_call = FlexCall()
        self._pairs: dict[tuple[int, bool, int], int] = {}
        self._plans: dict[tuple, list[QueryChunk]] = {}
        self._packing: tuple | None = None  # the packing whose documents' plans _plans holds

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

    def visible_pairs(self, case: CaseLike) -> float:
        """Pairs the mask shows per sequence; packed documents, within each document, averaged over the batch."""
        doc_lens = doc_lens_of(case)
        if doc_lens is not None:
            pairs = (self._sequence_pairs(length, length, case.causal, "no") for lens in doc_lens for length in lens)
            return sum(pairs) / len(doc_lens)
        return self._sequence_pairs(case.q_len or case.seq_len, case.seq_len, case.causal)

    def _sequence_pairs(self, queries: int, seq_len: int, causal: bool, keep: str = "alone") -> int:
        key = (seq_len, causal, queries)
        if key not in self._pairs:
            plan = self._cpu_plan(queries, seq_len, causal, torch.device("cpu"), keep)
            self._pairs[key] = sum(int(chunk.seen.sum()) for chunk in plan)
        return self._pairs[key]

    def supports(self, case) -> list[str]:
        reasons = device_reasons(case, {"cpu", "cuda"}) + flex_reasons(case)
        if self.why_not_packed:
            return reasons + packing_reasons(case, self.why_not_packed)
        if case.device == "cuda":  # a document mask_mod would take the batch index; one compile per length won't do
            reasons += packing_reasons(case, "on a GPU, a document mask for FlexAttention is not wired here")
        return reasons

    def exact_twin(self, q, k, v, *, causal=False, doc_lens=None):
        return reference_attention(q, k, v, causal=causal, mask=self.allowed, doc_lens=doc_lens)

    def attention_weights(self, q, k, *, causal=False):
        return softmax_weights(q, k, causal=causal, mask=self.allowed)

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is not None:  # packed documents (CPU): each its own call, the mask's positions its own
            if doc_lens != self._packing:  # the plans of one packing's lengths at a time
                self._plans, self._packing = {}, doc_lens
            return per_document(lambda *part: self._chunked(*part, causal, "with others"), q, k, v, doc_lens)
        if q.device.type == "cuda":
            return self._flex(q, k, v, causal)
        return self._chunked(q, k, v, causal)

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        if q.device.type == "cuda":
            return "flex_attention (compiled)"
        documents = "" if doc_lens is None else ", one call per packed document"
        return f"query chunks against their candidate keys (cpu){documents}"

    def _flex(self, q, k, v, causal: bool) -> torch.Tensor:
        return self._flex_call(q, k, v, lambda q_idx, kv_idx: self.visible(q_idx, kv_idx, causal), mask_key=(causal,))

    def _chunked(self, q, k, v, causal: bool, keep: str = "alone") -> torch.Tensor:
        batch, heads, q_len, head_dim = q.shape
        seq_len = k.shape[-2]
        plan = self._cpu_plan(q_len, seq_len, causal, q.device, keep)
        rows = [t.reshape(batch * t.shape[1], t.shape[-2], head_dim) for t in (q, k, v)]
        return ChunkedMaskedAttention.apply(*rows, plan).view(batch, heads, q_len, head_dim)

    def _cpu_plan(self, q_len: int, seq_len: int, causal: bool, device, keep: str = "alone") -> list[QueryChunk]:
        """Each query chunk's candidate keys and mask (the queries are the last q_len positions); built on the
        first call of a shape, like the block mask. `keep`: "alone" keeps this shape's plan only (a plan holds
        N × (candidate keys) booleans), "with others" keeps it beside the others (a packing's document lengths,
        each of which every call takes), "no" keeps nothing (counting pairs)."""
        key = (q_len, seq_len, causal, device)
        if key in self._plans:
            return self._plans[key]
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
        if keep == "alone":
            self._plans = {}
        if keep != "no":
            self._plans[key] = plan
        return plan
