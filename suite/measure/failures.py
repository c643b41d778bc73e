"""Telling an out-of-memory failure from others, freeing what a failure left behind, and whether the device
survived it."""

from __future__ import annotations

import gc

import torch


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in message or "not enough memory" in message)


def free_after_failure(device: str) -> None:
    """After a failure only: the exception's frames may hold tensors in reference cycles.
    (gc.collect costs ~0.2 s, too much to pay on every row.)"""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def device_usable(device: str) -> bool:
    """False after a sticky CUDA error: then every later kernel launch in this process fails."""
    if device != "cuda":
        return True
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False
