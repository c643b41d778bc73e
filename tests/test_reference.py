"""The float64 oracle against plain autograd attention, including its chunked path."""

from __future__ import annotations

import pytest
import torch

import implementations.reference as reference


def plain_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("chunk_elements", [1 << 26, 7 * 40], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("causal", [False, True], ids=["dense", "causal"])
@pytest.mark.parametrize("seq_len", [1, 17, 40])
def test_reference_matches_plain_autograd(monkeypatch, chunk_elements, causal, seq_len):
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(seq_len)
    q, k, v, dout = (torch.randn(2, 3, seq_len, 8, dtype=torch.float64, generator=generator) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    plain = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = reference.reference_attention(*leaves, causal=causal)
    theirs = plain_attention(*plain, causal)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, leaves, dout), torch.autograd.grad(theirs, plain, dout)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunk_rows_bounds_memory():
    assert reference._chunk_rows(1, 1, 16, 16) == 16
    assert reference._chunk_rows(64, 32, 1 << 17, 1 << 17) == 1  # never zero rows
    rows = reference._chunk_rows(1, 16, 1 << 15, 1 << 15)
    assert rows * 16 * (1 << 15) <= reference._CHUNK_ELEMENTS
    assert reference._chunk_rows(1, 1, 1, 1 << 20) == 1  # one query against a long cache
    assert reference._chunk_rows(1, 16, 1 << 15, 1 << 16) * 16 * (1 << 16) <= reference._CHUNK_ELEMENTS
