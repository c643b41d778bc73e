"""Timing one call: warm-up, repeats until the median is tight or the budget is spent, raw times kept.

On CUDA each repeat is bracketed by CUDA events after an L2 flush (a write of twice the L2 size), so
no repeat reads inputs left in cache by the one before. On CPU a monotonic clock times the same loop,
without a flush: evicting a last-level cache of hundreds of MB per repeat would cost more than the
cases, so CPU times are warm-cache.
The stopping rule follows torch.utils.benchmark's spirit: keep the raw samples, derive statistics.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .settings import TimingPolicy


@dataclass
class Measurement:
    """Raw per-repeat times in milliseconds; statistics are derived on demand. On CUDA, `host_ms` holds how
    long the host took to issue each timed call (Python, dispatch, launches, any synchronization inside)."""

    times_ms: list[float] = field(default_factory=list)
    host_ms: list[float] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def host_median(self) -> float | None:
        return statistics.median(self.host_ms) if self.host_ms else None

    @property
    def iqr(self) -> float:
        if len(self.times_ms) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q3 - q1

    @property
    def relative_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else 0.0

    def median_ci(self) -> tuple[float, float]:
        """A distribution-free ~95% interval for the median, from order statistics."""
        ordered = sorted(self.times_ms)
        n = len(ordered)
        half = 1.96 * math.sqrt(n) / 2
        lo = max(0, math.floor(n / 2 - half))
        hi = min(n - 1, math.ceil(n / 2 + half) - 1)
        return ordered[lo], ordered[hi]

    def median_is_tight(self, relative: float) -> bool:
        lo, hi = self.median_ci()
        return (hi - lo) / 2 <= relative * self.median


class _L2Flush:
    """A buffer twice the L2 size; zeroing it evicts whatever the previous repeat left in L2."""

    def __init__(self, device: torch.device):
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
        self.buffer = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


_flushes: dict[torch.device, _L2Flush] = {}


def _l2_flush(device: torch.device) -> _L2Flush:
    if device not in _flushes:
        _flushes[device] = _L2Flush(device)
    return _flushes[device]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_wall(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call including device completion, in ms (used for first-call cost)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def warm_up(
    fn: Callable[[], object], device: torch.device, calls: int, before_each: Callable[[], object] | None = None
) -> None:
    """Untimed calls (caches, allocator, clocks), then wait for the device."""
    for _ in range(calls):
        if before_each:
            before_each()
        fn()
    synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    policy: TimingPolicy,
    before_each: Callable[[], object] | None = None,
) -> Measurement:
    """Time `fn` repeatedly; `before_each` runs outside the timed region (e.g. clearing grads)."""
    warm_up(fn, device, policy.warmup_calls, before_each)
    result = Measurement()
    spent = 0.0
    cuda = device.type == "cuda"
    if cuda:
        flush = _l2_flush(device)
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while result.repeats < policy.max_repeats:
        if before_each:
            before_each()
        if cuda:
            flush()
            start_event.record()
            issued_from = time.perf_counter()
            fn()
            result.host_ms.append((time.perf_counter() - issued_from) * 1e3)
            end_event.record()
            end_event.synchronize()
            elapsed = start_event.elapsed_time(end_event)
        else:
            start = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - start) * 1e3
        result.times_ms.append(elapsed)
        spent += elapsed / 1e3
        if result.repeats >= policy.min_repeats and (
            spent >= policy.budget_s or result.median_is_tight(policy.target_relative_ci)
        ):
            break
    return result
