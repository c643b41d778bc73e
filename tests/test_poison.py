"""A kernel that leaves output elements unwritten fails its check, even after a correct kernel of the same case
left the right answer in the memory it is given (suite/poison.py)."""

from __future__ import annotations

import pytest
import torch

import implementations
from suite.case import Case
from suite.check.conformance import check_case
from suite.check.poison import POISON_BYTE, never_written, poisoned_allocations
from suite.measure.settings import RunSettings, TimingPolicy
from suite.run.runner import run_cases
from tests.conftest import UnwrittenLastRow

FAST = TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=3, budget_s=0.01)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_row_never_written_fails_after_a_correct_kernel_of_the_same_case(device):
    # Unpoisoned, the float32 rows passed on the CPU: the buggy kernel was handed the block sdpa's output was
    # freed from. On CUDA the caching allocator does the same.
    cases = [
        Case(2, 2, n, 64, dtype, False, "fwd", device) for n in (17, 257, 1000) for dtype in ("float32", "bfloat16")
    ]
    rows = []
    run_cases(
        [implementations.get("sdpa"), UnwrittenLastRow("unwritten")],
        cases,
        settings=RunSettings(policies={device: FAST}),
        on_row=rows.append,
    )
    for row in rows:
        if row["impl"] == "sdpa":
            assert row["status"] == "ok", row["reason"]
        else:
            expected = f"out: {2 * 2 * 64} of {2 * 2 * row['seq_len'] * 64} elements never written"
            assert row["status"] == "mismatch" and row["reason"].startswith(expected), (row["seq_len"], row["reason"])


def test_the_conformance_check_says_which_elements_were_never_written():
    case = Case(3, 2, 17, 64, "float32", False, "fwd", "cpu")
    assert check_case(implementations.get("sdpa"), case, seed=5).status == "pass"
    result = check_case(UnwrittenLastRow("unwritten"), case, seed=5)
    assert result.status == "fail" and "out: 384 of 6528 elements never written" in result.detail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_never_written_counts_the_elements_that_hold_the_poison(dtype):
    t = torch.randn(5, 7, dtype=dtype)
    t.view(torch.uint8).view(5, 7, -1)[1, 3] = POISON_BYTE
    t.view(torch.uint8).view(5, 7, -1)[4, 6] = POISON_BYTE
    assert never_written(t) == 2
    assert never_written(t.t()) == 2  # any layout
    assert never_written(torch.randn(64, 64, dtype=dtype)) == 0
    # A head dim of 1: "contiguous" with the last stride 3, as a kernel returned it (a byte view needs stride 1)
    flat = torch.randn(9, dtype=dtype)
    flat.view(torch.uint8).view(9, -1)[4] = POISON_BYTE
    head_dim_one = flat.as_strided((1, 3, 3, 1), (9, 3, 1, 3))
    assert head_dim_one.is_contiguous() and head_dim_one.stride(-1) == 3 and never_written(head_dim_one) == 1
    one_token = flat.as_strided((1, 3, 1, 1), (9, 4, 1, 1))  # a slice of one token and one dim: strided, 1-D
    assert never_written(one_token) == 1


def test_allocations_inside_are_poisoned_on_this_cpu():
    with poisoned_allocations("cpu"):
        fresh = torch.empty(1000, dtype=torch.float32)
    if not (fresh.view(torch.uint8) == POISON_BYTE).all():
        pytest.skip("this C library has no malloc perturbation (glibc's M_PERTURB); CPU checks run unpoisoned")
    assert never_written(fresh) == 1000
    from suite.results.environment import collect

    assert collect(torch.device("cpu"))["checked_call_poisoning"].startswith(
        "glibc malloc fills"
    )  # in every run header


