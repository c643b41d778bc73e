"""`state=carried`: linear attention and FAVOR+ decoding as a recurrent decoder does, the state of the cached keys
built once per cache and reused, so that a decoding call's work does not grow with the cache."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import implementations
from implementations.base import Unsupported
from implementations.carried_state import CarriedState
from suite.case import Case
from suite.check.conformance import check, check_case, decoding_cases
from suite.measure.traffic import minimum_bytes
from suite.run.runner import _throughput
from tests.twin_check import assert_within_allowance, case_of

CARRIED = ("linear", "performer")


def decoding_inputs(batch=2, heads=4, kv_heads=2, q_len=5, seq_len=300, head_dim=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=generator, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, seq_len, head_dim, generator=generator, dtype=dtype) for _ in range(2))
    return q, k, v


def test_a_kept_value_is_reused_for_the_same_unchanged_tensors_only():
    kept: CarriedState[int] = CarriedState()
    a, b = torch.zeros(3), torch.zeros(3)
    built = iter(range(100))
    assert kept.get((a, b), "x", lambda: next(built)) == 0
    assert kept.get((a, b), "x", lambda: next(built)) == 0  # the same tensors, unchanged
    assert kept.get((a, b), "y", lambda: next(built)) == 1  # something else it depends on changed
    a.add_(1)  # written into: its version counter moves
    assert kept.get((a, b), "y", lambda: next(built)) == 2
    same_values = a.clone()
    assert kept.get((same_values, b), "y", lambda: next(built)) == 3  # equal values, another tensor
    assert kept.builds == 4


def test_a_kept_value_goes_with_its_tensors():
    kept: CarriedState[torch.Tensor] = CarriedState()
    a = torch.zeros(3)
    kept.get((a,), None, lambda: torch.ones(1000))
    del a
    gc.collect()
    assert kept._value is None  # freed with the cache it was built from, not held until the next call
    with torch.inference_mode():
        frozen = torch.zeros(3)
    kept.get((frozen,), None, lambda: 1)
    kept.get((frozen,), None, lambda: 1)
    assert kept.builds == 3  # no version counter to trust: built on every call


@pytest.mark.parametrize("name", CARRIED)
@pytest.mark.parametrize("causal", [False, True], ids=["dense", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "shape",
    [(2, 4, 2, 5, 300, 16), (1, 2, 2, 1, 17, 8), (1, 2, 1, 130, 257, 32)],
    ids=["B2-H4-KV2-Q5-N300-D16", "B1-H2-Q1-N17-D8", "B1-H2-KV1-Q130-N257-D32"],
)
def test_a_carried_state_gives_what_rebuilding_it_gives(name, causal, dtype, shape):
    batch, heads, kv_heads, q_len, seq_len, head_dim = shape
    q, k, v = decoding_inputs(batch, heads, kv_heads, q_len, seq_len, head_dim, dtype, seed=q_len)
    carried, rebuilt = implementations.get(name, state="carried"), implementations.get(name)
    first, again = carried(q, k, v, causal=causal), carried(q, k, v, causal=causal)
    twin = carried.exact_twin(q, k, v, causal=causal)
    case, from_the_cache = case_of(q, k, causal), rebuilt(q, k, v, causal=causal)
    for out in (first, from_the_cache):
        assert out.dtype == dtype and out.shape == q.shape
        assert_within_allowance(out, twin, case, carried)
    # The carried state is what rebuilding it computes, by the same function of the same keys: reusing it changes
    # no bit (in bfloat16, one key of 300 left out of it stays within the allowance against the twin).
    assert torch.equal(first, from_the_cache) and torch.equal(first, again) and carried._carried.builds == 1
    k[..., 0, :] += 1  # the cache changed: the state is built again, and the result follows
    moved = carried(q, k, v, causal=causal)
    assert carried._carried.builds == 2
    assert_within_allowance(moved, carried.exact_twin(q, k, v, causal=causal), case, carried)
    assert torch.equal(moved, rebuilt(q, k, v, causal=causal))


def test_performer_rescales_the_carried_sums_when_new_keys_are_larger():
    """The new keys' features must share the carried sums' shift: a new key far larger than every cached one
    moves it, and the sums are scaled to it rather than overflowing the new features."""
    q, k, v = decoding_inputs(q_len=3, seq_len=40)
    k[..., -2, :] *= 6  # a new key whose features' exponent is far above the cached keys'
    carried = implementations.get("performer", state="carried")
    out = carried(q, k, v, causal=True)
    twin = carried.exact_twin(q, k, v, causal=True)
    assert torch.isfinite(out).all()
    assert_within_allowance(out, twin, case_of(q, k, causal=True), carried)


@pytest.mark.parametrize("state", ["rebuilt", "carried"])
@pytest.mark.parametrize("new_tokens", [1, 300])
def test_performer_keeps_the_floor_of_earlier_keys_when_new_keys_move_the_shift(state, new_tokens):
    """Keys of large norm: most features sit near the floor, which the exact twin adds after the shift shared by
    all keys. Rescaling the earlier keys' floor with their features (to exp(old − new shift) times it) put a
    300-token chunked prefill after 20 cached keys 12% off the twin."""
    q, k, v = decoding_inputs(batch=1, heads=2, kv_heads=2, q_len=new_tokens, seq_len=20 + new_tokens, head_dim=64)
    k = k * 6
    performer = implementations.get("performer", state=state)
    out = performer(q, k, v, causal=True)
    twin = performer.exact_twin(q, k, v, causal=True)
    assert_within_allowance(out, twin, case_of(q, k, causal=True), performer)


def test_the_conformance_check_finds_a_rescaled_floor_at_large_logits_only(monkeypatch):
    """The check's float32 large-logit cases are held to the exact twin; unit-normal inputs do not show this bug."""
    import implementations.performer as performer_module
    from implementations.linear import ChangedFeatures
    from suite.check.conformance import LARGE_LOGIT_SEED, check_large_logits, large_logit_cases

    prefill = [case for case in large_logit_cases("cpu", ("float32",)) if case.q_len and case.causal]
    assert [case.label for case in prefill] == ["B1-H2-N300-Q130-D32-fp32-causal-fwd+bwd"]
    performer = implementations.get("performer")
    assert check_large_logits(performer, prefill[0], LARGE_LOGIT_SEED).status == "pass"
    monkeypatch.setattr(
        performer_module,
        "ChangedFeatures",  # the floor scaled with the features, as it once was
        lambda factor, offset, value_sum, count: ChangedFeatures(factor, 0 * offset, value_sum, count),
    )
    assert check_case(performer, prefill[0], 0).status == "pass"
    found = check_large_logits(performer, prefill[0], LARGE_LOGIT_SEED)
    assert found.status == "fail" and "in float32, against the exact twin" in found.detail, found.detail


