"""xformers' memory_efficient_attention with its own operator dispatch (an optional extra).

With fewer queries than keys, causal masks are xformers' LowerTriangularFromBottomRightMask (aligned to the last
key); its LowerTriangularMask aligns them to the first.
"""
from __future__ import annotations

import logging
import re

import torch

from .base import DTYPES, Implementation, Unsupported, grouped_query_reasons, query_len


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
    parts = [f"{what} {version}{f' with CUDA {cuda}' if cuda else ''} (this is {have})"
             for what, version, cuda, have in built if version != have]
    return f"built for {', '.join(parts) or 'another build'}; install an xformers built for this torch"


def _causal_bias(fmha, causal: bool, q_len: int, kv_len: int):
    if not causal:
        return None
    return fmha.attn_bias.LowerTriangularMask() if q_len == kv_len else fmha.attn_bias.LowerTriangularFromBottomRightMask()


class XformersAttention(Implementation):
    """`xformers.ops.memory_efficient_attention` in its (batch, seq, heads, head_dim) layout."""

    def _inputs(self, fmha, q, k, v, causal: bool):
        """q, k, v in xformers' layout (batch, seq, heads, head_dim)."""
        return fmha.Inputs(query=q, key=k, value=v, attn_bias=_causal_bias(fmha, causal, q.shape[1], k.shape[1]))

    def supports(self, case) -> list[str]:
        fmha, problem = _load_xformers()
        if problem:
            return [problem]
        grouped = grouped_query_reasons(case, "xformers takes groups in a 5-D layout not wired here")
        if grouped:
            return grouped
        if case.device == "cuda" and not torch.cuda.is_available():
            return ["device=cuda but no CUDA device is available"]
        # Same sizes as the case (empty: nothing is touched) so sequence-length limits apply too.
        make = lambda length: torch.empty((case.batch, length, case.heads, case.head_dim),  # noqa: E731
                                          dtype=DTYPES[case.dtype], device=case.device)
        q, k, v = make(query_len(case)), make(case.seq_len), make(case.seq_len)
        inputs = self._inputs(fmha, q, k, v, case.causal)
        try:
            fmha.dispatch._dispatch_fw(inputs, needs_gradient=case.mode != "fwd")
            if case.mode != "fwd":
                fmha.dispatch._dispatch_bw(inputs, varlen_lse_packed=None)
        except NotImplementedError as error:
            return _extension_problem() + _condense(str(error))
        return []

    def __call__(self, q, k, v, *, causal=False):
        fmha, problem = _load_xformers()
        if problem:
            raise Unsupported([problem])
        bias = _causal_bias(fmha, causal, q.shape[-2], k.shape[-2])
        try:
            out = fmha.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        except NotImplementedError as error:
            raise Unsupported(_condense(str(error))) from None
        return out.transpose(1, 2)

    def backend(self, q, k, v, *, causal=False) -> str | None:
        """The xformers operators its dispatcher picks, forward and (when training) backward."""
        fmha, problem = _load_xformers()
        if problem:
            return None
        inputs = self._inputs(fmha, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal)
        training = q.requires_grad
        names = [f"fwd={fmha.dispatch._dispatch_fw(inputs, needs_gradient=training).NAME}"]
        if training:
            names.append(f"bwd={fmha.dispatch._dispatch_bw(inputs, varlen_lse_packed=None).NAME}")
        return " ".join(names)
