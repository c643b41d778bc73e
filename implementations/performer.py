"""Performer attention with FAVOR+ (Choromanski et al., 2020): positive orthogonal random features.

softmax(QKᵀ/√D)V is approximated by linear attention with the feature map

    φ(x) = exp(Wx' − ‖x'‖²/2) / √m,   x' = x / D^¼,   so that E[φ(x)ᵀφ(y)] = exp(x'ᵀy') = exp(xᵀy/√D)

where W holds m rows drawn as blocks of orthogonal directions with chi-distributed norms (each row
is marginally standard Gaussian, so the estimator stays unbiased; orthogonality lowers its variance).
For numerical stability each query's features are divided by exp(max_f (Wq')_f) and all keys' by one
shared exp(max over keys and features): both factors cancel between numerator and denominator. Keys'
features then get KEY_FEATURE_FLOOR added, as the Performer reference code adds its
`numerical_stabilizer`: with large-norm keys, the keys a causal query sees can all fall below
float32's range under the shared shift, and its ratio was 0/0 (NaN, seen in bfloat16 at logits of
standard deviation 30); with the floor it is their plain average instead. The reference's 1e-6 moved
the error against softmax by 1.5% on i.i.d. inputs; 1e-12 prevents the 0/0 as well and moves it by
1e-7. The exact twin has the same floor.
Causal masking uses the chunked prefix sums of linear.py.

Precision: the projection multiplies in the input dtype (W·D^-¼ rounded to it; the exact twin keeps
W in float64, so that rounding counts as error) into float32 logits; features and the linear-attention
matmuls stay in float32. Half precision there is not good enough for this feature map: its gradients
with respect to q and k are differences of nearly equal feature-weighted sums, and with bfloat16
matmuls they were 5–15% off the exact twin at a few tokens (float16 features also underflow: their
smallest normal, 6e-5, is above typical stabilized key features).

Options: `features` (m, default 256), `seed` (default 0), `chunk` (default 128), `compile` (default
false; see compiling.py). Features are drawn once per (seed, head_dim, features) on first use and
reused, outside the timed calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
from .documents import per_document
from .flops import linear_attention_flops, random_feature_flops
from .linear import (
    PER_DOCUMENT,
    ChangedFeatures,
    KeySums,
    decoding_step,
    key_sums,
    linear_attention,
    linear_weights,
    padded_causal_len,
    quadratic_linear_attention,
)


def orthogonal_random_features(features: int, head_dim: int, seed: int) -> torch.Tensor:
    """(features, head_dim) float64: stacked orthogonal blocks, rows rescaled to Gaussian norms."""
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-features // head_dim)):
        gaussian = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float64)
        orthogonal, _ = torch.linalg.qr(gaussian)
        blocks.append(orthogonal.T)
    directions = torch.cat(blocks)[:features]
    norms = torch.randn(features, head_dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return directions * norms[:, None]


KEY_FEATURE_FLOOR = 1e-12  # added to each key feature after the shift (relative to the largest, 1)


def favor_features(
    x: torch.Tensor, projection: torch.Tensor, *, is_query: bool, stabilize: bool = True
) -> torch.Tensor:
    """φ(x) as defined above, for x (B, H, N, D) and a projection (m, D) already scaled by D^-¼.

    The plain statement, in float32 or wider: the exact twin and the tests use it.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    x = x.to(compute)
    logits = x @ projection.to(compute).T - (x * x).sum(-1, keepdim=True) / (2 * math.sqrt(x.shape[-1]))
    if stabilize:
        # Constant shifts cancel in the ratio; detached so they do not enter the gradient.
        shift = logits.amax(-1, keepdim=True) if is_query else logits.amax((-2, -1), keepdim=True)
        logits = logits - shift.detach()
    floor = KEY_FEATURE_FLOOR if stabilize and not is_query else 0.0
    return (torch.exp(logits) + floor) / math.sqrt(projection.shape[0])


_MM_HAS_OUT_DTYPE = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 8)