class _KeysGradientMissesLastRow(torch.autograd.Function):
    """Attention whose backward allocates dk and never writes its last key row."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            dq, dk_full, dv = torch.autograd.grad(
                torch.nn.functional.scaled_dot_product_attention(q, k, v), (q, k, v), grad_out
            )
        dk = torch.empty_like(k)
        dk[..., :-1, :] = dk_full[..., :-1, :]
        return dq, dk, dv


class KeysGradientMissesLastRow(implementations.Implementation):
    def __call__(self, q, k, v, *, causal=False):
        return _KeysGradientMissesLastRow.apply(q, k, v)


def test_a_gradient_row_never_written_fails_too():
    cases = [Case(1, 2, 33, 16, "float32", False, "fwd+bwd", "cpu")]
    rows = []
    run_cases(
        [implementations.get("sdpa"), KeysGradientMissesLastRow("dk-tail")],
        cases,
        settings=RunSettings(policies={"cpu": FAST}),
        on_row=rows.append,
    )
    assert rows[1]["status"] == "mismatch" and rows[1]["reason"].startswith("dk: 32 of 1056 elements never written")
    result = check_case(KeysGradientMissesLastRow("dk-tail"), cases[0], seed=3)
    assert result.status == "fail" and result.detail.startswith("dk: 32 of 1056 elements never written")


def test_the_cuda_fill_takes_every_free_block_of_this_device_and_stream_largest_first():
    from suite.check.poison import free_block_sizes

    def segment(device, stream, blocks, pool=(0, 0)):
        return {
            "device": device,
            "stream": stream,
            "segment_pool_id": pool,
            "blocks": [{"size": size, "state": state} for size, state in blocks],
        }

    snapshot = [
        segment(0, 0, [(2 << 20, "active_allocated"), (6 << 20, "inactive"), (1 << 20, "inactive")]),
        segment(0, 0, [(512, "inactive"), (4096, "active_pending_free")]),
        segment(1, 0, [(8 << 20, "inactive")]),  # another GPU
        segment(0, 7, [(8 << 20, "inactive")]),  # another stream's blocks
        segment(0, 0, [(8 << 20, "inactive")], pool=(3, 1)),  # a CUDA graph's private pool
    ]
    assert free_block_sizes(snapshot, device_index=0, stream=0) == [6 << 20, 1 << 20, 512]


def test_an_allocator_snapshot_that_cannot_be_read_leaves_the_check_unpoisoned(monkeypatch):
    import types
    import warnings

    from suite.check import poison

    def unreadable():
        raise RuntimeError("snapshot unavailable")

    monkeypatch.setattr(torch.cuda, "memory_snapshot", unreadable)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index=None: types.SimpleNamespace(cuda_stream=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        poison._poison_cuda_cache(torch.device("cuda", 0))  # returns instead of raising: the row still runs
    assert any("checks run unpoisoned" in str(w.message) for w in caught)


class ScalesQueriesInPlace(implementations.Implementation):
    """Right output, but applies the softmax scale to the caller's q in place."""

    def __call__(self, q, k, v, *, causal=False):
        q.mul_(q.shape[-1] ** -0.5)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0)


def test_an_implementation_that_writes_into_its_inputs_is_blamed_alone():
    """Inputs are shared by a case's implementations: sdpa after it would have mismatched on scaled queries."""
    cases = [Case(1, 2, 33, 16, "float32", causal, "fwd", "cpu") for causal in (False, True)]
    rows = []
    run_cases(
        [ScalesQueriesInPlace("in-place"), implementations.get("sdpa")],
        cases,
        settings=RunSettings(policies={"cpu": FAST}),
        on_row=rows.append,
    )
    statuses = {(row["impl"], row["causal"]): (row["status"], row.get("reason") or "") for row in rows}
    for causal in (False, True):
        assert statuses[("sdpa", causal)][0] == "ok", statuses
        status, reason = statuses[("in-place", causal)]
        assert status == "error" and reason.startswith("it wrote into its inputs"), reason
    result = check_case(ScalesQueriesInPlace("in-place"), Case(1, 2, 33, 16, "float32", False, "fwd", "cpu"), seed=3)
    assert result.status == "fail" and result.detail == "it wrote into its inputs: q changed during the call"
