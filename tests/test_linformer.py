"""Linformer: keys and values projected along the sequence, against its exact twin and beyond it."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

import implementations
from implementations.flops import softmax_attention_flops
from implementations.linformer import LinformerAttention, random_projections
from suite.case import Case
from suite.check.accuracy import judge
from suite.check.conformance import check_case
from tests.conftest import rows_of
from tests.twin_check import assert_matches_twin


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# (seq_len, k): one token; k below N and above it; N not a multiple of k (17, 70 and 257 against 16).
LENGTHS_AND_K = [(1, 16), (1, 300), (17, 16), (17, 300), (70, 16), (70, 300), (257, 16), (257, 300)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("share_kv", [False, True])
@pytest.mark.parametrize("seq_len,k", LENGTHS_AND_K)
def test_matches_its_twin_forward_and_gradients(seq_len, k, share_kv, dtype):
    """Two query heads per key/value head, so each group reads its own projected keys."""
    case = Case(2, 4, seq_len, 16, dtype, False, "fwd+bwd", "cpu", kv_heads=2)
    assert_matches_twin("linformer", case, input_seed=seq_len + k, options={"k": k, "share_kv": share_kv})


def test_values_projected_with_the_keys_projection_fail_the_twin_check(monkeypatch):
    """The check tells F from E: a fast path that ignores F (share_kv taken as always on) fails against the twin."""
    projections = LinformerAttention.projections

    def keys_projection_twice(self, seq_len, dtype, device):
        key_projection, value_projection = projections(self, seq_len, dtype, device)
        return (key_projection, key_projection) if dtype != torch.float64 else (key_projection, value_projection)

    monkeypatch.setattr(LinformerAttention, "projections", keys_projection_twice)
    result = check_case(implementations.get("linformer", k=16), Case(1, 2, 70, 16, "bfloat16", False, "fwd", "cpu"), 3)
    assert result.status == "fail" and "beyond tolerance" in result.detail


@pytest.mark.parametrize(
    "causal,q_len,expected",
    [
        (True, None, "causal=True (supported: causal=False; Linformer is not defined for autoregressive attention"),
        (False, 5, "q_len=5 with seq_len=64 (supported: q_len = seq_len; a fixed (k × N) projection does not grow"),
        (True, 1, "causal=True (supported: causal=False;"),
    ],
)
def test_causal_and_decoding_cases_are_unsupported_with_reasons(causal, q_len, expected):
    impl = implementations.get("linformer")
    case = Case(1, 2, 64, 16, "float32", causal, "fwd", "cpu", q_len=q_len)
    assert any(reason.startswith(expected) for reason in impl.supports(case)), impl.supports(case)
    assert check_case(impl, case, 0).status == "unsupported"
    q, k, v = randn(1, 2, q_len or 64, 16), randn(1, 2, 64, 16, seed=1), randn(1, 2, 64, 16, seed=2)
    for call in (impl, impl.exact_twin):  # no silent fallback when called without asking supports() first
        with pytest.raises(implementations.Unsupported, match=re.escape(expected)):
            call(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_identity_projections_at_k_equal_n_are_exact_attention(dtype, kv_heads):
    """With k = N and E = F = I the projections change nothing: softmax attention, within the dtype's tolerance."""
    seq_len = 70
    impl = implementations.get("linformer", k=seq_len)
    identity = torch.eye(seq_len, dtype=torch.float64)
    impl.fix_projections(identity, identity)
    q = randn(2, 4, seq_len, 16, seed=1).to(getattr(torch, dtype)).requires_grad_()
    k, v = (randn(2, kv_heads, seq_len, 16, seed=s).to(getattr(torch, dtype)).requires_grad_() for s in (2, 3))
    grad = randn(2, 4, seq_len, 16, seed=4)
    out = impl(q, k, v)
    actual = dict(zip(("out", "dq", "dk", "dv"), (out, *torch.autograd.grad(out, (q, k, v), grad.to(out.dtype)))))
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    reference = implementations.reference_attention(*exact)
    expected = dict(zip(("out", "dq", "dk", "dv"), (reference, *torch.autograd.grad(reference, exact, grad))))
    verdict = judge(actual, expected, dtype, seq_len)
    assert verdict.ok, verdict.reason()
    twin = impl.exact_twin(*exact)
    torch.testing.assert_close(twin, reference)


