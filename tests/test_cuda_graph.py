"""`run --cuda-graph`: forward rows also timed as CUDA-graph replays. On a CPU the refusals and the row logic (with
a stand-in for the capture); on a GPU (marked `gpu`) real captures, replays and a call that cannot be captured."""

from __future__ import annotations

import pytest
import torch

import implementations
from suite.case import Case
from suite.cli import main
from suite.measure import cuda_graph
from suite.measure.settings import RunSettings, TimingPolicy
from suite.run import runner
from tests.conftest import run_into

FAST = TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=5, budget_s=0.05)


def graph_run(impls, case_list, tmp_path, device="cpu"):
    return run_into(
        tmp_path / "r.jsonl", impls, case_list, RunSettings(policies={device: FAST}, cuda_graph=True), device
    )


def test_cuda_graph_on_a_cpu_run_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--cuda-graph", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graph: this run's device is cpu (allowed: a CUDA device" in err and not out.exists()


def test_the_python_api_refuses_graph_replays_on_a_cpu(tmp_path):
    from suite.api import benchmark

    with pytest.raises(ValueError, match=r"cuda_graph: this run's device is cpu \(allowed: a CUDA device"):
        benchmark("naive", seq_len=17, device="cpu", cuda_graph=True, out=tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


def test_only_forward_rows_on_a_gpu_are_replayed():
    assert cuda_graph.unavailable_reason("cuda", "fwd") is None
    assert (
        cuda_graph.unavailable_reason("cuda", "fwd+bwd")
        == "mode=fwd+bwd (supported: fwd; only forward calls are captured)"
    )
    assert cuda_graph.unavailable_reason("cpu", "fwd").startswith("device=cpu (supported: cuda")


def test_a_row_that_is_not_replayed_says_why_and_keeps_its_eager_figures(tmp_path):
    (row,) = graph_run([implementations.get("naive")], [Case(1, 2, 17, 16, "float32", False, "fwd", "cpu")], tmp_path)
    assert row["status"] == "ok" and row["time_ms"] > 0
    assert row["graph_reason"].startswith("device=cpu") and "graph_time_ms" not in row


class StandInCapture:
    """What CapturedCall does, without a GPU: `replay` calls the function again; `scale` makes it compute wrongly."""

    scale = 1.0
    fail: Exception | None = None
    released = 0

    def __init__(self, fn, device):
        if StandInCapture.fail:
            raise StandInCapture.fail
        self.fn = fn
        self.output = fn()

    def replay(self):
        self.output = self.fn() * StandInCapture.scale

    def release(self):
        StandInCapture.released += 1


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(cuda_graph, "CapturedCall", StandInCapture)
    monkeypatch.setattr(runner, "unavailable_reason", lambda device, mode: None)
    StandInCapture.scale, StandInCapture.fail, StandInCapture.released = 1.0, None, 0
    return StandInCapture


def test_replays_are_timed_and_their_output_checked(stand_in, tmp_path):
    case = Case(1, 2, 33, 16, "float32", True, "fwd", "cpu")
    (row,) = graph_run([implementations.get("naive")], [case], tmp_path)
    assert row["graph_time_ms"] > 0 and row["graph_repeats"] >= 3 and "graph_reason" not in row
    stand_in.scale = 1.01  # a graph that computes something else gets no time
    (row,) = graph_run([implementations.get("naive")], [case], tmp_path / "again")
    assert "graph_time_ms" not in row and row["status"] == "ok"
    assert row["graph_reason"].startswith("the replayed output disagrees with the checked first call")
    assert stand_in.released == 2  # its graph freed each time


def test_a_call_that_cannot_be_captured_keeps_its_row(stand_in, tmp_path):
    stand_in.fail = RuntimeError("operation not permitted when stream is capturing")
    (row,) = graph_run([implementations.get("naive")], [Case(1, 2, 33, 16, "float32", True, "fwd", "cpu")], tmp_path)
    assert row["status"] == "ok" and row["time_ms"] > 0
    assert (
        row["graph_reason"] == "could not be captured: RuntimeError: operation not permitted when stream is capturing"
    )


def test_a_report_sets_replayed_times_beside_eager_ones_and_says_why_a_row_has_none(stand_in, tmp_path):
    from suite.reporting.build import build_report

    case = Case(1, 2, 33, 16, "float32", True, "fwd", "cpu")
    graph_run([implementations.get("naive")], [case], tmp_path / "a")
    stand_in.fail = RuntimeError("operation not permitted when stream is capturing")
    graph_run([implementations.get("sdpa")], [case], tmp_path / "b")
    report = build_report(
        [tmp_path / "a" / "r.jsonl", tmp_path / "b" / "r.jsonl"], tmp_path / "report", baseline="sdpa"
    ).read_text()
    section = report.split("## CUDA-graph replays", 1)[1].split("\n## ", 1)[0]
    naive_line = next(line for line in section.splitlines() if line.startswith("| naive"))
    assert "×" in naive_line and case.label in naive_line
    sdpa_line = next(line for line in section.splitlines() if line.startswith("| sdpa"))
    assert "could not be captured: RuntimeError" in sdpa_line


def test_a_report_without_replays_has_no_such_section(tmp_path):
    from suite.reporting.build import build_report

    graph_run([implementations.get("naive")], [Case(1, 2, 17, 16, "float32", False, "fwd", "cpu")], tmp_path)
    assert "CUDA-graph replays" not in build_report([tmp_path / "r.jsonl"], tmp_path / "report").read_text()


class SynchronizingAttention(implementations.Implementation):
    """Reads a value back to the host inside the call: a CUDA graph cannot capture that."""

    def __call__(self, q, k, v, *, causal=False):
        scale = float(q.abs().max().item()) ** 0  # 1.0, but only after a device-to-host copy
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal) * scale


