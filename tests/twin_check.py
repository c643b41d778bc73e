"""The conformance check (suite/conformance.py) as pytest assertions: skips say why, failures say how far."""

from __future__ import annotations

import pytest
import torch

import implementations
from implementations import Implementation
from suite.case import Case
from suite.check.accuracy import judge
from suite.check.conformance import TENSORS, check_case


def assert_matches_twin(
    name: str, case: Case, input_seed: int, options: dict | None = None, transposed: bool = False
) -> None:
    """Skips (with the reasons) where the implementation cannot run the case.

    `options` is a dict rather than keywords: an option may be called `seed` (Performer's is).
    """
    result = check_case(implementations.get(name, **(options or {})), case, input_seed, transposed=transposed)
    if result.status == "unsupported":
        pytest.skip(f"{name} cannot run {case.label} here: {result.detail}")
    assert result.status == "pass", f"{name} {case.label} seed {input_seed}: {result.status}: {result.detail}"


def case_of(q: torch.Tensor, k: torch.Tensor, causal: bool = False, mode: str = "fwd") -> Case:
    """The case whose inputs q and k are: (batch, heads, positions, head dim) each, the queries the last positions."""
    batch, heads, q_len, head_dim = q.shape
    return Case(
        batch,
        heads,
        k.shape[-2],
        head_dim,
        str(q.dtype).removeprefix("torch."),
        causal,
        mode,
        q.device.type,
        k.shape[1],
        q_len,
    )


Tensors = torch.Tensor | tuple[torch.Tensor, ...]  # an output, or an output and its gradients (out, dq, dk, dv)


def assert_within_allowance(actual: Tensors, expected: Tensors, case: Case, impl: Implementation | None = None) -> None:
    """`actual` agrees with `expected` within the accuracy check's allowance (suite/accuracy.py): an RMS error
    against the reference's RMS, for the case's dtype and length, with the implementation's atol_scale. Rounding
    stays within it whatever the seed, the machine or the summation order, where a threshold picked from one seed's
    error can fail on rounding alone; an error of the maths, such as a key left out, goes beyond it."""
    verdict = judge(
        _named(actual),
        _named(expected),
        case.dtype,
        case.seq_len,
        impl.atol_scale_for(case) if impl is not None else 1.0,
    )
    assert verdict.ok, f"{case.label}: {verdict.reason()}"


def _named(tensors: Tensors) -> dict[str, torch.Tensor]:
    return dict(zip(TENSORS, (tensors,) if isinstance(tensors, torch.Tensor) else tensors))


def assert_matches_twin_for_seeds(name: str, cases: list[Case], seeds: range) -> None:
    """Every case the implementation supports, for every seed; skips with the reasons if none."""
    impl = implementations.get(name)
    runnable = [case for case in cases if not impl.supports(case)]
    if not runnable:
        pytest.skip(f"{name} runs none of these cases here: {'; '.join(impl.supports(cases[0]))}")
    for seed in seeds:
        for case in runnable:
            assert_matches_twin(name, case, input_seed=seed)


def assert_holds_at_large_logits(name: str, device: str, dtypes: tuple[str, ...]) -> None:
    """The conformance check's large-logit cases: every output and gradient finite, and in float32 within the
    tolerance of the exact twin; skips if none can run."""
    from suite.check.conformance import LARGE_LOGIT_SEED, check_large_logits, large_logit_cases

    results = [
        check_large_logits(implementations.get(name), case, LARGE_LOGIT_SEED)
        for case in large_logit_cases(device, dtypes)
    ]
    _assert_passed_where_supported(name, results)


def assert_transposed_views_match_twin(name: str, device: str, dtypes: tuple[str, ...]) -> None:
    """The conformance check's transposed-layout cases, each that the implementation supports; skips if none."""
    from suite.check.conformance import TRANSPOSED_SEED, transposed_cases

    impl = implementations.get(name)
    results = [check_case(impl, case, TRANSPOSED_SEED, transposed=True) for case in transposed_cases(device, dtypes)]
    _assert_passed_where_supported(name, results)


def _assert_passed_where_supported(name: str, results: list) -> None:
    """Every case the implementation supports passed; skips with the reason if it supports none."""
    if all(result.status == "unsupported" for result in results):
        pytest.skip(f"{name} runs none of these cases here: {results[0].detail}")
    failed = [f"{r.case.label}: {r.status}: {r.detail}" for r in results if r.status not in ("pass", "unsupported")]
    assert not failed, failed
