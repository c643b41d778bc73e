"""Linear attention through flash-linear-attention's chunked Triton kernel (`fla-core`), as a peer.

The same maths as `linear` (φ = elu + 1, normalized), so it shares `linear`'s exact twin:
fla's `chunk_linear_attn(normalize=True)` divides scale·φ(q)ᵀS by scale·φ(q)ᵀz, and the scale
cancels. fla's kernel is causal only and needs a GPU; elsewhere `supports()` says so.
"""

from __future__ import annotations

from .base import Unsupported, device_reasons, dtype_reasons, grouped_query_reasons, query_length_reasons
from .documents import packing_reasons
from .linear import LinearAttention, elu_feature_map


def _load_fla():
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError as error:
        return None, f"flash-linear-attention is not installed (pip install fla-core): {error}"
    return chunk_linear_attn, None


class FlaLinearAttention(LinearAttention):
    options = {}

    def supports(self, case) -> list[str]:
        reasons = device_reasons(case, {"cuda"})
        if not case.causal:
            reasons.append("causal=False (supported: causal=True; fla's chunk_linear_attn is causal only)")
        reasons += dtype_reasons(case, {"float16", "bfloat16", "float32"})
        reasons += grouped_query_reasons(case, "not wired for fla's kernel here")
        reasons += query_length_reasons(case, "fla's chunk_linear_attn takes as many queries as keys")
        reasons += packing_reasons(
            case, "fla's chunk_linear_attn takes no cu_seqlens: its state runs over the sequence"
        )
        _, problem = _load_fla()
        if problem:
            reasons.append(problem)
        return reasons

    def __call__(self, q, k, v, *, causal=False):
        kernel, problem = _load_fla()
        if problem or not causal:
            raise Unsupported([problem or "fla's chunk_linear_attn is causal only"])
        as_bthd = lambda x: x.transpose(1, 2)  # noqa: E731 - fla's layout is (batch, seq, heads, dim)
        out, _ = kernel(as_bthd(elu_feature_map(q)), as_bthd(elu_feature_map(k)), as_bthd(v), scale=1.0, normalize=True)
        return out.transpose(1, 2).to(q.dtype)  # a no-op where fla keeps the input dtype, as its kernels do today

    def backend(self, q, k, v, *, causal=False) -> str | None:
        try:
            import fla
        except ImportError:
            return None
        return f"fla {getattr(fla, '__version__', '?')} chunk_linear_attn"
