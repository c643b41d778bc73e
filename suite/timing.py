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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch


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


@dataclass(frozen=True)
class TimingPolicy:
    warmup_calls: int = 3
    min_repeats: int = 7
    max_repeats: int = 200
    budget_s: float = 1.0  # per case, timed calls only
    target_relative_ci: float = 0.01  # stop once the median's 95% interval is within ±1%
    noisy_relative_iqr: float = 0.10  # torch.utils.benchmark warns above this spread

    @classmethod
    def for_device(cls, device: str) -> TimingPolicy:
        # CPU timings on shared cores rarely tighten to ±1%; a short budget keeps CPU runs quick.
        return cls(budget_s=0.25, max_repeats=100) if device == "cpu" else cls()

    def adjusted(self, changes: Mapping[str, Any]) -> TimingPolicy:
        """This policy with some fields changed (values as numbers or as text), each checked against its
        bounds; ValueError names the field, the value and what is allowed."""
        values = {}
        for name, value in changes.items():
            if name not in ADJUSTABLE:
                raise ValueError(f"unknown key {name!r} (allowed: {', '.join(ADJUSTABLE)})")
            values[name] = _checked(name, value)
        policy = replace(self, **values)
        if policy.max_repeats < policy.min_repeats:
            raise ValueError(f"max_repeats {policy.max_repeats} is below min_repeats {policy.min_repeats} "
                             "(allowed: max_repeats >= min_repeats; set both)")
        return policy


# What a user may change, as (type, least value, whether the least is allowed, what it does).
ADJUSTABLE: dict[str, tuple[type, float, bool, str]] = {
    "warmup_calls": (int, 0, True, "untimed calls before the timed ones"),
    "min_repeats": (int, 1, True, "timed calls at least"),
    "max_repeats": (int, 1, True, "timed calls at most"),
    "budget_s": (float, 0, False, "seconds of timed calls after which a case stops, once min_repeats ran"),
    "target_relative_ci": (float, 0, True, "stop early once the median's 95% interval is within ± this "
                                           "fraction of it (0: never early)"),
    "noisy_relative_iqr": (float, 0, False, "IQR over median above which a row is marked noisy"),
}


def _checked(name: str, value: Any) -> int | float:
    kind, least, least_allowed, what = ADJUSTABLE[name]
    allowed = f"{'an integer' if kind is int else 'a number'} {'>=' if least_allowed else '>'} {least:g}: {what}"
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        number = kind(value.strip()) if isinstance(value, str) else kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not allowed (allowed: {allowed})") from None
    if not math.isfinite(number) or number < least or (number == least and not least_allowed):
        raise ValueError(f"{name}={value!r} is not allowed (allowed: {allowed})")
    return number


def describe(policy: Mapping[str, Any] | None) -> str | None:
    """A recorded policy in a few words (`3 warm-up, 7-200 repeats, 1 s, ±1%, noisy >10%`: the repeats stop after
    1 s of timed calls or once the median is known within ±1%), None where none was recorded."""
    if not policy:
        return None
    try:
        return (f"{policy['warmup_calls']} warm-up, {policy['min_repeats']}-{policy['max_repeats']} repeats, "
                f"{policy['budget_s']:g} s, ±{100 * policy['target_relative_ci']:g}%, "
                f"noisy >{100 * policy['noisy_relative_iqr']:g}%")
    except (KeyError, TypeError, ValueError):
        return str(dict(policy))



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


def warm_up(fn: Callable[[], object], device: torch.device, calls: int,
            before_each: Callable[[], object] | None = None) -> None:
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