@pytest.mark.parametrize("name", CARRIED)
def test_a_carried_decoding_call_does_the_same_work_whatever_the_cache_length(name):
    impl = implementations.get(name, state="carried")
    flops = {}
    for seq_len in (256, 4096):
        q, k, v = decoding_inputs(q_len=2, seq_len=seq_len)
        impl(q, k, v, causal=True)  # builds the state: a first, untimed call in a run
        with FlopCounterMode(display=False) as counter:
            impl(q, k, v, causal=True)
        flops[seq_len] = counter.get_total_flops()
    assert flops[256] == flops[4096] > 0
    # The matmuls it does are no more than the FLOPs its rows are credited with (the new tokens' maths).
    batch, heads, q_len, head_dim = q.shape
    assert flops[4096] <= impl.forward_flops(
        Case(batch, heads, 4096, head_dim, "float32", True, "fwd", "cpu", q_len=q_len)
    )
    rebuilt = implementations.get(name)
    with FlopCounterMode(display=False) as counter:
        rebuilt(q, k, v, causal=True)
    assert counter.get_total_flops() > 10 * flops[4096]


@pytest.mark.parametrize("name", CARRIED)
def test_a_carried_state_serves_forward_decoding_only(name):
    impl = implementations.get(name, state="carried")
    decoding = Case(1, 2, 64, 16, "float32", True, "fwd+bwd", "cpu", q_len=4)
    (reason,) = impl.supports(decoding)
    assert "mode=fwd+bwd with state=carried" in reason and "supported: fwd" in reason
    assert impl.supports(Case(1, 2, 64, 16, "float32", True, "fwd", "cpu", q_len=4)) == []
    assert impl.supports(Case(1, 2, 64, 16, "float32", True, "fwd+bwd", "cpu")) == []  # full length: nothing carried
    q, k, v = (t.requires_grad_() for t in decoding_inputs())
    with pytest.raises(Unsupported, match="require grad with state=carried"):
        impl(q, k, v, causal=True)
    full = impl(q, k[..., -5:, :], v[..., -5:, :], causal=True)  # as many queries as keys: the usual path
    full.sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("name", CARRIED)
