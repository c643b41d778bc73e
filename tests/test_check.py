"""`attnbench check`: the conformance check from the command line, for any implementation."""

from __future__ import annotations

import re

from suite.cli import main
from suite.measure import failures
from tests.conftest import ScriptedAttention, sdpa


def _check(capsys, *argv) -> tuple[int, str]:
    status = main(["check", "--device", "cpu", *argv])
    return status, capsys.readouterr().out


def test_correct_implementations_pass(capsys):
    status, out = _check(capsys, "--impl", "naive,sparse-window:window=4", "--dtype", "float32")
    assert status == 0
    assert "naive: ok (78 passed, 0 failed, 0 errors, 0 unsupported" in out
    assert "sparse-window:window=4: ok (78 passed" in out
    assert "forward only" not in out  # their forward-alone cases are deliberate, not a missing backward


def test_seed_changes_the_inputs(capsys, fake_registry):
    fake_registry("off-by-a-bit", scale_output=1.01)
    status, out = _check(capsys, "--impl", "off-by-a-bit", "--dtype", "float32", "--seed", "5")
    assert status == 1 and "FAIL  B1-H2-N1-D16-fp32-dense-fwd+bwd seed 28:" in out


def test_a_wrong_output_fails_with_the_case_and_error(capsys, fake_registry):
    fake_registry("off-by-a-bit", scale_output=1.01)
    status, out = _check(capsys, "--impl", "off-by-a-bit", "--dtype", "float32")
    assert status == 1
    assert "off-by-a-bit: FAILED (0 passed, 78 failed" in out  # at large logits too: float32 is held to the twin there
    assert "FAIL  B1-H2-N1-D16-fp32-dense-fwd+bwd seed 23: out rel_rms_err 0.01 beyond tolerance" in out
    assert "... and 58 more" in out


def test_a_crash_is_reported_and_the_check_goes_on(capsys, fake_registry):
    fake_registry("crashes-at-17", fail_on_seq_len=17, error=RuntimeError("bad launch"))
    status, out = _check(capsys, "--impl", "crashes-at-17,naive", "--dtype", "bfloat16")
    assert status == 1
    assert "crashes-at-17: FAILED (74 passed, 0 failed, 4 errors" in out
    assert "ERROR B3-H2-N17-D64-bf16-causal-fwd+bwd seed 183: RuntimeError: bad launch" in out
    assert "naive: ok" in out


def test_an_error_that_leaves_the_device_unusable_stops_the_check(capsys, fake_registry, monkeypatch):

    fake_registry("crashes-at-17", fail_on_seq_len=17, error=RuntimeError("illegal memory access"))
    monkeypatch.setattr(failures, "device_usable", lambda device: False)  # asked only after an error
    status, out = _check(capsys, "--impl", "crashes-at-17,naive", "--dtype", "bfloat16", "--in-process")
    assert status == 1
    assert "crashes-at-17: FAILED (4 passed, 0 failed, 1 errors" in out  # stopped at its first crash
    assert "stopped: the device was unusable after the error on B3-H2-N17-D64-bf16-dense-fwd+bwd" in out
    assert "naive: NOT CHECKED (the device was unusable after crashes-at-17's error)" in out


def test_an_implementation_that_runs_nothing_here_is_not_a_pass(capsys):
    status, out = _check(capsys, "--impl", "sdpa-cudnn", "--dtype", "float32")
    assert status == 1
    assert "sdpa-cudnn: NOT CHECKED (0 passed, 0 failed, 0 errors, 78 unsupported" in out
    assert "unsupported: device=cpu (supported: cuda)" in out


def test_bad_flags_exit_2(capsys):
    assert main(["check", "--impl", "flashy"]) == 2
    assert "unknown implementation 'flashy'" in capsys.readouterr().err
    assert main(["check", "--impl", "naive", "--dtype", "float8"]) == 2
    assert "unknown dtype 'float8'" in capsys.readouterr().err