def test_fixed_projections_must_be_k_by_n():
    impl = implementations.get("linformer", k=8)
    with pytest.raises(ValueError, match=r"projections must be \(8, 20\) \(k × N\), got \(8, 20\) and \(20, 20\)"):
        impl.fix_projections(torch.zeros(8, 20), torch.zeros(20, 20))


def test_projections_are_drawn_once_per_length_and_rounded_once_per_dtype(monkeypatch):
    import implementations.linformer as linformer

    draws = []
    real = linformer.random_projections
    monkeypatch.setattr(linformer, "random_projections", lambda *args: draws.append(args) or real(*args))
    impl = implementations.get("linformer", k=16, seed=5)
    q = randn(1, 2, 40, 16, dtype=torch.float32)
    for _ in range(3):
        impl(q, q, q)
    first = impl.projections(40, torch.float32, q.device)
    assert draws == [(16, 40, 5, False)]
    assert impl.projections(40, torch.float32, q.device) is first  # the timed calls reuse it
    impl.projections(40, torch.bfloat16, q.device)
    assert len(draws) == 2
    drawn = real(16, 40, 5, False)
    assert torch.equal(impl.projections(40, torch.float64, q.device)[0], drawn[0])


def test_projections_follow_the_seed_and_share_kv_reuses_the_keys():
    key, value = random_projections(16, 40, seed=0, share_kv=False)
    assert not torch.equal(key, value)
    shared_key, shared_value = random_projections(16, 40, seed=0, share_kv=True)
    assert shared_value is shared_key and torch.equal(shared_key, key)  # E does not depend on share_kv
    assert not torch.equal(random_projections(16, 40, seed=1, share_kv=False)[0], key)
    impl = implementations.get("linformer", k=16, share_kv=True)
    projected = impl.projections(40, torch.bfloat16, torch.device("cpu"))
    assert projected[1] is projected[0]  # rounded once


@pytest.mark.parametrize("seq_len,k", [(4096, 64), (64, 256)])
def test_a_projected_key_keeps_the_scale_of_a_key(seq_len, k):
    """Entries N(0, 1/N): each row of E has squared norm 1 in expectation (variance 2/N), so a projected key has a
    key's scale whether k is below or above N; checked against the mean over k rows, within five of its spreads."""
    key, _ = random_projections(k, seq_len, seed=0, share_kv=False)
    row_norms = key.square().sum(-1)
    assert abs(float(row_norms.mean()) - 1) < 5 * math.sqrt(2 / (seq_len * k))
    keys = randn(seq_len, 32, seed=1)
    projected = key @ keys
    assert abs(float(projected.square().mean()) - float(keys.square().mean())) < 5 * math.sqrt(2 / (k * 32))


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_flops_count_each_key_value_head_projected_once(kv_heads):
    """The projections' matmuls, as PyTorch's FLOP counter counts them, are the projection part of forward_flops
    (4·B·KV·N·k·D); the rest is softmax attention's count over N·k pairs per query head."""
    from torch.utils.flop_counter import FlopCounterMode

    batch, heads, seq_len, head_dim, k = 2, 8, 200, 16, 32
    impl = implementations.get("linformer", k=k)
    q = randn(batch, heads, seq_len, head_dim, dtype=torch.float32)
    keys, values = (randn(batch, kv_heads, seq_len, head_dim, seed=s, dtype=torch.float32) for s in (1, 2))
    with FlopCounterMode(display=False) as counter:
        impl(q, keys, values)
    projections = counter.get_flop_counts()["Global"][torch.ops.aten.bmm]
    assert projections == 4 * batch * kv_heads * seq_len * k * head_dim
    attention = softmax_attention_flops(batch, heads, seq_len * k, head_dim)
    case = Case(batch, heads, seq_len, head_dim, "float32", False, "fwd", "cpu", kv_heads=kv_heads)
    assert impl.forward_flops(case) == projections + attention


def test_grouped_heads_give_the_outputs_and_gradients_of_repeated_keys():
    impl = implementations.get("linformer", k=16)
    q = randn(1, 4, 40, 8, seed=1).requires_grad_()
    k, v = (randn(1, 2, 40, 8, seed=s).requires_grad_() for s in (2, 3))
    grouped = impl(q, k, v)
    repeated = impl(q, *implementations.base.expand_kv(q, k, v))
    torch.testing.assert_close(grouped, repeated)
    out_grad = randn(*grouped.shape, seed=4)
    torch.testing.assert_close(
        torch.autograd.grad(grouped, (q, k, v), out_grad), torch.autograd.grad(repeated, (q, k, v), out_grad)
    )


