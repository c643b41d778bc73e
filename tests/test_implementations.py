"""Every registry implementation that runs on CPU against its float64 exact twin, forward and gradients.

For exact implementations the twin is softmax attention (the reference); approximate families are
checked against the same maths computed exactly, so a kernel bug and the approximation are told
apart. Implementations are picked up from the registry, never from a hand-kept list.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import implementations
from implementations import reference_attention
from suite.check.accuracy import error, tolerance
from suite.check.conformance import SHORT_LENGTH_SEEDS, awkward_cases, decoding_cases, input_seed, short_cases
from tests.twin_check import (
    assert_holds_at_large_logits,
    assert_matches_twin,
    assert_matches_twin_for_seeds,
    assert_transposed_views_match_twin,
)


def _cases():
    for name in implementations.names():
        for case in [*awkward_cases("cpu", ("float32", "bfloat16")), *decoding_cases("cpu", ("float32", "bfloat16"))]:
            for mode in ("fwd+bwd", "fwd"):  # forward alone runs without autograd: some dispatch another kernel
                checked = replace(case, mode=mode)
                yield pytest.param(name, checked, id=f"{name}-{checked.label}")


@pytest.mark.parametrize("name,case", list(_cases()))
def test_matches_float64_exact_twin(name, case):
    assert_matches_twin(name, case, input_seed=input_seed(case))


@pytest.mark.parametrize("name", implementations.names())
def test_matches_twin_for_many_seeds_at_the_shortest_lengths(name):
    """At one or two tokens gradients cancel most; passing must not depend on a lucky seed."""
    assert_matches_twin_for_seeds(name, short_cases("cpu", ("float32", "bfloat16")), SHORT_LENGTH_SEEDS)


@pytest.mark.parametrize("name", implementations.names())
def test_matches_twin_on_transposed_views(name):
    """q, k, v as a model passes them: (batch, seq, heads, dim) in memory, viewed (batch, heads, seq, dim)."""
    assert_transposed_views_match_twin(name, "cpu", ("float32", "bfloat16"))


@pytest.mark.parametrize("name", implementations.names())
def test_holds_at_large_logits(name):
    """Trained models' logits reach tens: no overflowing exp, no keys' features that all underflow (Performer's
    causal ratio was 0/0 there before its key features got a floor), and in float32 no stabilizer or shift unlike
    the twin's (Performer's chunked prefill once rescaled its cached keys' floor)."""
    assert_holds_at_large_logits(name, "cpu", ("float32", "bfloat16", "float16"))


def test_a_wrong_implementation_fails_the_same_check():
    """The tolerance is tight enough to catch a plausible bug (a wrong softmax scale)."""
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    assert not error(wrong, reference_attention(q, k, v)).within(*tolerance("bfloat16", 33))


def test_compiled_naive_matches_eager_and_its_twin():
    """`naive:compile=true` (one CPU compilation, a few seconds): hand-written attention through torch.compile
    gives eager's numbers, forward and gradients, causal at a length no tile divides, and says how it ran."""
    from suite.case import Case
    from tests.twin_check import assert_matches_twin, assert_within_allowance, case_of

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 33, 16, requires_grad=True) for _ in range(3))
    results = []
    for compile_it in (False, True):
        impl = implementations.get("naive", compile=compile_it)
        out = impl(q, k, v, causal=True)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
        assert impl.backend(q, k, v, causal=True) == ("torch.compile (inductor)" if compile_it else "eager")
    eager, compiled = results
    assert_within_allowance(compiled, eager, case_of(q, k, causal=True, mode="fwd+bwd"), impl)
    assert_matches_twin(
        "naive", Case(2, 3, 33, 16, "float32", True, "fwd+bwd", "cpu"), input_seed=5, options={"compile": True}
    )