def test_a_forward_only_kernel_is_checked_forward(capsys, monkeypatch):
    """An inference kernel that refuses gradients is still checked, and the summary says forward only."""
    import implementations
    from implementations.naive import NaiveAttention

    class InferenceOnly(NaiveAttention):
        def supports(self, case):
            return ["mode=fwd+bwd (supported: fwd)"] if case.mode != "fwd" else []

    monkeypatch.setitem(implementations.REGISTRY, "inference-only", InferenceOnly)
    status, out = _check(capsys, "--impl", "inference-only", "--dtype", "float32")
    assert status == 0
    assert "inference-only: ok (54 passed, 0 failed, 0 errors, 0 unsupported; 54 forward only" in out


def test_a_broken_exact_twin_is_an_error_not_a_crash(capsys, monkeypatch):
    import implementations
    from implementations.naive import NaiveAttention

    class BrokenTwin(NaiveAttention):
        def exact_twin(self, q, k, v, *, causal=False):
            raise NotImplementedError("twin not written yet")

    monkeypatch.setitem(implementations.REGISTRY, "broken-twin", BrokenTwin)
    status, out = _check(capsys, "--impl", "broken-twin", "--dtype", "float32")
    assert status == 1
    assert "broken-twin: FAILED (0 passed, 0 failed, 78 errors" in out
    assert "exact_twin: NotImplementedError: twin not written yet" in out


def test_results_that_move_between_two_calls_on_the_same_inputs_fail(capsys, fake_registry):
    """Each call within float32's tolerance (2e-4) of the reference, the two 3e-4 apart: a race's symptom."""
    fake_registry("racy", jitter=1.5e-4)
    status, out = _check(capsys, "--impl", "racy", "--dtype", "float32")
    assert status == 1 and "racy: FAILED (4 passed, 74 failed" in out  # large logits: one call each
    assert (
        "a second call on the same inputs, inside the implementation's session, differs from the first beyond the "
        "tolerance" in out
    )


def test_a_session_that_changes_what_a_call_computes_fails(capsys, monkeypatch):
    """The timed calls of `attnbench run` are made inside the implementation's session; a program's call alone is
    not: the check compares one of each."""
    import implementations
    from implementations.naive import NaiveAttention
    from tests.conftest import WithSession

    class WrongInItsSession(WithSession, NaiveAttention):
        def __call__(self, q, k, v, *, causal=False):
            out = super().__call__(q, k, v, causal=causal)
            return out * 1.01 if self.inside else out

    monkeypatch.setitem(implementations.REGISTRY, "wrong-in-session", WrongInItsSession)
    status, out = _check(capsys, "--impl", "wrong-in-session", "--dtype", "float32")
    assert status == 1 and "wrong-in-session: FAILED (4 passed, 74 failed" in out
    assert "or a session that changes the result" in out


def test_last_bit_differences_between_calls_are_noted_not_failed(capsys, fake_registry):
    fake_registry("atomic-order", jitter=1e-6)
    status, out = _check(capsys, "--impl", "atomic-order,naive", "--dtype", "float32")
    assert status == 0 and "atomic-order: ok (78 passed" in out
    # Every output moves with the jitter; at one token dq and dk are exactly zero, whatever the jitter. Which
    # other gradients round back to the same bits depends on the CPU's kernels (40 to 42 cases seen).
    note = re.search(
        r"agreed within tolerance but not bit for bit \(out in (\d+), dq in (\d+), dk in (\d+), "
        r"dv in (\d+) of 74 passing",
        out,
    )
    assert note, out
    moved_out, moved_dq, moved_dk, moved_dv = map(int, note.groups())
    assert moved_out == 74 and 0 < moved_dq < 74 and 0 < moved_dk < 74 and 0 < moved_dv <= 74
    assert out.count("not bit for bit") == 1  # naive repeats itself exactly