@pytest.mark.parametrize("share_kv", [False, True])
def test_attention_weights_are_softmax_weights_times_the_values_projection(share_kv):
    """N × N: softmax over the projected keys, times F (E itself where shared); the attention map draws them."""
    impl = implementations.get("linformer", k=16, share_kv=share_kv)
    q, k = randn(1, 1, 40, 16, seed=1), randn(1, 1, 40, 16, seed=2)
    key_projection, value_projection = impl.projections(40, torch.float64, q.device)
    softmax = torch.softmax(q @ (key_projection @ k).transpose(-2, -1) / 4, dim=-1)
    weights = impl.attention_weights(q, k)
    assert weights.shape == (1, 1, 40, 40)
    torch.testing.assert_close(weights, softmax @ (key_projection if share_kv else value_projection))


def test_backend_names_the_sdpa_kernel_and_the_projected_length():
    q = randn(1, 2, 64, 16, dtype=torch.float32)
    assert implementations.get("linformer", k=32).backend(q, q, q).endswith(" over 32 projected keys")


def test_rows_report_its_error_against_softmax_and_reports_draw_it(tmp_path, monkeypatch):
    """Measured rows carry the softmax figures (i.i.d. and local inputs) as other approximations' do; a report draws
    it in the accuracy-against-speed chart and the dense attention map, and leaves it out of the causal map, which
    it cannot run."""
    from suite.cli import main
    from suite.measure.settings import RunSettings, TimingPolicy
    from suite.reporting import build, charts
    from suite.results.files import ResultsWriter
    from suite.run import config

    path = tmp_path / "rows.jsonl"
    writer = ResultsWriter(path, {"device": "cpu", "cpu": "test cpu", "torch": "x"}, {"preset": "test"})
    cases = [Case(1, 2, n, 16, "float32", causal, "fwd", "cpu") for n in (16, 32) for causal in (False, True)]
    fast = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=3, budget_s=0.01)})
    rows = rows_of(
        [config.build_impl("--impl", spec) for spec in ("linear", "linformer:k=8")],
        cases,
        settings=fast,
        on_row=writer.append,
    )
    writer.close()
    linformer = [row for row in rows if row["impl"] == "linformer:k=8"]
    assert [row["status"] for row in linformer] == ["ok", "unsupported"] * 2
    assert all(
        row["softmax_rel_rms_err"] > 0 and row["softmax_local_rel_rms_err"] > 0
        for row in linformer
        if row["status"] == "ok"
    )

    drawn = {}
    maps, accuracy = build.attention_map_chart, charts.accuracy_speed_chart
    monkeypatch.setattr(
        build,
        "attention_map_chart",
        lambda impls, causal: (
            drawn.setdefault("causal" if causal else "dense", [impl.label for impl in impls])
            and maps(impls, causal=causal)
        ),
    )
    monkeypatch.setattr(
        charts,
        "accuracy_speed_chart",
        lambda frame, *args: drawn.setdefault("accuracy", set(frame.impl)) and accuracy(frame, *args),
    )
    assert main(["report", str(path), "--out", str(tmp_path / "report"), "--baseline", "linear"]) == 0
    assert drawn == {
        "dense": ["linear", "linformer:k=8"],
        "causal": ["linear"],
        "accuracy": {"linear", "linformer:k=8"},
    }


def test_its_backward_counts_its_own_maths_not_the_shared_factor():
    """Attention's backward by the 2.5x convention, the fixed projections' backward one product each (E and F
    take no gradient): B*N*k*D*(10*H + 4*KV), below 2.5x a forward of B*N*k*D*(4*H + 4*KV)."""
    from suite.measure.flops import case_flops

    impl = implementations.get("linformer", k=16)
    case = Case(2, 8, 64, 32, "float32", False, "fwd+bwd", "cpu", kv_heads=2)
    unit = 2 * 64 * 16 * 32
    assert impl.forward_flops(case) == unit * (4 * 8 + 4 * 2)
    assert impl.backward_flops(case) == unit * (10 * 8 + 4 * 2) < 2.5 * impl.forward_flops(case)
    assert case_flops(impl, case) == impl.forward_flops(case) + impl.backward_flops(case)
    assert case_flops(impl, replace(case, mode="bwd")) == impl.backward_flops(case)
