"""xformers' layouts, checked where its compiled operators cannot run: against its own input validation and
dispatcher's reading of the layout, and against a stand-in kernel with the semantics its documentation gives."""

from __future__ import annotations

import pytest
import torch

import implementations
from implementations.xformers_memeff import _causal_bias, _layout, _load_xformers

fmha, _missing = _load_xformers()  # as the implementation loads it: its load warning is not printed here
if fmha is None:
    pytest.skip(_missing, allow_module_level=True)

# (heads, kv_heads, q_len, seq_len): plain, grouped, grouped with fewer queries than keys, one key/value head.
SHAPES = [(4, 4, 33, 33), (6, 2, 33, 33), (6, 2, 5, 17), (4, 1, 1, 17)]


def _documented_kernel(query, key, value, attn_bias=None):
    """memory_efficient_attention as xformers documents it, in float64: (B, M, [G,] H, K) inputs, softmax over keys
    per (group, head) with scale K^-0.5; LowerTriangularMask aligns the causal mask to the first key,
    LowerTriangularFromBottomRightMask to the last. Its input validation is xformers' own."""
    fmha.Inputs(query=query, key=key, value=value, attn_bias=attn_bias).validate_inputs()
    grouped = query.ndim == 5
    q, k, v = (x if grouped else x.unsqueeze(2) for x in (query, key, value))
    q, k, v = (x.double().permute(0, 2, 3, 1, 4) for x in (q, k, v))  # (B, G, H, M, K)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if attn_bias is not None:
        offset = 0 if type(attn_bias) is fmha.attn_bias.LowerTriangularMask else k.shape[-2] - q.shape[-2]
        seen = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(offset)
        scores = scores.masked_fill(~seen, float("-inf"))
    out = (scores.softmax(-1) @ v.double()).permute(0, 3, 1, 2, 4).to(query.dtype)
    return out if grouped else out.squeeze(2)


@pytest.mark.parametrize("heads,kv_heads,q_len,seq_len", SHAPES)
def test_the_layout_passes_xformers_validation_and_reads_as_grouped_where_grouped(heads, kv_heads, q_len, seq_len):
    q = torch.randn(2, heads, q_len, 16)
    k, v = torch.randn(2, kv_heads, seq_len, 16), torch.randn(2, kv_heads, seq_len, 16)
    query, key, value = _layout(q, k, v)
    fmha.Inputs(query=query, key=key, value=value).validate_inputs()
    # The dispatcher's own test for grouped heads, which it weighs when picking a kernel for few queries.
    reads_grouped = key.ndim > 3 and key.stride(-2) == 0 and key.shape[-2] > 1
    assert reads_grouped == (kv_heads != heads)
    assert all(
        x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr() for x, y in ((query, q), (key, k), (value, v))
    ), "the layout must be views, not copies"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads,kv_heads,q_len,seq_len", SHAPES)
def test_query_heads_meet_their_key_value_head(heads, kv_heads, q_len, seq_len, causal, monkeypatch):
    """Query head h reads key/value head h // (heads / kv_heads), as in every other implementation."""
    monkeypatch.setattr(fmha, "memory_efficient_attention", _documented_kernel)
    generator = torch.Generator().manual_seed(heads * 100 + q_len)
    q = torch.randn(2, heads, q_len, 16, generator=generator)
    k, v = (torch.randn(2, kv_heads, seq_len, 16, generator=generator) for _ in range(2))
    out = implementations.get("xformers")(q, k, v, causal=causal)
    expected = implementations.get("reference")(q.double(), k.double(), v.double(), causal=causal)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_one_query_gets_no_causal_mask_as_it_sees_every_key():
    """As in `sdpa`: a mask that masks nothing only narrows the kernels that accept the call."""
    assert _causal_bias(fmha, True, 1, 4096) is None and _causal_bias(fmha, True, 1, 1) is None
    assert type(_causal_bias(fmha, True, 16, 4096)) is fmha.attn_bias.LowerTriangularFromBottomRightMask
    assert type(_causal_bias(fmha, True, 33, 33)) is fmha.attn_bias.LowerTriangularMask
    assert _causal_bias(fmha, False, 16, 4096) is None
