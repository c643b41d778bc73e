"""Performer attention with FAVOR+ (Choromanski et al., 2020): positive orthogonal random features.

softmax(QKᵀ/√D)V is approximated by linear attention with the feature map

    φ(x) = exp(Wx' − ‖x'‖²/2) / √m,   x' = x / D^¼,   so that E[φ(x)ᵀφ(y)] = exp(x'ᵀy') = exp(xᵀy/√D)

where W holds m rows drawn as blocks of orthogonal directions with chi-distributed norms (each row
is marginally standard Gaussian, so the estimator stays unbiased; orthogonality lowers its variance).
For numerical stability each query's features are divided by exp(max_f (Wq')_f) and all keys' by one
shared exp(max over keys and features): both factors cancel between numerator and denominator.
Causal masking uses the chunked prefix sums of linear.py.

Options: `features` (m, default 256), `seed` (default 0), `chunk` (default 64). Features are drawn once
per (seed, head_dim, features) on first use and reused, outside the timed calls.
"""
from __future__ import annotations

import math

import torch

from .base import Implementation, Option, device_reasons, expand_kv, must_be_positive
from .flops import linear_attention_flops, random_feature_flops
from .linear import linear_attention, linear_weights, quadratic_linear_attention


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


def favor_features(x: torch.Tensor, projection: torch.Tensor, *, is_query: bool, stabilize: bool = True) -> torch.Tensor:
    """φ(x) for x (B, H, N, D) and projection (m, D) -> (B, H, N, m), computed in float32 or wider."""
    compute = torch.promote_types(x.dtype, torch.float32)
    x = x.to(compute) * x.shape[-1] ** -0.25
    logits = x @ projection.to(compute).T - (x * x).sum(-1, keepdim=True) / 2
    if stabilize:
        # Constant shifts cancel in the ratio; detached so they do not enter the gradient.
        shift = logits.amax(-1, keepdim=True) if is_query else logits.amax((-2, -1), keepdim=True)
        logits = logits - shift.detach()
    return torch.exp(logits) / math.sqrt(projection.shape[0])


class PerformerAttention(Implementation):
    family = "performer"
    options = {
        "features": Option(default=256, parse=int, check=must_be_positive, help="features: random features m, a positive integer"),
        "seed": Option(default=0, parse=int, help="seed: an integer"),
        "chunk": Option(default=64, parse=int, check=must_be_positive, help="chunk: tokens per causal chunk, a positive integer"),
    }

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self._projections: dict[tuple, torch.Tensor] = {}

    def projection(self, head_dim: int, device: torch.device) -> torch.Tensor:
        key = (head_dim, device)
        if key not in self._projections:
            drawn = orthogonal_random_features(self.settings["features"], head_dim, self.settings["seed"])
            self._projections[key] = drawn.to(device)
        return self._projections[key]

    def supports(self, case) -> list[str]:
        return device_reasons(case, {"cpu", "cuda"})

    def __call__(self, q, k, v, *, causal=False):
        k, v = expand_kv(q, k, v)
        projection = self.projection(q.shape[-1], q.device)
        fq = favor_features(q, projection, is_query=True).to(q.dtype)
        fk = favor_features(k, projection, is_query=False).to(k.dtype)
        return linear_attention(fq, fk, v, causal=causal, chunk=self.settings["chunk"])

    def exact_twin(self, q, k, v, *, causal=False):
        k, v = expand_kv(q, k, v)
        projection = self.projection(q.shape[-1], q.device)
        q, k, v = q.double(), k.double(), v.double()
        fq = favor_features(q, projection, is_query=True)
        fk = favor_features(k, projection, is_query=False)
        return quadratic_linear_attention(fq, fk, v, causal=causal)

    def attention_weights(self, q, k, *, causal=False):
        projection = self.projection(q.shape[-1], q.device)
        fq = favor_features(q.double(), projection, is_query=True)
        fk = favor_features(k.double(), projection, is_query=False)
        return linear_weights(fq, fk, causal=causal)

    def forward_flops(self, batch, heads, seq_len, head_dim, causal):
        m = self.settings["features"]
        return random_feature_flops(batch, heads, seq_len, head_dim, m) + linear_attention_flops(batch, heads, seq_len, head_dim, m)
