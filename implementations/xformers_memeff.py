"""xformers' memory_efficient_attention with its own operator dispatch (an optional extra).

With fewer queries than keys, causal masks are xformers' LowerTriangularFromBottomRightMask (aligned to the last
key); its LowerTriangularMask aligns them to the first.

Grouped-query heads go in xformers' 5-D layout (batch, seq, groups, heads per group, head_dim): the G query heads
that share a key/value head form one group, and that head's keys and values are expanded over it as a view
(stride 0, no copy), as xformers asks (it does not broadcast them itself); its dispatcher reads that zero stride as
grouped heads when it picks a kernel for a few queries against many keys. xformers marks the 5-D layout
experimental and forward-only: its backward operators refuse it, and those rows give their reasons.
"""

from __future__ import annotations

import logging
import re

import torch

from .base import DTYPES, Implementation, Unsupported, query_len
from .documents import DocLens, is_packed
from .xformers_documents import block_diagonal_bias, grouped_heads, one_sequence, packed_output, probe_lengths


def _condense(message: str) -> list[str]:
    """Turn xformers' multi-line "No operator found" message into one reason per operator."""
    reasons, current = [], None
    for line in message.splitlines():
        header = re.match(r"`(.+)` is not supported because:", line.strip())
        if header:
            current = [header.group(1)]
            reasons.append(current)
        elif current is not None and line.startswith("    "):
            current.append(" ".join(line.split()))
    if not reasons:
        return [" ".join(message.split())]
    return [f"xformers op {op}: {'; '.join(why)}" for op, *why in reasons]


def _load_xformers():
    """The xformers fmha module, or the reason it cannot be used."""
    # xformers logs a multi-line warning when its compiled extension does not load; the same message
    # becomes each row's reason (`_extension_problem`), so it is not also printed over the progress output.
    xformers_log = logging.getLogger("xformers")
    level = xformers_log.level
    xformers_log.setLevel(logging.ERROR)
    try:
        import xformers.ops.fmha as fmha
    except ImportError as error:
        return None, f"xformers is not installed (pip install 'attnbench[xformers]'): {error}"
    finally:
        xformers_log.setLevel(level)
    return fmha, None


def _extension_problem() -> list[str]:
    """Why xformers' compiled operators did not load (commonly: built for another torch/CUDA)."""
    try:
        from xformers import _cpp_lib
    except ImportError:
        return []
    failure = getattr(_cpp_lib, "_cpp_library_load_exception", None)
    if failure is None:
        return []
    return [f"xformers' compiled extension did not load: {_condense_load_failure(str(failure))}"]


def _condense_load_failure(message: str) -> str:
    """xformers' five-line build mismatch as one clause (it is repeated in every row's reason); any
    other message whole."""
    built = re.findall(r"^\s*(PyTorch|Python)\s+(\S+)(?: with CUDA (\S+))? \(you have ([^)]+)\)", message, re.M)
    if not built:
        return " ".join(message.split())
    parts = [
        f"{what} {version}{f' with CUDA {cuda}' if cuda else ''} (this is {have})"
        for what, version, cuda, have in built
        if version != have
    ]
    return f"built for {', '.join(parts) or 'another build'}; install an xformers built for this torch"


def _causal_bias(fmha, causal: bool, q_len: int, kv_len: int):
    """xformers' causal mask for Q queries, the last of N positions; none for one query, which sees every key (a mask
    there masks nothing, and its split-KV decoding kernel refuses the bottom-right one)."""
    if not causal or q_len == 1:
        return None
    return (
        fmha.attn_bias.LowerTriangularMask() if q_len == kv_len else fmha.attn_bias.LowerTriangularFromBottomRightMask()
    )


