"""Every registry implementation that runs on CPU against its float64 exact twin, forward and gradients.

For exact implementations the twin is softmax attention (the reference); approximate families are
checked against the same maths computed exactly, so a kernel bug and the approximation are told
apart. Implementations are picked up from the registry, never from a hand-kept list.
"""
from __future__ import annotations

import pytest
import torch

import implementations
from implementations import reference_attention
from suite.accuracy import error, tolerance
from suite.case import Case
from tests.twin_check import assert_matches_twin, assert_matches_twin_for_seeds

# Awkward sizes: length 1, primes, one past a power of two; head dims 16 and 64; batch 1 and 3;
# the last two are grouped-query attention (4 query heads sharing 2 and 1 key/value heads).
SHAPES = [(1, 2, 1, 16, None), (3, 2, 17, 64, None), (1, 3, 257, 64, None), (3, 1, 257, 16, None),
          (1, 2, 64, 64, None), (2, 4, 33, 16, 2), (1, 4, 70, 16, 1)]


def _cases():
    for name in implementations.names():
        for batch, heads, seq_len, head_dim, kv_heads in SHAPES:
            for dtype in ("float32", "bfloat16"):
                for causal in (False, True):
                    case = Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", "cpu", kv_heads)
                    yield pytest.param(name, case, id=f"{name}-{case.label}")


@pytest.mark.parametrize("name,case", list(_cases()))
def test_matches_float64_exact_twin(name, case):
    assert_matches_twin(name, case, input_seed=case.seq_len * 7 + case.head_dim)


@pytest.mark.parametrize("name", implementations.names())
def test_matches_twin_for_many_seeds_at_the_shortest_lengths(name):
    """At one or two tokens gradients cancel most; passing must not depend on a lucky seed."""
    cases = [Case(1, 2, seq_len, 16, dtype, causal, "fwd+bwd", "cpu")
             for seq_len in (1, 2) for dtype in ("float32", "bfloat16") for causal in (False, True)]
    assert_matches_twin_for_seeds(name, cases, range(1000, 1006))


def test_a_wrong_implementation_fails_the_same_check():
    """The tolerance is tight enough to catch a plausible bug (a wrong softmax scale)."""
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)
    assert not error(wrong, reference_attention(q, k, v)).within(*tolerance("bfloat16", 33))
