"""Agreement with a float64 reference: max-abs and relative-RMS error, judged per dtype.

A tensor passes when RMS(out − ref) ≤ rtol·RMS(ref) + atol: `allclose` in RMS form. The relative
part carries the test; the absolute part only matters where the reference (nearly) vanishes — dQ
and dK at seq_len 1 are exactly zero in theory, and a kernel's rounding residue there is not a bug.
atol is one unit roundoff of the dtype at the natural scale of attention on unit-normal inputs,
which shrinks like 1/√seq_len (outputs average ~seq_len values), so it never hides a real error.
An implementation whose cancelling terms are larger than softmax attention's scales it up by its
declared `atol_scale` (Performer's random features), as xformers' operators declare their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .poison import never_written

# (rtol, atol at seq_len 1) on RMS. bf16 rounds to ~3e-3 and fp16 to ~4e-4 per element, and attention
# adds one rounding of P before PV; fp32 stays below TF32's ~3e-4, so TF32 enabled by accident fails.
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (2e-4, 1e-6), "float16": (5e-3, 2**-11), "bfloat16": (3e-2, 2**-8)}


class WrongOutput(Exception):
    """The implementation returned an output of another shape or dtype than the query's: not attention for the
    case asked (an output in float32 for bfloat16 inputs is another computation, timed as another)."""


def check_output(out: torch.Tensor, q: torch.Tensor) -> None:
    """Raises WrongOutput unless `out` has the query's shape and dtype."""
    if out.shape != q.shape or out.dtype != q.dtype:
        raise WrongOutput(f"output is {tuple(out.shape)} {out.dtype}, expected {tuple(q.shape)} {q.dtype}")


def tolerance(dtype: str, seq_len: int, atol_scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for a case; `atol_scale` is an implementation's own (see Implementation.atol_scale)."""
    rtol, atol = TOLERANCE[dtype]
    return rtol, atol_scale * atol / math.sqrt(max(1, seq_len))


@dataclass(frozen=True)
class Error:
    max_abs: float
    rel_rms: float  # RMS(out − ref) / RMS(ref)
    rms_diff: float
    rms_ref: float
    never_written: int = 0  # elements still holding the poison put in the memory before the call
    elements: int = 0

    def within(self, rtol: float, atol: float) -> bool:
        return math.isfinite(self.rms_diff) and self.rms_diff <= rtol * self.rms_ref + atol


def error(actual: torch.Tensor, expected: torch.Tensor) -> Error:
    diff = actual.double() - expected.double()
    count = max(1, diff.numel())
    rms_diff = diff.norm().item() / math.sqrt(count)
    rms_ref = expected.double().norm().item() / math.sqrt(count)
    return Error(
        max_abs=diff.abs().max().item() if diff.numel() else 0.0,
        rel_rms=rms_diff / rms_ref if rms_ref > 0 else (0.0 if rms_diff == 0 else math.inf),
        rms_diff=rms_diff,
        rms_ref=rms_ref,
        never_written=never_written(actual),
        elements=actual.numel(),
    )


@dataclass(frozen=True)
class Verdict:
    errors: dict[str, Error]  # per tensor: "out", "dq", "dk", "dv"
    rtol: float
    atol: float

    @property
    def worst(self) -> tuple[str, Error]:
        """The tensor furthest beyond its allowance (or closest to it)."""

        def excess(item):
            e = item[1]
            return math.inf if not math.isfinite(e.rms_diff) else e.rms_diff / (self.rtol * e.rms_ref + self.atol)

        return max(self.errors.items(), key=excess)

    @property
    def max_abs(self) -> float:
        return max(math.inf if math.isnan(e.max_abs) else e.max_abs for e in self.errors.values())

    @property
    def ok(self) -> bool:
        return all(e.within(self.rtol, self.atol) for e in self.errors.values())

    def reason(self) -> str | None:
        if self.ok:
            return None
        unwritten = [(name, e) for name, e in self.errors.items() if e.never_written]
        if unwritten:  # say so: a kernel author looks for a missed tile, not for rounding
            return "; ".join(
                f"{name}: {e.never_written} of {e.elements} elements never written (they still hold "
                "the poison put in the memory before the call)"
                for name, e in unwritten
            )
        name, worst = self.worst
        if not math.isfinite(worst.rms_diff):
            return f"{name} has non-finite values"
        return (
            f"{name} rel_rms_err {worst.rel_rms:.3g} beyond tolerance "
            f"(rms error {worst.rms_diff:.3g} > {self.rtol:g}·{worst.rms_ref:.3g} + {self.atol:g})"
        )


def judge(
    actual: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    dtype: str,
    seq_len: int,
    atol_scale: float = 1.0,
) -> Verdict:
    rtol, atol = tolerance(dtype, seq_len, atol_scale)
    return Verdict({name: error(actual[name], expected[name]) for name in expected}, rtol, atol)
