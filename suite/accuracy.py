"""Agreement with the float64 reference: max-abs and relative-RMS error, judged per dtype."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Relative-RMS tolerances (‖out − ref‖ / ‖ref‖). bf16 rounds to ~3e-3 and fp16 to ~4e-4 per element
# and attention adds one rounding of P before PV; fp32 stays below TF32's ~3e-4, so enabling TF32
# by accident shows up as a mismatch.
REL_RMS_TOLERANCE = {"float64": 1e-10, "float32": 2e-4, "float16": 5e-3, "bfloat16": 3e-2}


@dataclass(frozen=True)
class Error:
    max_abs: float
    rel_rms: float


# The reference's RMS is floored here (inputs are unit normal, so outputs and gradients are far
# above it except where they vanish in theory): dQ at seq_len 1 is exactly zero, and a kernel's
# rounding residue there is judged as an absolute error instead of dividing by ~1e-16.
_RMS_FLOOR = 1e-3


def error(actual: torch.Tensor, expected: torch.Tensor) -> Error:
    diff = actual.double() - expected.double()
    floor = _RMS_FLOOR * max(1, expected.numel()) ** 0.5
    rel_rms = diff.norm().item() / max(expected.double().norm().item(), floor)
    return Error(max_abs=diff.abs().max().item() if diff.numel() else 0.0, rel_rms=rel_rms)


@dataclass(frozen=True)
class Verdict:
    errors: dict[str, Error]  # per tensor: "out", "dq", "dk", "dv"
    tolerance: float

    @property
    def worst(self) -> tuple[str, Error]:
        return max(self.errors.items(), key=lambda item: _nan_high(item[1].rel_rms))

    @property
    def max_abs(self) -> float:
        return max(_nan_high(e.max_abs) for e in self.errors.values())

    @property
    def ok(self) -> bool:
        return all(math.isfinite(e.rel_rms) and e.rel_rms <= self.tolerance for e in self.errors.values())

    def reason(self) -> str | None:
        if self.ok:
            return None
        name, worst = self.worst
        if not math.isfinite(worst.rel_rms):
            return f"{name} has non-finite values"
        return f"{name} rel_rms_err {worst.rel_rms:.3g} > tolerance {self.tolerance:.3g}"


def _nan_high(x: float) -> float:
    return math.inf if math.isnan(x) else x


def judge(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: str) -> Verdict:
    return Verdict({name: error(actual[name], expected[name]) for name in expected}, REL_RMS_TOLERANCE[dtype])
