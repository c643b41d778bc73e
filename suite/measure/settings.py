"""How a run measures: the timing policy a user may adjust (warm-up, repeats, budget, stopping rule), and the
run's settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


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
            raise ValueError(
                f"max_repeats {policy.max_repeats} is below min_repeats {policy.min_repeats} "
                "(allowed: max_repeats >= min_repeats; set both)"
            )
        return policy


# What a user may change, as (type, least value, whether the least is allowed, what it does).
ADJUSTABLE: dict[str, tuple[type, float, bool, str]] = {
    "warmup_calls": (int, 0, True, "untimed calls before the timed ones"),
    "min_repeats": (int, 1, True, "timed calls at least"),
    "max_repeats": (int, 1, True, "timed calls at most"),
    "budget_s": (float, 0, False, "seconds of timed calls after which a case stops, once min_repeats ran"),
    "target_relative_ci": (
        float,
        0,
        True,
        "stop early once the median's 95% interval is within ± this fraction of it (0: never early)",
    ),
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
        return (
            f"{policy['warmup_calls']} warm-up, {policy['min_repeats']}-{policy['max_repeats']} repeats, "
            f"{policy['budget_s']:g} s, ±{100 * policy['target_relative_ci']:g}%, "
            f"noisy >{100 * policy['noisy_relative_iqr']:g}%"
        )
    except (KeyError, TypeError, ValueError):
        return str(dict(policy))


@dataclass
class RunSettings:
    policies: dict[str, TimingPolicy] = field(
        default_factory=lambda: {device: TimingPolicy.for_device(device) for device in ("cpu", "cuda")}
    )
    # FLOPs the float64 reference may cost per case: beyond, it covers only as many (batch, head)
    # slices as fit (see checked_slices.py), and none if one slice does not fit. Every slice of a
    # 64K-token forward+backward case (head dim 128, 16 heads) would cost ~6× the GPU budget.
    max_reference_flops: dict[str, float] = field(default_factory=lambda: {"cpu": 2e10, "cuda": 2e13})
    seed: int = 0
    peak_tflops: dict[str, float] = field(default_factory=dict)  # dtype -> measured matmul peak
    peak_gbytes_per_s: float | None = None  # measured copy bandwidth of the device
    cuda_graph: bool = False  # also time forward rows replayed from a CUDA graph (cuda_graph.py)
    energy: bool = False  # also measure each row's energy per call through NVML (energy.py)
    cpu_load: dict[str, Any] | None = None  # on a CPU, how busy the machine was before the run (cpu_contention.py)