class _WideProjection(torch.autograd.Function):
    """x @ Pᵀ with half-precision inputs and a float32 product: tensor-core speed, float32 logits.

    Rounding the logits to bfloat16 would put a ~2% error on the largest features (a logit of 10 is
    off by up to 0.02), which is most of the output's error budget. torch.mm's `out_dtype` (CUDA,
    torch ≥ 2.8) keeps the float32 accumulator but has no gradient formula, so the one gradient
    needed (the projection is fixed) is written here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(projection)
        flat = x.reshape(-1, x.shape[-1])
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _MM_HAS_OUT_DTYPE:
            logits = torch.mm(flat, projection.T, out_dtype=torch.float32)
        else:
            wide = torch.promote_types(x.dtype, torch.float32)
            logits = flat.to(wide) @ projection.to(wide).T
        return logits.view(*x.shape[:-1], projection.shape[0])

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        (projection,) = ctx.saved_tensors
        return grad_logits.to(projection.dtype) @ projection, None


def favor_features_fast(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool) -> torch.Tensor:
    """φ(x) up to factors that linear attention's ratio cancels, in float32 (or wider).

    Linear attention divides φ(q_i)ᵀS by φ(q_i)ᵀz, so any positive factor per query and one factor
    shared by all keys cancel, in value and in gradient. A query's features, exp(Wq' − ‖q'‖²/2)/√m,
    are therefore taken as softmax_f(Wq'): one fused, stable pass with a fused backward (with no gradient to
    record, in place over the logits). Keys keep their norm term, which does change the result, and one
    shared shift by the largest exponent (favor_key_features). Logits come from one tensor-core matmul into
    float32.
    """
    if not is_query:
        return favor_key_features(x, projection)[0]
    logits = _WideProjection.apply(x, projection)
    # No gradient to keep the logits for: the same fused softmax writes over them (m float32 values a token, the
    # largest tensor of a forward call). Its kernels read a row before writing it, on CPU and CUDA alike.
    return torch.softmax(logits, dim=-1) if logits.requires_grad else torch.softmax(logits, dim=-1, out=logits)


def favor_key_features(
    x: torch.Tensor, projection: torch.Tensor, at_least: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys' features exp(Wx' − ‖x'‖²/2 − s) + KEY_FEATURE_FLOOR and the shift s (B, H, 1, 1) they were taken
    under: the largest exponent over these keys, or `at_least` where that is larger (the shift of keys summed
    in an earlier decoding step, whose sums are then scaled by exp(at_least − s))."""
    logits = _WideProjection.apply(x, projection)
    with torch.no_grad():
        row_max = logits.amax(-1, keepdim=True)
    sq_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=logits.dtype).square()
    half_sq_norm = sq_norm / (2 * math.sqrt(x.shape[-1]))
    shift = (row_max - half_sq_norm).amax(-2, keepdim=True).detach()  # max over keys of logits − norm term
    if at_least is not None:
        shift = torch.maximum(shift, at_least)
    # Out of place under autograd (the projection's output is a view it will not let us modify); without it,
    # the features take the logits' memory.
    exponents = logits - (half_sq_norm + shift) if logits.requires_grad else logits.sub_(half_sq_norm + shift)
    return _FlooredExp.apply(exponents), shift


