"""The check every implementation passes: output and input gradients against its float64 exact twin."""
from __future__ import annotations

import pytest
import torch

import implementations
from suite.accuracy import error, tolerance
from suite.case import Case


def assert_matches_twin(name: str, case: Case, input_seed: int, options: dict | None = None) -> None:
    """Skips (with the reasons) where the implementation cannot run the case.

    `options` is a dict rather than keywords: an option may be called `seed` (Performer's is).
    """
    impl = implementations.get(name, **(options or {}))
    reasons = impl.supports(case)
    if reasons:
        pytest.skip(f"{name} cannot run {case.label} here: {'; '.join(reasons)}")
    generator = torch.Generator(device=case.device).manual_seed(input_seed)
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    kv_shape = (case.batch, case.key_value_heads, case.seq_len, case.head_dim)
    q, k, v, dout = (torch.randn(s, generator=generator, device=case.device, dtype=case.torch_dtype)
                     for s in (shape, kv_shape, kv_shape, shape))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    exact = [t.clone().requires_grad_() for t in (q, k, v)]
    try:
        out = impl(*leaves, causal=case.causal)
        grads = torch.autograd.grad(out, leaves, dout)
    except implementations.Unsupported as unsupported:
        pytest.skip(f"{name} refused {case.label} at run time: {unsupported}")
    assert out.shape == q.shape and out.dtype == q.dtype
    expected = impl.exact_twin(*exact, causal=case.causal)
    assert expected.dtype == torch.float64
    expected_grads = torch.autograd.grad(expected, exact, dout.double())
    rtol, atol = tolerance(case.dtype, case.seq_len, impl.atol_scale)
    for label, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads), (expected, *expected_grads)):
        err = error(actual, wanted)
        assert err.within(rtol, atol), f"{label}: {err} beyond rtol {rtol}, atol {atol}"


def assert_matches_twin_for_seeds(name: str, cases: list[Case], seeds: range) -> None:
    """Every case the implementation supports, for every seed; skips with the reasons if none."""
    impl = implementations.get(name)
    runnable = [case for case in cases if not impl.supports(case)]
    if not runnable:
        pytest.skip(f"{name} runs none of these cases here: {'; '.join(impl.supports(cases[0]))}")
    for seed in seeds:
        for case in runnable:
            assert_matches_twin(name, case, input_seed=seed)
