"""The matmul throughput of this very GPU, measured, so rows can say what fraction of peak they reach."""
from __future__ import annotations

import torch

from .timing import Measurement, TimingPolicy, measure


def measured_matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 8192) -> float:
    """Median TFLOP/s of a size³ matmul on random data (never zeros: they run faster)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    policy = TimingPolicy(warmup_calls=5, min_repeats=20, max_repeats=50, budget_s=2.0)
    timing: Measurement = measure(lambda: a @ b, device, policy)
    return 2 * size**3 / (timing.median * 1e-3) / 1e12