def test_an_exp_without_the_row_maximum_fails_at_large_logits(capsys, monkeypatch):
    """Exact on unit-normal inputs, where logits stay small; inf/inf at logits of spread 40, even in float32."""
    import torch

    import implementations
    from implementations.base import expand_kv

    class Unstabilized(implementations.Implementation):
        def __call__(self, q, k, v, *, causal=False):
            k, v = expand_kv(q, k, v)
            weights = torch.exp((q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5)
            if causal:
                weights = weights.tril(k.shape[-2] - q.shape[-2])  # queries are the last positions
            return ((weights @ v.float()) / weights.sum(-1, keepdim=True)).to(q.dtype)

    monkeypatch.setitem(implementations.REGISTRY, "unstabilized", Unstabilized)
    status, out = _check(capsys, "--impl", "unstabilized", "--dtype", "float32")
    assert status == 1 and "unstabilized: FAILED (74 passed, 4 failed" in out
    assert "B1-H2-N257-D64-fp32-dense-fwd+bwd seed 4000: at logits of spread 40" in out and "NaN or infinite" in out


def test_a_kernel_that_assumes_contiguous_inputs_fails_on_transposed_views(capsys, monkeypatch):
    """Reads its inputs' storage as if (batch, heads, seq, dim) contiguous, as a kernel given raw pointers would."""
    import torch

    import implementations

    def as_if_contiguous(t):
        b, h, n, d = t.shape
        return torch.as_strided(t, t.shape, (h * n * d, n * d, d, 1), t.storage_offset())

    class StrideBlind(implementations.Implementation):
        def __call__(self, q, k, v, *, causal=False):
            q, k, v = (as_if_contiguous(t) for t in (q, k, v))
            return sdpa(q, k, v, causal=causal, enable_gqa=q.shape[1] != k.shape[1])

    monkeypatch.setitem(implementations.REGISTRY, "stride-blind", StrideBlind)
    status, out = _check(capsys, "--impl", "stride-blind", "--dtype", "float32")
    assert status == 1 and "stride-blind: FAILED (76 passed, 2 failed" in out
    assert (
        "B2-H3-N65-D32-fp32-dense-fwd+bwd seed 5000: with q, k, v and the upstream gradient laid out (batch, seq, "
        "heads, dim) in memory"
    ) in out


def test_a_backward_that_assumes_a_contiguous_upstream_gradient_fails_on_transposed_views(capsys, monkeypatch):
    import torch

    import implementations

    class _Blind(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal):
            ctx.save_for_backward(q, k, v)
            ctx.causal = causal
            return sdpa(q, k, v, causal=causal)

        @staticmethod
        def backward(ctx, grad_out):
            b, h, n, d = grad_out.shape  # read as if contiguous, as a kernel given a raw pointer would
            grad_out = torch.as_strided(grad_out, grad_out.shape, (h * n * d, n * d, d, 1), grad_out.storage_offset())
            q, k, v = (t.detach().requires_grad_() for t in ctx.saved_tensors)
            with torch.enable_grad():
                out = sdpa(q, k, v, causal=ctx.causal)
            return (*torch.autograd.grad(out, (q, k, v), grad_out), None)

    class GradientStrideBlind(implementations.Implementation):
        def supports(self, case):
            return ["no grouped-query attention"] if case.kv_heads not in (None, case.heads) else []

        def __call__(self, q, k, v, *, causal=False):
            return _Blind.apply(q, k, v, causal)

    monkeypatch.setitem(implementations.REGISTRY, "grad-stride-blind", GradientStrideBlind)
    status, out = _check(capsys, "--impl", "grad-stride-blind", "--dtype", "float32")
    assert status == 1 and "grad-stride-blind: FAILED (60 passed, 2 failed, 0 errors, 16 unsupported" in out
    assert "seed 5000: with q, k, v and the upstream gradient laid out (batch, seq, heads, dim) in memory: dq" in out


def test_an_inference_path_of_its_own_is_checked_too(capsys, monkeypatch):
    """Right when autograd records it, wrong without: `run --mode fwd` would time the wrong one."""
    import torch

    import implementations

    class WrongWithoutGrad(ScriptedAttention):
        def __call__(self, q, k, v, *, causal=False):
            out = super().__call__(q, k, v, causal=causal)
            return out if torch.is_grad_enabled() and q.requires_grad else out * 1.01

    monkeypatch.setitem(implementations.REGISTRY, "wrong-without-grad", WrongWithoutGrad)
    status, out = _check(capsys, "--impl", "wrong-without-grad", "--dtype", "float32")
    assert status == 1 and "wrong-without-grad: FAILED (54 passed, 24 failed" in out
    assert "FAIL  B1-H2-N1-D16-fp32-dense-fwd seed 23: out rel_rms_err 0.01" in out


def test_json_holds_every_case_with_its_result(capsys, fake_registry, tmp_path):
    import json

    fake_registry("off-by-a-bit", scale_output=1.01)
    path = tmp_path / "deep" / "check.json"
    status, out = _check(capsys, "--impl", "naive,off-by-a-bit", "--dtype", "float32", "--json", str(path))
    record = json.loads(path.read_text())
    assert status == 1 and record["ok"] is False and f"results: {path}" in out
    naive, wrong = record["implementations"]
    assert naive["ok"] and naive["counts"] == {"pass": 78, "fail": 0, "error": 0, "unsupported": 0}
    assert len(wrong["results"]) == 78 and wrong["counts"]["fail"] == 78
    first_failure = next(r for r in wrong["results"] if r["status"] == "fail")
    assert first_failure["seq_len"] == 1 and first_failure["detail"].startswith("out rel_rms_err 0.01")
    assert not list(path.parent.glob("*.partial"))


def test_shapes_of_your_own_are_checked_like_the_awkward_ones(capsys, monkeypatch):
    """A kernel wrong only at head dim 80 passes the built-in shapes and fails at `--head-dim 80`."""
    import implementations

    class WrongAtHeadDim80(ScriptedAttention):
        def __call__(self, q, k, v, *, causal=False):
            return super().__call__(q, k, v, causal=causal) * (1.01 if q.shape[-1] == 80 else 1.0)

    monkeypatch.setitem(implementations.REGISTRY, "wrong-at-80", WrongAtHeadDim80)
    status, out = _check(capsys, "--impl", "wrong-at-80", "--dtype", "float32")
    assert status == 0 and "wrong-at-80: ok (78 passed" in out and "your own" not in out
    status, out = _check(capsys, "--impl", "wrong-at-80", "--dtype", "float32", "--head-dim", "80", "--seq-len", "100")
    assert (
        "and shapes of your own: B3-H2-N17-D80, B1-H2-N257-D80, B2-H4-KV2-N33-D80, B1-H2-N100-D80, B1-H4-KV2-N100-D80"
        in out
    )
    assert status == 1 and "wrong-at-80: FAILED (78 passed, 20 failed" in out  # 5 shapes, causal and not, ± autograd
    assert "FAIL  B2-H4-KV2-N33-D80-fp32-causal-fwd+bwd seed 311: dv rel_rms_err 0.01 beyond tolerance" in out


def test_bad_own_shapes_exit_2(capsys):
    assert main(["check", "--device", "cpu", "--impl", "naive", "--head-dim", "0"]) == 2
    assert "--head-dim" in capsys.readouterr().err
    assert main(["check", "--device", "cpu", "--impl", "naive", "--seq-len", "12x"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_query_lengths_of_your_own_are_checked_against_each_length(capsys, monkeypatch):
    """A kernel that aligns its causal mask to the first key passes every full-length shape and fails the decoding
    shapes, built-in and `--q-len` ones."""
    import torch

    import implementations

    class TopLeftCausal(ScriptedAttention):
        def __call__(self, q, k, v, *, causal=False):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]
            )

    monkeypatch.setitem(implementations.REGISTRY, "top-left", TopLeftCausal)
    status, out = _check(capsys, "--impl", "top-left", "--dtype", "float32", "--seq-len", "100", "--q-len", "1,7,100")
    assert (
        "and shapes of your own: B1-H2-N100-D64, B1-H4-KV2-N100-D64, B1-H2-N100-Q1-D64, B1-H4-KV2-N100-Q1-D64, "
        "B1-H2-N100-Q7-D64, B1-H4-KV2-N100-Q7-D64 (KV" in out
    )  # 100 of 100 is the full-length shape
    # every causal decoding shape, with and without autograd: 3 built-in ones and 4 of your own (aligned to the first
    # key, one query sees that key alone), and the causal chunked prefill at large logits
    assert status == 1 and "top-left: FAILED (87 passed, 15 failed" in out
    assert (
        "FAIL  B1-H2-N100-Q7-D64-fp32-causal-fwd+bwd seed 855: q holds the last 7 of 100 positions: a causal "
        "mask must be aligned to the last key" in out
    )
    assert main(["check", "--device", "cpu", "--impl", "naive", "--seq-len", "64", "--q-len", "65"]) == 2
    assert "--q-len: 65 exceeds the length 64" in capsys.readouterr().err
