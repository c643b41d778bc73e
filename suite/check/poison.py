"""Garbage, not the right answer, in the memory a checked call is given: an output element it never
writes must fail the check.

Every implementation of a case runs on the same inputs, so the memory freed by the one before (its
output, its gradients, its timed calls' outputs) holds the right answer, and an allocator hands the
next implementation a block of the same size: a kernel that leaves elements unwritten (a tail tile at a
length that is not a multiple of its tile, say) would return them correct and pass. Seen on the CPU: a
forward that never wrote its last query row passed the float32 check after `sdpa` at 17, 257 and 1000
tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import warnings
from collections.abc import Iterator
from functools import cache

import torch

# Every byte of poisoned memory: NaN in float16, about 3.4e38 in bfloat16 and float32, never a plausible
# attention output, and recognisable afterwards (see never_written). glibc fills each allocation with the
# complement of its perturb byte.
POISON_BYTE = 0x7F
_GLIBC_PERTURB = POISON_BYTE ^ 0xFF
_M_PERTURB = -6  # mallopt's parameter number, from glibc's malloc.h


@contextlib.contextmanager
def poisoned_allocations(device: torch.device | str) -> Iterator[None]:
    """Around a checked call, never a timed one. On CUDA, every free block the caching allocator holds
    for this stream is filled first. On the CPU (glibc), malloc fills every allocation made inside: the
    call pays those fills, a little of its `first_call_ms`."""
    device = torch.device(device)
    if device.type == "cuda":
        _poison_cuda_cache(device)
        yield
        return
    libc = _glibc()
    if libc is None or not _glibc_fills_torch_allocations():  # nothing to poison with: the check runs as before
        yield
        return
    _perturb(libc, True)
    try:
        yield
    finally:
        _perturb(libc, False)


def poisoning(device: torch.device | str) -> str:
    """How checked calls on `device` are poisoned, in words, or why they are not."""
    if torch.device(device).type == "cuda":
        return "free blocks of the CUDA caching allocator filled before each checked call"
    if _glibc() is None:
        return "off: this C library has no malloc perturbation (glibc's), so unwritten elements may pass"
    if not _glibc_fills_torch_allocations():
        return "off: glibc's malloc perturbation does not reach torch's allocations here (another allocator preloaded?)"
    return "glibc malloc fills each allocation inside a checked call"


@cache
def _glibc_fills_torch_allocations() -> bool:
    libc = _glibc()
    _perturb(libc, True)
    try:
        probe = torch.empty(4096, dtype=torch.uint8)
    finally:
        _perturb(libc, False)
    return bool((probe == POISON_BYTE).all())


def _perturb(libc: ctypes.CDLL, on: bool) -> None:
    """glibc's malloc perturbation on, or back to what the environment set (MALLOC_PERTURB_, usually off)."""
    libc.mallopt(_M_PERTURB, _GLIBC_PERTURB if on else int(os.environ.get("MALLOC_PERTURB_", "0") or 0))


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    return libc


def free_block_sizes(snapshot: list[dict], device_index: int, stream: int) -> list[int]:
    """Sizes of the caching allocator's free blocks that this device and stream can be given (not those of a
    CUDA graph's private pool), largest first: requested in that order, each request is given the free
    block of its own size (the allocator picks the smallest that fits, and every larger one is taken by
    then), so each is filled once."""
    return sorted(
        (
            block["size"]
            for segment in snapshot
            if segment.get("device") == device_index
            and segment.get("stream", stream) == stream
            and tuple(segment.get("segment_pool_id") or (0, 0)) == (0, 0)
            for block in segment["blocks"]
            if block["state"] == "inactive"
        ),
        reverse=True,
    )


def _poison_cuda_cache(device: torch.device) -> None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        sizes = free_block_sizes(torch.cuda.memory_snapshot(), index, torch.cuda.current_stream(index).cuda_stream)
    except (RuntimeError, KeyError, TypeError) as error:  # an allocator this code does not know: check unpoisoned
        _warn_once(f"attnbench: cannot read the CUDA allocator's free blocks ({error}); checks run unpoisoned")
        return
    held = []
    try:
        for size in sizes:
            held.append(torch.empty(size, dtype=torch.uint8, device=device).fill_(POISON_BYTE))
    except torch.OutOfMemoryError:  # best effort: what was filled stays filled
        pass
    del held


def never_written(tensor: torch.Tensor) -> int:
    """Elements of a checked call's output that still hold the poison, byte for byte."""
    if tensor.numel() == 0 or tensor.dtype == torch.bool:
        return 0
    # A fresh copy with unit stride: a byte view needs it, and neither contiguous() nor reshape() promises it
    # where a dim has size 1 (a head dim of 1 gave strides (9, 3, 1, 3), a slice of one token (384, 128, 1, 1)).
    flat = tensor.detach().reshape(-1).clone(memory_format=torch.contiguous_format)
    raw = flat.view(torch.uint8).view(-1, tensor.element_size())
    return int((raw == POISON_BYTE).all(dim=1).sum().item())


@cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
