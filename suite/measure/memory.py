"""Peak memory one call allocates beyond what was already allocated (inputs, caches).

CUDA: the caching allocator's own peak statistics. CPU: PyTorch's CPU allocator keeps no statistics, but
it reports every allocation and free to the profiler when memory profiling is on; their running sum over
the call, in order, peaks where the call held the most. Both count what the call allocates through PyTorch
(tensors, workspaces from its allocator), not memory a library such as oneDNN takes for itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from .quiet_profiler import start_quietly, stop_quietly


def peak_call_memory(fn: Callable[[], object], device: torch.device) -> tuple[int | None, str | None]:
    """(bytes, None), or (None, reason) where it could not be measured."""
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    if device.type == "cpu":
        return _cpu_peak(fn)
    return None, f"peak memory is measured on CUDA and CPU only (device={device.type})"


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> tuple[int, None]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, None


def _cpu_peak(fn: Callable[[], object]) -> tuple[int | None, str | None]:
    if torch.autograd._profiler_enabled():  # a second profiler would end the first one's session
        return None, "CPU peak memory not measured: another profiler is recording this process"
    # autograd's profiler, which torch.profiler wraps: the wrapper's start imports TorchInductor (~1.4 s on a CPU).
    recorder = torch.autograd.profiler.profile(use_cpu=True, profile_memory=True)
    try:
        start_quietly(recorder)
    except Exception as error:  # noqa: BLE001 - e.g. a torch built without kineto: the row stands without the figure
        return None, _not_measured("the profiler did not start", error)
    try:
        fn()
    except BaseException:  # the call's own failure is the row's; the profiler must not outlive it
        with contextlib.suppress(Exception):
            stop_quietly(recorder)
        raise
    try:  # the timings are already taken: a profiler failure costs this figure only, not the row
        stop_quietly(recorder)
        changes = sorted(
            (
                (event.start_ns(), event.nbytes())
                for event in recorder.kineto_results.events()
                if event.name() == "[memory]"
            ),
            key=lambda change: change[0],
        )  # stable: same-time order kept
    except Exception as error:  # noqa: BLE001
        return None, _not_measured("the profiler's record could not be read", error)
    return running_peak(nbytes for _, nbytes in changes), None


def _not_measured(what: str, error: BaseException) -> str:
    return f"CPU peak memory not measured: {what} ({type(error).__name__}: {' '.join(str(error).split())[:200]})"


def running_peak(changes: Iterator[int] | list[int]) -> int:
    """The highest running sum of allocations (positive) and frees (negative), from zero."""
    held = peak = 0
    for nbytes in changes:
        held += nbytes
        peak = max(peak, held)
    return peak
