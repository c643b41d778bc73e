"""Telling an out-of-memory failure from others, and freeing what a failure left behind."""
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
