"""The matmul throughput of this very GPU, measured, so rows can say what fraction of peak they reach."""

from __future__ import annotations

import torch

from .settings import TimingPolicy
from .timing import Measurement, measure


def measured_matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 8192) -> float:
    """Median TFLOP/s of a size³ matmul on random data (never zeros: they run faster)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    policy = TimingPolicy(warmup_calls=5, min_repeats=20, max_repeats=50, budget_s=2.0)
    timing: Measurement = measure(lambda: a @ b, device, policy)
    return 2 * size**3 / (timing.median * 1e-3) / 1e12


def measured_copy_gbytes_per_s(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Median GB/s of copying a buffer far larger than L2 (bytes read plus bytes written)."""
    generator = torch.Generator(device=device).manual_seed(0)
    source = torch.randn(nbytes // 4, dtype=torch.float32, device=device, generator=generator)
    target = torch.empty_like(source)
    policy = TimingPolicy(warmup_calls=3, min_repeats=20, max_repeats=50, budget_s=1.0)
    timing = measure(lambda: target.copy_(source), device, policy)
    return 2 * nbytes / (timing.median * 1e-3) / 1e9
