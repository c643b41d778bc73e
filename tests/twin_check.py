"""The conformance check (suite/conformance.py) as pytest assertions: skips say why, failures say how far."""
from __future__ import annotations

import pytest

import implementations
from suite.case import Case
from suite.conformance import check_case


def assert_matches_twin(name: str, case: Case, input_seed: int, options: dict | None = None) -> None:
    """Skips (with the reasons) where the implementation cannot run the case.

    `options` is a dict rather than keywords: an option may be called `seed` (Performer's is).
    """
    result = check_case(implementations.get(name, **(options or {})), case, input_seed)
    if result.status == "unsupported":
        pytest.skip(f"{name} cannot run {case.label} here: {result.detail}")
    assert result.status == "pass", f"{name} {case.label} seed {input_seed}: {result.status}: {result.detail}"


def assert_matches_twin_for_seeds(name: str, cases: list[Case], seeds: range) -> None:
    """Every case the implementation supports, for every seed; skips with the reasons if none."""
    impl = implementations.get(name)
    runnable = [case for case in cases if not impl.supports(case)]
    if not runnable:
        pytest.skip(f"{name} runs none of these cases here: {'; '.join(impl.supports(cases[0]))}")
    for seed in seeds:
        for case in runnable:
            assert_matches_twin(name, case, input_seed=seed)
