"""Timing one call: warm-up, repeats until the median is tight or the budget is spent, raw times kept.

On CUDA each repeat is bracketed by CUDA events after an L2 flush (a write of twice the L2 size), so
no repeat reads inputs left in cache by the one before. On CPU a monotonic clock times the same loop,
without a flush: evicting a last-level cache of hundreds of MB per repeat would cost more than the
cases, so CPU times are warm-cache.
The stopping rule follows torch.utils.benchmark's spirit: keep the raw samples, derive statistics.
"""

from __future__ import annotations

import bisect
import heapq
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
        lo, hi = median_ci_ranks(len(ordered))
        return ordered[lo], ordered[hi]

    def median_is_tight(self, relative: float) -> bool:
        return is_tight(self.median_ci(), self.median, relative)


def median_ci_ranks(n: int) -> tuple[int, int]:
    """The ranks (0-based, in sorted order) of the bounds of the median's ~95% interval among `n` samples."""
    half = 1.96 * math.sqrt(n) / 2
    return max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)


def is_tight(interval: tuple[float, float], median: float, relative: float) -> bool:
    lo, hi = interval
    return (hi - lo) / 2 <= relative * median


class RunningMedianInterval:
    """The median and the bounds of its ~95% interval (Measurement.median_ci) of the samples added so far,
    kept up to date as each arrives, so that the stopping rule stays cheap at a million repeats (sorting every
    sample at each repeat made it quadratic). The samples between the interval's bounds, about 2√n of n, are kept
    sorted; those below in a max-heap, those above in a min-heap: a sample costs O(log n) comparisons."""

    def __init__(self) -> None:
        self.count = 0
        self._below: list[float] = []  # negated, so that heapq's min is their max
        self._between: list[float] = []  # sorted: ranks lo..hi
        self._above: list[float] = []

    def add(self, sample: float) -> None:
        self.count += 1
        if self._below and sample < -self._below[0]:
            heapq.heappush(self._below, -sample)
        elif self._above and self._above[0] < sample:
            heapq.heappush(self._above, sample)
        else:
            bisect.insort(self._between, sample)
        self._rebalance()

    def _rebalance(self) -> None:
        """Moves samples across the bounds until exactly ranks lo..hi lie between them. The surplus goes in first,
        so that the middle holds enough for both sides' shortfall."""
        lo, hi = median_ci_ranks(self.count)
        above = self.count - 1 - hi
        while len(self._below) > lo:
            self._between.insert(0, -heapq.heappop(self._below))
        while len(self._above) > above:
            self._between.append(heapq.heappop(self._above))
        while len(self._below) < lo:
            heapq.heappush(self._below, -self._between.pop(0))
        while len(self._above) < above:
            heapq.heappush(self._above, self._between.pop())

    def interval(self) -> tuple[float, float]:
        return self._between[0], self._between[-1]

    @property
    def median(self) -> float:
        """As statistics.median computes it: the middle sample, or the mean of the two middle ones."""
        middle = self.count // 2 - len(self._below)  # the median's ranks always lie between the bounds
        if self.count % 2:
            return self._between[middle]
        return (self._between[middle - 1] + self._between[middle]) / 2

    def is_tight(self, relative: float) -> bool:
        return is_tight(self.interval(), self.median, relative)


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
    middle = RunningMedianInterval()
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
        middle.add(elapsed)
        spent += elapsed / 1e3
        if result.repeats >= policy.min_repeats and (
            spent >= policy.budget_s or middle.is_tight(policy.target_relative_ci)
        ):
            break
    return result