def test_an_unknown_state_is_refused_with_the_choices(name):
    with pytest.raises(ValueError, match=r"option state='kept' must be one of rebuilt, carried"):
        implementations.get(name, state="kept")


def test_a_carried_call_counts_the_new_tokens_and_reads_the_state_in_place_of_the_cache():
    case = Case(2, 8, 4096, 64, "bfloat16", True, "fwd", "cpu", kv_heads=2, q_len=1)
    rebuilt, carried = implementations.get("linear"), implementations.get("linear", state="carried")
    assert carried.forward_flops(case) == rebuilt.forward_flops(replace(case, seq_len=1, q_len=None))
    assert rebuilt.carried_state_bytes(case) is None
    state = carried.carried_state_bytes(case)
    assert state == 2 * 2 * 64 * (64 + 1) * 2  # an F × D + F state per key/value head, F = D, multiplied in bfloat16
    performer = implementations.get("performer", state="carried", features=32)
    # Its features stay in float32, and it keeps the values' sum too (for its floor).
    assert performer.carried_state_bytes(case) == 2 * 2 * (32 * (64 + 1) + 64) * 4
    new_tokens = Case(2, 8, 1, 64, "bfloat16", True, "fwd", "cpu", kv_heads=2)  # q, one key and value, out
    assert minimum_bytes(case, state) == minimum_bytes(new_tokens) + state
    assert minimum_bytes(case) > 50 * minimum_bytes(case, state)  # a 4096-token bfloat16 cache, a 64 × 65 state
    assert carried.carried_state_bytes(Case(2, 8, 4096, 64, "bfloat16", True, "fwd", "cpu")) is None

    class Settings:
        peak_tflops, peak_gbytes_per_s = {}, None

    assert _throughput(carried, case, 1.0, Settings)["gbytes_per_s"] == pytest.approx(
        (minimum_bytes(case, state)) / 1e6
    )


@pytest.mark.parametrize("name", CARRIED)
def test_the_conformance_check_passes_a_carried_state_forward(name):
    impl = implementations.get(name, state="carried")
    results = list(check(impl, "cpu", ("float32", "bfloat16")))
    decoding = {(c.batch, c.heads, c.seq_len, c.q_len) for c in decoding_cases("cpu", ("float32",))}
    assert all(r.status == "pass" for r in results), [r.detail for r in results if r.status != "pass"]
    forward_only = {(r.case.batch, r.case.heads, r.case.seq_len, r.case.q_len) for r in results if r.forward_only}
    assert forward_only == decoding


@pytest.mark.parametrize("name", CARRIED)
def test_the_conformance_checks_second_call_reads_the_carried_state(name):
    """The check calls twice on the same tensors, as `run` does: the second call is the one a timed call makes."""
    impl = implementations.get(name, state="carried")
    (case, *_) = decoding_cases("cpu", ("float32",))
    result = check_case(impl, replace(case, mode="fwd"), seed=1)
    assert result.status == "pass" and result.repeated
    assert impl._carried.builds == 1


def test_causal_linear_attention_takes_the_earlier_keys_as_sums_not_as_extra_keys():
    from implementations.linear import linear_attention

    fq, fk, v = (torch.rand(1, 2, n, 4) for n in (3, 5, 5))
    with pytest.raises(ValueError, match=r"as many queries as keys \(got 3 and 5\): pass the earlier keys as `seen`"):
        linear_attention(fq, fk, v, causal=True)
