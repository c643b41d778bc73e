"""Linformer (Wang et al., 2020, "Linformer: Self-Attention with Linear Complexity"): keys and values projected
along the sequence before softmax attention,

    out = softmax(Q (E K)ᵀ / √D) (F V),   E, F of shape (k × N),

so the scores are N × k, not N × N: time O(N·k·D) and score memory O(N·k).

E and F are fixed random matrices with entries N(0, 1/N), so that a projected key (a sum of N keys) keeps the
scale of a key at every N and k: the paper's R (entries N(0, 1/k)) times √(k/N), the same at k = N. With R as it
is, the logits grow as √(N/k) and bfloat16's rounding with them, past the check's allowance at long lengths (see
docs/implementations.md). E and F are drawn in float64 once per (seed, N, k), rounded once per dtype and device
before the timed calls, and shared by every batch and head (the paper's "headwise" sharing). A benchmark has no
trained weights: trained projections are (k × N) matrices as well and cost the same. `share_kv=true` takes F = E.
With k ≥ N it still runs, with (k × N) projections, and then saves nothing over exact attention.

Linformer is not defined for autoregressive attention: each projected key mixes every position, future ones
included. Causal cases are unsupported, and so are decoding cases (fewer queries than keys): a KV cache grows, a
fixed (k × N) projection does not. A call with either raises Unsupported; nothing falls back to another maths.

Grouped-query heads: each key/value head is projected once, and SDPA takes the group's query heads against its
projected keys and values. The projections multiply in the input dtype (E and F rounded to it, the products
accumulated in float32 by the matmul kernels; the exact twin keeps them in float64, so that rounding counts as
error), then SDPA attends over the k projected keys.

Options: `k` (projected length, default 256), `share_kv` (default false), `seed` (default 0).
"""

from __future__ import annotations

import torch

from .base import Implementation, Option, Unsupported, device_reasons, must_be_positive, query_len
from .compiling import parse_bool
from .documents import packing_reasons
from .flops import low_rank_attention_backward_flops, low_rank_attention_flops
from .reference import reference_attention, softmax_weights
from .sdpa import SdpaAttention

NOT_AUTOREGRESSIVE = (
    "causal=True (supported: causal=False; Linformer is not defined for autoregressive attention: "
    "its projections mix every position, future ones included, into each projected key)"
)
FIXED_LENGTH = "a fixed (k × N) projection does not grow with a KV cache"