class _FlooredExp(torch.autograd.Function):
    """exp(x) + KEY_FEATURE_FLOOR, keeping only its output for the gradient (exp's: the output less the floor).

    Autograd's exp keeps exp(x) and the sum is a second tensor of m float32 values a key, both held until the
    backward. exp(x) is recovered exactly where it is above ~2e-5 (the floor is under half its last place),
    and below that to within half the floor's last place (~5e-20). Not subtracting the floor would not do:
    at large logits most key features sit near it, and keys' gradients moved by up to 55%.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(x)  # in place: callers pass a temporary of their own
        features = x.exp_().add_(KEY_FEATURE_FLOOR)
        ctx.save_for_backward(features)
        return features

    @staticmethod
    def backward(ctx, grad_features: torch.Tensor) -> torch.Tensor:
        (features,) = ctx.saved_tensors
        return grad_features * (features - KEY_FEATURE_FLOOR)


@dataclass(frozen=True)
class EarlierKeys:
    """What a decoding step needs of the keys before its first query, per key/value head: their sums, the shift
    their features were taken under (B, KV, 1, 1), and their values' sum (B, KV, D) (for the floor, which is not
    rescaled when new keys move the shift)."""

    sums: KeySums
    shift: torch.Tensor
    value_sum: torch.Tensor


class PerformerAttention(Implementation):
    family = "performer"
    # With one key, dq and dk vanish in theory, but as a difference of two feature-weighted sums of
    # size ~|W·D^-¼|·|v|·|dout| (m = 256 terms each) rather than softmax's ~|k|·|v|·|dout|/√D: rounding
    # leaves up to ~3× softmax's allowance in float32 (largest seen over 120 random cases at D = 16..128).
    atol_scale = 8.0
    options = {
        "features": Option(
            default=256, parse=int, check=must_be_positive, help="features: random features m, a positive integer"
        ),
        "seed": Option(default=0, parse=int, help="seed: an integer"),
        "chunk": Option(
            default=128, parse=int, check=must_be_positive, help="chunk: tokens per causal chunk, a positive integer"
        ),
        "compile": COMPILE_OPTION,
        "state": STATE_OPTION,
    }

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._projections: dict[tuple, torch.Tensor] = {}
        self._attend = CompileOnRequest(self._attend_eager, self.settings["compile"])
        self._step = CompileOnRequest(self._step_eager, self.settings["compile"])
        self._decode = CompileOnRequest(self._decode_eager, self.settings["compile"])
        self._carried: CarriedState[EarlierKeys] = CarriedState()

    def projection(self, head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """W·D^-¼ in `dtype`, drawn in float64 once and rounded per dtype."""
        key = (head_dim, dtype, device)
        if key not in self._projections:
            drawn = orthogonal_random_features(self.settings["features"], head_dim, self.settings["seed"])
            self._projections[key] = (drawn * head_dim**-0.25).to(device=device, dtype=dtype)
        return self._projections[key]

    def supports(self, case) -> list[str]:
        return device_reasons(case, {"cpu", "cuda"}) + carried_state_reasons(case, self.settings["state"])

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        # Drawn here, outside the compiled function, so compilation sees a plain tensor argument.
        projection = self.projection(q.shape[-1], q.dtype, q.device)
        if doc_lens is not None:  # packed documents: each its own call, features and running state its own
            return per_document(lambda *part: self._attend(*part, projection, causal), q, k, v, doc_lens)
        earlier = k.shape[-2] - q.shape[-2]
        if not earlier:
            return self._attend(q, k, v, projection, causal)
        if not carries(self.settings["state"], q, k, v):
            return self._decode(q, k, v, projection, causal)
        kept = self._carried.get(  # the projection follows the queries' dtype
            (k, v), (earlier, q.dtype), lambda: self._earlier_keys(k[..., :earlier, :], v[..., :earlier, :], projection)
        )
        return self._step(
            q,
            k[..., earlier:, :],
            v[..., earlier:, :],
            projection,
            kept.sums.state,
            kept.sums.norm,
            kept.shift,
            kept.value_sum,
            earlier,
            causal,
        )

    def _attend_eager(self, q, k, v, projection: torch.Tensor, causal: bool) -> torch.Tensor:
        fk = favor_features_fast(self._padded_keys(k, causal), projection, is_query=False)
        return linear_attention(
            q,
            fk,
            v,
            causal=causal,
            chunk=self.settings["chunk"],
            mm=fk.dtype,
            query_map=lambda rows: favor_features_fast(rows, projection, is_query=True),
        )

    def _padded_keys(self, k: torch.Tensor, causal: bool) -> torch.Tensor:
        """Keys padded as causal linear_attention pads them, by repeating the last one: the padding is then taken
        in the keys' dtype and width, not as float32 features (8 input tensors' worth at 256 features, D64 bf16),
        and leaves the keys' shared shift as it is, which zero keys could raise until every real feature
        underflowed. No real query sees a padded key, so its value does not matter otherwise."""
        seq_len = k.shape[-2]
        pad = padded_causal_len(seq_len, self.settings["chunk"]) - seq_len if causal else 0
        return torch.cat([k, k[..., -1:, :].expand(*k.shape[:-2], pad, k.shape[-1])], dim=-2) if pad else k

    @staticmethod
    def _earlier_keys(k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor) -> EarlierKeys:
        """What a decoding step needs of the keys before the first query, per key/value head."""
        fk, shift = favor_key_features(k, projection)
        return EarlierKeys(key_sums(fk, v, mm=fk.dtype), shift, v.sum(-2, dtype=fk.dtype))

    def _decode_eager(self, q, k, v, projection: torch.Tensor, causal: bool) -> torch.Tensor:
        """Fewer queries than keys, the earlier keys' state built from the cache in this call (`state=rebuilt`)."""
        earlier = k.shape[-2] - q.shape[-2]
        kept = self._earlier_keys(k[..., :earlier, :], v[..., :earlier, :], projection)
        return self._step_eager(
            q,
            k[..., earlier:, :],
            v[..., earlier:, :],
            projection,
            kept.sums.state,
            kept.sums.norm,
            kept.shift,
            kept.value_sum,
            earlier,
            causal,
        )

    def _step_eager(
        self,
        q,
        k,
        v,
        projection: torch.Tensor,
        state: torch.Tensor,
        norm: torch.Tensor,
        shift: torch.Tensor,
        value_sum: torch.Tensor,
        earlier: int,
        causal: bool,
    ) -> torch.Tensor:
        """A decoding step: the new tokens' keys k and values v (B, KV, Q, D), the `earlier` keys' carried sums. All
        keys' features must share one shift, as in the exact twin: the new keys take the larger of theirs and the
        sums', and the sums' features exp(·) + floor become r·exp(·) + floor, r = exp(old − new shift) ≤ 1. Scaling
        the floor too made it r times smaller for the earlier keys: where their features sit near it (keys of
        large norm), a 300-token prefill after 20 cached keys was 12% off the twin."""
        fq = favor_features_fast(q, projection, is_query=True)
        fk, new_shift = favor_key_features(self._padded_keys(k, causal), projection, at_least=shift)
        factor = torch.exp(shift - new_shift)
        changed = ChangedFeatures(factor, KEY_FEATURE_FLOOR * (1 - factor), value_sum, earlier)
        return decoding_step(
            fq, fk, v, KeySums(state, norm), causal=causal, chunk=self.settings["chunk"], mm=fq.dtype, changed=changed
        )

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        documents = "" if doc_lens is None else PER_DOCUMENT
        return self._attend.backend + carried_description(self.settings["state"], q, k) + documents

    def exact_twin(self, q, k, v, *, causal=False, doc_lens=None):
        if doc_lens is not None:  # each document's features under its own shift, as the calls take them
            return per_document(lambda *part: self.exact_twin(*part, causal=causal), q, k, v, doc_lens)
        k, v = expand_kv(q, k, v)
        projection = self.projection(q.shape[-1], torch.float64, q.device)
        q, k, v = q.double(), k.double(), v.double()
        fq = favor_features(q, projection, is_query=True)
        fk = favor_features(k, projection, is_query=False)
        return quadratic_linear_attention(fq, fk, v, causal=causal)

    def attention_weights(self, q, k, *, causal=False):
        projection = self.projection(q.shape[-1], torch.float64, q.device)
        fq = favor_features(q.double(), projection, is_query=True)
        fk = favor_features(k.double(), projection, is_query=False)
        return linear_weights(fq, fk, causal=causal)

    def forward_flops(self, case) -> float:
        m, q_len, kv_heads = self.settings["features"], case.q_len, case.kv_heads
        keys = summed_keys(self.settings["state"], case.seq_len, q_len)
        features = random_feature_flops(case.batch, case.heads, keys, case.head_dim, m, q_len, kv_heads)
        return features + linear_attention_flops(case.batch, case.heads, keys, case.head_dim, m, q_len, kv_heads)

    def carried_state_bytes(self, case) -> int | None:
        wide = torch.promote_types(DTYPES[case.dtype], torch.float32)  # features and their sums stay wide
        sums = carried_bytes(self.settings["state"], case, features=self.settings["features"], dtype=wide)
        value_sum = case.batch * (case.kv_heads or case.heads) * case.head_dim * wide.itemsize
        return None if sums is None else sums + value_sum
