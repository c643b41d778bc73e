"""Local inputs: softmax attention peaked near the diagonal, for the approximations' error figure."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import implementations
from suite.case import Case
from suite.check.workload import LOCAL_CORRELATION_TOKENS, LOCAL_SELF_LOGIT, local_shape, local_tensors, random_tensors
from suite.measure.settings import RunSettings, TimingPolicy
from suite.reporting.build import _accuracy_table
from suite.results.files import load
from suite.run import config
from suite.run.runner import run_cases
from tests.conftest import run_into

FAST = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=3, budget_s=0.01)})


def _weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    return (q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)


def _weight_within(weights: torch.Tensor, tokens: int, queries: torch.Tensor | None = None) -> float:
    """Mean share of each query's weight on keys within `tokens` of it (queries: the rows' positions)."""
    keys = torch.arange(weights.shape[-1])
    queries = keys if queries is None else queries
    near = (queries[:, None] - keys[None, :]).abs() <= tokens
    return float((weights * near).sum(-1).mean())


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_attention_on_local_inputs_is_peaked_near_the_diagonal_and_on_iid_inputs_is_not(head_dim):
    case = Case(1, 2, 1024, head_dim, "float32", False, "fwd", "cpu")
    q, k, _ = local_tensors(case, 7)
    self_logits = (q.double() * k.double()).sum(-1) / math.sqrt(head_dim)
    assert abs(float(self_logits.mean()) - LOCAL_SELF_LOGIT) < 1.0
    assert _weight_within(_weights(q, k), 64) > 0.8
    q, k, _, _ = random_tensors(case, 7)
    assert _weight_within(_weights(q, k), 64) < 0.2


@pytest.mark.parametrize("head_dim", [64, 128])
def test_local_inputs_stay_local_at_long_lengths(head_dim):
    """With a fixed logit scale the weight on unrelated positions grows with N (at 16K, under half of it
    stayed within 64 tokens); scaled with log N, it stays local, and the peak keeps its width."""
    seq_len, rows = 16384, torch.arange(8000, 8128)
    case = Case(1, 1, seq_len, head_dim, "float32", False, "fwd", "cpu")
    q, k, _ = local_tensors(case, 7)
    self_logit, correlation_tokens = local_shape(seq_len)
    assert self_logit > LOCAL_SELF_LOGIT + 5 and correlation_tokens > 1.5 * LOCAL_CORRELATION_TOKENS
    self_logits = (q[0, 0].double() * k[0, 0].double()).sum(-1) / math.sqrt(head_dim)
    assert abs(float(self_logits.mean()) - self_logit) < 1.0
    weights = _weights(q[:, :, rows], k)
    assert _weight_within(weights, 64, rows) > 0.8
    assert _weight_within(weights, 4, rows) < 0.8  # more than the query's own position


def test_local_inputs_are_seeded_typed_and_share_a_latent_within_a_query_group():
    case = Case(2, 4, 300, 16, "bfloat16", True, "fwd", "cpu", kv_heads=2)
    q, k, v = local_tensors(case, 3)
    assert q.shape == (2, 4, 300, 16) and k.shape == v.shape == (2, 2, 300, 16)
    assert {t.dtype for t in (q, k, v)} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), local_tensors(case, 3)))
    assert not torch.equal(q, local_tensors(case, 4)[0])

    def correlation(a, b):
        return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))

    # Query heads 2 and 3 belong to key/value head 1: they follow its latent, not head 0's.
    for head in (2, 3):
        assert correlation(q[:, head], k[:, 1]) > 0.6
        assert abs(correlation(q[:, head], k[:, 0])) < 0.2


def test_runner_reports_each_approximation_against_softmax_on_local_inputs_too(tmp_path):
    case = Case(1, 2, 512, 32, "float32", False, "fwd", "cpu")
    impls = [
        implementations.get("sdpa"),
        config.build_impl("t", "sparse-window:window=64"),
        implementations.get("linear"),
    ]
    rows = run_into(tmp_path / "r.jsonl", impls, [case], FAST)
    exact, window, linear = rows
    assert exact["status"] == window["status"] == linear["status"] == "ok"
    assert "softmax_local_rel_rms_err" not in exact
    # A window keeps the local weight that linear attention's feature map cannot represent.
    assert window["softmax_local_rel_rms_err"] < 0.3 < linear["softmax_local_rel_rms_err"]
    # On i.i.d. inputs the ranking is the other way round: the figure there does not guide a choice.
    assert window["softmax_rel_rms_err"] > linear["softmax_rel_rms_err"]

    table = _accuracy_table(load(tmp_path / "r.jsonl"))
    assert table.header[-2:] == ["vs softmax, local inputs: median", "vs softmax, local inputs: max"]
    by_impl = {row[0]: row for row in table.rows}
    assert by_impl["sdpa"][-1] == "exact" and by_impl["linear"][-1] not in ("exact", "—")


def test_a_failure_on_local_inputs_leaves_the_row_its_timing(tmp_path):
    class FailsOnLocalInputs(implementations.get("linear").__class__):
        def __call__(self, q, k, v, *, causal=False):
            if not torch.is_grad_enabled():  # in a fwd+bwd case, only the local-inputs forward runs without grad
                raise RuntimeError("planted failure")
            return super().__call__(q, k, v, causal=causal)

    case = Case(1, 2, 64, 16, "float32", False, "fwd+bwd", "cpu")
    rows: list[dict] = []
    run_cases([FailsOnLocalInputs("fails-on-local")], [case], settings=FAST, on_row=rows.append)
    assert rows[0]["status"] == "ok" and rows[0]["time_ms"] > 0
    assert "planted failure" in rows[0]["softmax_local_note"]


def test_recommend_weighs_the_local_figure_when_a_row_has_it():
    from suite.compare.recommend import _error

    approximate = {"family": "linear", "rel_rms_err": 0.001}
    assert _error({**approximate, "softmax_local_rel_rms_err": 0.1, "softmax_rel_rms_err": 2.0}) == (0.1, "local")
    assert _error({**approximate, "softmax_local_rel_rms_err": float("nan"), "softmax_rel_rms_err": 2.0}) == (
        2.0,
        "i.i.d.",
    )
    # its error against its own twin is no error against softmax attention
    assert _error({**approximate, "softmax_local_rel_rms_err": None, "softmax_rel_rms_err": None}) == (None, None)
    assert _error({"family": "exact", "rel_rms_err": 0.001}) == (0.001, "rounding")


def test_local_figures_are_measured_once_per_forward_case_and_inputs_made_once_per_case(monkeypatch):
    from suite.check import expected

    figures, inputs = [], []
    real_measure, real_tensors = expected.LocalErrors._measure, expected.local_tensors
    monkeypatch.setattr(
        expected.LocalErrors,
        "_measure",
        lambda self, impl, case: figures.append(impl.label) or real_measure(self, impl, case),
    )
    monkeypatch.setattr(
        expected, "local_tensors", lambda case, seed: inputs.append(case.label) or real_tensors(case, seed)
    )
    forward = Case(1, 2, 64, 16, "float32", False, "fwd", "cpu")
    cases = [forward, replace(forward, mode="fwd+bwd"), replace(forward, causal=True)]
    rows: list[dict] = []
    approximations = [implementations.get("linear"), implementations.get("performer")]
    run_cases(approximations, cases, settings=FAST, on_row=rows.append)
    # fwd+bwd reuses the fwd figures; both approximations share one set of local inputs per case.
    assert figures == ["linear", "performer", "linear", "performer"]
    assert inputs == [forward.label, replace(forward, causal=True).label]
    assert rows[0]["softmax_local_rel_rms_err"] == rows[2]["softmax_local_rel_rms_err"]