def must_be_bool(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def random_projections(projected: int, seq_len: int, seed: int, share_kv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, F), each (projected, seq_len) float64 with entries N(0, 1/seq_len); F is E itself when shared."""
    generator = torch.Generator().manual_seed(seed)
    drawn = [
        torch.randn(projected, seq_len, generator=generator, dtype=torch.float64) / seq_len**0.5
        for _ in range(1 if share_kv else 2)
    ]
    return drawn[0], drawn[-1]


def refusals(causal: bool, q_len: int, seq_len: int) -> list[str]:
    """Why Linformer cannot run such a call: causal masking, or fewer queries than keys."""
    reasons = [NOT_AUTOREGRESSIVE] if causal else []
    if q_len != seq_len:
        reasons.append(f"q_len={q_len} with seq_len={seq_len} (supported: q_len = seq_len; {FIXED_LENGTH})")
    return reasons


# Its projections E, F (k × N) mix the positions of the whole sequence; documents would need projections of their
# own length each, which is another model, not Linformer on a packed batch.
WHY_NOT_PACKED = "its k × N projections mix positions across documents"


class LinformerAttention(Implementation):
    family = "low-rank"
    options = {
        "k": Option(default=256, parse=int, check=must_be_positive, help="k: the projected length, a positive integer"),
        "share_kv": Option(
            default=False,
            parse=parse_bool,
            check=must_be_bool,
            help="share_kv: true or false; true projects values with the keys' projection",
        ),
        "seed": Option(default=0, parse=int, help="seed: an integer"),
    }

    def atol_scale_for(self, case) -> float:
        # The allowance's absolute part is a rounding unit at softmax attention's output scale, 1/√N (an average of
        # N values). This output averages k projected values, each at a value's scale: 1/√k, larger where k < N. With
        # k = 1, where dq and dk vanish in theory, float32's residue reached 1.9× the unscaled allowance at N = 257.
        return max(1.0, (case.seq_len / self.settings["k"]) ** 0.5)

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._sdpa = SdpaAttention("sdpa")
        # (N, dtype, device) -> (E, F), for one N at a time: at 64K tokens and k = 256 they take 256 MiB in float64.
        self._projections: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fixed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def fix_projections(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Use these (k × N) projections for length N in place of random ones (for tests: with k = N and
        E = F = I, this is exact softmax attention)."""
        expected = (self.settings["k"], key.shape[-1])
        if key.shape != expected or value.shape != expected:
            raise ValueError(f"projections must be {expected} (k × N), got {tuple(key.shape)} and {tuple(value.shape)}")
        self._fixed[key.shape[-1]] = (key.double(), value.double())
        self._projections.clear()

    def projections(self, seq_len: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, F) for length `seq_len` in `dtype` on `device`: drawn in float64, rounded once per dtype and device."""
        key = (seq_len, dtype, torch.device(device))
        if key not in self._projections:
            if any(length != seq_len for length, _, _ in self._projections):
                self._projections.clear()
            drawn = self._fixed.get(seq_len) or random_projections(
                self.settings["k"], seq_len, self.settings["seed"], self.settings["share_kv"]
            )
            key_projection = drawn[0].to(device=device, dtype=dtype)
            value_projection = key_projection if drawn[1] is drawn[0] else drawn[1].to(device=device, dtype=dtype)
            self._projections[key] = (key_projection, value_projection)
        return self._projections[key]

    def supports(self, case) -> list[str]:
        return (
            device_reasons(case, {"cpu", "cuda"})
            + refusals(case.causal, query_len(case), case.seq_len)
            + packing_reasons(case, WHY_NOT_PACKED)
        )

    def _refuse(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> None:
        """Raises Unsupported for what `supports` refuses, where a caller did not ask it first."""
        reasons = refusals(causal, q.shape[-2], k.shape[-2])
        if reasons:
            raise Unsupported(reasons)

    def _projected(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(E K, F V) per key/value head, in `dtype`: one matmul each, E and F broadcast over batch and heads."""
        key_projection, value_projection = self.projections(k.shape[-2], dtype, k.device)
        return key_projection @ k.to(dtype), value_projection @ v.to(dtype)

    def __call__(self, q, k, v, *, causal=False):
        self._refuse(q, k, causal)
        projected_k, projected_v = self._projected(k, v, q.dtype)
        return self._sdpa(q, projected_k, projected_v)

    def backend(self, q, k, v, *, causal=False) -> str | None:
        projected = torch.empty((*k.shape[:-2], self.settings["k"], k.shape[-1]), dtype=q.dtype, device=q.device)
        return f"sdpa {self._sdpa.backend(q, projected, projected)} over {self.settings['k']} projected keys"

    def exact_twin(self, q, k, v, *, causal=False):
        self._refuse(q, k, causal)
        projected_k, projected_v = self._projected(k, v, torch.float64)
        return reference_attention(q, projected_k, projected_v)

    def attention_weights(self, q, k, *, causal=False):
        """softmax(Q (E K)ᵀ/√D) F: the (…, N, N) weights the output applies to V (softmax weights times E where
        F = E). A random F's rows do not sum to one, so neither do these rows, and some weights are negative."""
        self._refuse(q, k, causal)
        key_projection, value_projection = self.projections(k.shape[-2], torch.float64, k.device)
        return softmax_weights(q, key_projection @ k.double()) @ value_projection

    def forward_flops(self, case) -> float:
        return low_rank_attention_flops(
            case.batch, case.heads, case.seq_len, case.head_dim, self.settings["k"], case.kv_heads
        )

    def backward_flops(self, case) -> float:
        return low_rank_attention_backward_flops(
            case.batch, case.heads, case.seq_len, case.head_dim, self.settings["k"], case.kv_heads
        )