@pytest.mark.gpu
def test_gpu_replays_are_timed_for_kernels_and_a_synchronizing_call_is_refused(tmp_path):
    decoding = Case(16, 32, 8192, 128, "bfloat16", True, "fwd", "cuda", kv_heads=8, q_len=1)
    impls = [
        implementations.get("sdpa"),
        implementations.get("naive"),
        SynchronizingAttention("syncing"),
        implementations.get("linear", state="carried"),
        implementations.get("sdpa-flash"),
    ]
    rows = {row["impl"]: row for row in graph_run(impls, [decoding], tmp_path, device="cuda")}
    for name in ("sdpa", "naive", "linear:state=carried", "sdpa-flash"):
        row = rows[name]
        assert row["status"] == "ok" and row["graph_time_ms"] > 0, (name, row.get("graph_reason"))
        # Replays issue nothing from Python: never slower than the eager calls beyond their spread.
        assert row["graph_time_ms"] <= 1.1 * row["time_ms"] + 3 * row["time_iqr_ms"], name
    synced = rows["syncing"]
    assert synced["status"] == "ok" and "graph_time_ms" not in synced
    assert synced["graph_reason"].startswith("could not be captured")
    backward = Case(1, 4, 256, 64, "bfloat16", True, "fwd+bwd", "cuda")
    (row,) = graph_run([implementations.get("sdpa")], [backward], tmp_path / "bwd", device="cuda")
    assert row["graph_reason"].startswith("mode=fwd+bwd")


def test_the_run_table_shows_replayed_and_energy_figures_where_they_were_measured():
    from suite.run.summary import format_table

    row = {
        "impl": "sdpa",
        **vars(Case(1, 2, 64, 16, "bfloat16", True, "fwd", "cuda")),
        "status": "ok",
        "time_ms": 0.05,
        "tflops": 0.5,
    }
    table = format_table([{**row, "graph_time_ms": 0.02, "energy_j": 0.0031}])
    assert "0.05 ms 0.5 TF/s (graph 0.02 ms) 3.1 mJ" in table
    assert "CUDA graph (--cuda-graph)" in table and "NVML's counter (--energy)" in table
    assert "graph" not in format_table([row]) and "mJ" not in format_table([row])
