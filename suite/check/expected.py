"""What a row is checked against: float64 outputs of exact maths on its inputs (softmax attention, or an
approximate family's exact twin), computed at most once and only for the slices a FLOP budget allows;
and, for approximations, their distance from softmax attention on the row's inputs and on local inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import torch

from implementations import Implementation, reference_attention

from ..case import Case, key_of_row
from ..measure import stop_signals
from ..measure.failures import free_after_failure, is_out_of_memory
from ..measure.flops import softmax_case_flops
from .accuracy import error
from .checked_slices import CheckedSlices
from .workload import Inputs, case_seed, local_tensors, packing_arguments

if TYPE_CHECKING:
    from ..measure.settings import RunSettings


class ExpectedOutputs:
    """Float64 outputs (and gradients) of exact maths on one case's inputs, computed at most once.

    `compute(q, k, v, doc_lens)` gets float64 leaves and the checked slices' documents (None unless the case
    packs them); the softmax reference is shared by every exact implementation of a case, an approximate
    family's exact twin is its own.
    """

    def __init__(
        self,
        compute: Callable[..., torch.Tensor],
        case: Case,
        inputs: Inputs,
        settings: RunSettings,
        what: str = "float64 reference",
    ):
        self.compute, self.case, self.inputs, self.what = compute, case, inputs, what
        self._outputs: dict[str, torch.Tensor] | None = None
        self._failure: str | None = None
        limit = settings.max_reference_flops.get(case.device, 0.0)
        self.slices = CheckedSlices.choose(case, limit)
        if self.slices is None:
            per_slice = softmax_case_flops(case) / (case.batch * case.key_value_heads)
            self._failure = (
                f"accuracy not checked: one (batch, head) slice of the {what} needs "
                f"{per_slice / 1e9:.3g} GFLOP (limit {limit / 1e9:.3g} GFLOP on {case.device})"
            )

    def expected(self) -> tuple[dict[str, torch.Tensor] | None, str | None]:
        """(float64 outputs, None), or (None, why accuracy is not checked)."""
        if self._outputs is None and self._failure is None:
            try:
                self._outputs = self._compute()
            except Exception as error:  # noqa: BLE001 - the reference failing must not fail the row
                if not is_out_of_memory(error):
                    raise
                self._failure = f"accuracy not checked: the {self.what} ran out of memory"
            if self._failure:
                free_after_failure(self.case.device)
        return self._outputs, self._failure

    def _compute(self) -> dict[str, torch.Tensor]:
        i, slices = self.inputs, self.slices
        q = slices.queries(i.q.detach()).double().requires_grad_(self.case.needs_grad)
        k, v = (slices.key_values(t.detach()).double().requires_grad_(self.case.needs_grad) for t in (i.k, i.v))
        out = self.compute(q, k, v, slices.documents(self.case.doc_lens) if self.case.packed else None)
        outputs = {"out": out.detach()}
        if self.case.needs_grad:
            out.backward(slices.queries(i.dout).double())
            outputs.update(dq=q.grad, dk=k.grad, dv=v.grad)
        return outputs

    def release(self) -> None:
        self._outputs = None


def softmax_reference(case: Case, inputs: Inputs, settings: RunSettings) -> ExpectedOutputs:
    return ExpectedOutputs(
        lambda q, k, v, doc_lens: reference_attention(q, k, v, causal=case.causal, doc_lens=doc_lens),
        case,
        inputs,
        settings,
    )


def twin_reference(impl: Implementation, case: Case, inputs: Inputs, settings: RunSettings) -> ExpectedOutputs:
    return ExpectedOutputs(
        lambda q, k, v, doc_lens: impl.exact_twin(
            q, k, v, causal=case.causal, **({} if doc_lens is None else {"doc_lens": doc_lens})
        ),
        case,
        inputs,
        settings,
        what=f"float64 exact twin of {impl.name}",
    )


def softmax_error(out: torch.Tensor, reference: ExpectedOutputs, prefix: str = "softmax") -> dict[str, Any]:
    """How far an approximate family's output is from exact softmax attention: a figure, not a test."""
    expected, not_checked = reference.expected()
    if expected is None:
        return {f"{prefix}_note": not_checked}
    err = error(reference.slices.queries(out), expected["out"])
    return {f"{prefix}_max_abs_err": err.max_abs, f"{prefix}_rel_rms_err": err.rel_rms}


class LocalErrors:
    """Each approximation's error against softmax attention on local inputs (workload.local_tensors),
    where softmax attention is peaked near the diagonal as in trained models; on the run's i.i.d.
    inputs it is nearly uniform. Forward only, measured once per implementation and forward case (a
    case's fwd and fwd+bwd rows share it); a case's approximations share its inputs and reference."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self._figures: dict[tuple, dict[str, Any]] = {}
        self._case: Case | None = None
        self._inputs: Inputs | None = None
        self._reference: ExpectedOutputs | None = None

    def of(self, impl: Implementation, case: Case) -> dict[str, Any]:
        forward = replace(case, mode="fwd")
        key = key_of_row({"impl": impl.label, **asdict(forward)})
        if key not in self._figures:
            self._figures[key] = self._measure(impl, forward)
        return self._figures[key]

    def _measure(self, impl: Implementation, forward: Case) -> dict[str, Any]:
        try:
            if self._case != forward or self._inputs is None or self._reference is None:
                self.release()
                q, k, v = local_tensors(forward, case_seed(forward, self.settings.seed) + 1)
                self._inputs = Inputs(q, k, v, dout=None)
                self._reference = softmax_reference(forward, self._inputs, self.settings)
                self._case = forward
            with torch.no_grad():
                out = impl(
                    self._inputs.q,
                    self._inputs.k,
                    self._inputs.v,
                    causal=forward.causal,
                    **packing_arguments(impl, forward),
                )
            return softmax_error(out, self._reference, prefix="softmax_local")
        except BaseException as error:  # noqa: BLE001 - a supplementary figure must not cost the row its timing
            stop_signals.raise_if_stop(error)
            self.release()
            free_after_failure(forward.device)
            detail = (
                f"{type(error).__name__}: {' '.join(str(error).split())[:300]}{stop_signals.not_a_stop_note(error)}"
            )
            return {"softmax_local_note": f"not measured: {detail}"}

    def release(self) -> None:
        """Free the current case's inputs and reference; the figures (a few floats each) stay."""
        self._case = self._inputs = self._reference = None
