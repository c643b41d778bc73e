"""Peak device memory one call allocates beyond what was already allocated (inputs, caches)."""
from __future__ import annotations

from collections.abc import Callable

import torch


def peak_call_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str | None]:
    """(bytes, None) on CUDA; (None, reason) where the allocator keeps no peak statistics."""
    if device.type != "cuda":
        return None, f"peak memory is measured on CUDA only (device={device.type})"
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, None