def _layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, Q, D), k and v (B, KV, N, D) as views in xformers' layout: (B, Q, H, D) and (B, N, H, D), or with
    grouped heads (B, Q, KV, G, D) and (B, N, KV, G, D), query head h = kv·G + g, keys and values expanded over g."""
    query, key, value = (x.transpose(1, 2) for x in (q, k, v))
    return grouped_heads(query, key, value, q.shape[1] // k.shape[1])


class XformersAttention(Implementation):
    """`xformers.ops.memory_efficient_attention` in its (batch, seq, heads, head_dim) layout, or with grouped-query
    heads its (batch, seq, groups, heads per group, head_dim) one."""

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._block_diagonal: tuple[tuple, object] | None = None

    def _documents_bias(self, fmha, doc_lens: DocLens, causal: bool):
        """The last packing's BlockDiagonal(Causal)Mask, built on its first call (set-up, once per batch)."""
        key = (doc_lens, causal)
        if self._block_diagonal is None or self._block_diagonal[0] != key:
            self._block_diagonal = (key, block_diagonal_bias(fmha, doc_lens, causal))
        return self._block_diagonal[1]

    def _inputs(self, fmha, q, k, v, causal: bool, doc_lens: DocLens | None = None):
        """xformers' Inputs for q (B, H, Q, D), k and v (B, KV, N, D) in attnbench's layout; with `doc_lens`, the
        packed documents as one sequence and its block-diagonal bias."""
        if doc_lens is not None:
            query, key, value = one_sequence(q, k, v)
            return fmha.Inputs(
                query=query, key=key, value=value, attn_bias=self._documents_bias(fmha, doc_lens, causal)
            )
        query, key, value = _layout(q, k, v)
        return fmha.Inputs(
            query=query, key=key, value=value, attn_bias=_causal_bias(fmha, causal, q.shape[-2], k.shape[-2])
        )

    def supports(self, case) -> list[str]:
        fmha, problem = _load_xformers()
        if problem:
            return [problem]
        if case.device == "cuda" and not torch.cuda.is_available():
            return ["device=cuda but no CUDA device is available"]
        # Same sizes as the case (empty: nothing is touched) so sequence-length limits apply too, and the same
        # layout as a call's, strides included (the dispatcher reads them).
        make = lambda heads, length: torch.empty(  # noqa: E731
            (case.batch, heads, length, case.head_dim),
            dtype=DTYPES[case.dtype],
            device=case.device,
        )
        kv_heads = case.kv_heads or case.heads
        q, k, v = make(case.heads, query_len(case)), make(kv_heads, case.seq_len), make(kv_heads, case.seq_len)
        inputs = self._inputs(fmha, q, k, v, case.causal, probe_lengths(case) if is_packed(case) else None)
        try:
            fmha.dispatch._dispatch_fw(inputs, needs_gradient=case.mode != "fwd")
            if case.mode != "fwd":
                fmha.dispatch._dispatch_bw(inputs, varlen_lse_packed=None)
        except NotImplementedError as error:
            return _extension_problem() + _condense(str(error))
        return []

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        fmha, problem = _load_xformers()
        if problem:
            raise Unsupported([problem])
        if doc_lens is not None:
            return self._documents(fmha, q, k, v, causal, doc_lens)
        query, key, value = _layout(q, k, v)
        bias = _causal_bias(fmha, causal, q.shape[-2], k.shape[-2])
        try:
            out = fmha.memory_efficient_attention(query, key, value, attn_bias=bias)
        except NotImplementedError as error:
            raise Unsupported(_condense(str(error))) from None
        # Out is laid out as the query: (B, Q, H, D), or (B, Q, KV, G, D), which flattens to it as a view.
        return out.reshape(q.shape[0], q.shape[2], q.shape[1], out.shape[-1]).transpose(1, 2)

    def _documents(self, fmha, q, k, v, causal: bool, doc_lens: DocLens) -> torch.Tensor:
        """Packed documents: the batch as one sequence, with its block-diagonal bias."""
        inputs = self._inputs(fmha, q, k, v, causal, doc_lens)
        try:
            out = fmha.memory_efficient_attention(inputs.query, inputs.key, inputs.value, attn_bias=inputs.attn_bias)
        except NotImplementedError as error:
            raise Unsupported(_condense(str(error))) from None
        return packed_output(out, q)

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        """The xformers operators its dispatcher picks, forward and (when training) backward."""
        fmha, problem = _load_xformers()
        if problem:
            return None
        inputs = self._inputs(fmha, q, k, v, causal, doc_lens)
        training = q.requires_grad
        names = [f"fwd={fmha.dispatch._dispatch_fw(inputs, needs_gradient=training).NAME}"]
        if training:
            names.append(f"bwd={fmha.dispatch._dispatch_bw(inputs, varlen_lse_packed=None).NAME}")
        return " ".join(names)
