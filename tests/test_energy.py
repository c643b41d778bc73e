"""`run --energy`: energy per call from NVML's counter. On a CPU the refusals and the arithmetic (with a stand-in
counter); on a GPU (marked `gpu`) the real counter."""

from __future__ import annotations

import pytest
import torch

import implementations
from suite.case import Case
from suite.cli import main
from suite.measure import energy
from suite.measure.gpu_monitor import GpuMonitor
from suite.measure.settings import RunSettings, TimingPolicy
from tests.conftest import run_into

FAST = TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=5, budget_s=0.05)
CASE = Case(1, 2, 33, 16, "float32", True, "fwd", "cpu")


def energy_run(impls, case_list, path, device="cpu"):
    return run_into(path, impls, case_list, RunSettings(policies={device: FAST}, energy=True), device)


def test_energy_on_a_cpu_run_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--energy", "--out", str(out)]) == 2
    assert "--energy: this run's device is cpu (allowed: a CUDA device" in capsys.readouterr().err
    assert not out.exists()
    from suite.api import benchmark

    with pytest.raises(ValueError, match=r"energy: this run's device is cpu"):
        benchmark("naive", seq_len=17, device="cpu", energy=True, out=tmp_path / "r.jsonl")


class Counter:
    """A stand-in for NVML's counter: `per_call` millijoules for every call of the function it is told of."""

    def __init__(self, per_call: int | None):
        self.per_call, self.total = per_call, 1_000_000

    def counted(self, fn):
        def call():
            self.total += self.per_call or 0
            return fn()

        return call

    def read(self) -> int | None:
        return None if self.per_call is None else self.total


def test_energy_is_the_counters_difference_over_the_calls_between_its_reads(monkeypatch):
    monkeypatch.setattr(energy, "WINDOW_S", 0.05)
    counter = Counter(per_call=7)
    figures = energy.energy_figures(
        counter.counted(lambda: None), None, torch.device("cpu"), counter.read, time_ms=10.0, why_no_counter=None
    )
    assert figures["energy_calls"] == 5  # 50 ms of 10 ms calls
    assert figures["energy_j"] == pytest.approx(7e-3)
    assert figures["energy_power_w"] == pytest.approx(35e-3 / figures["energy_window_s"])
    still = Counter(per_call=0)
    assert (
        "the energy counter read 1000000 mJ and then 1000000 mJ"
        in energy.energy_figures(still.counted(lambda: None), None, torch.device("cpu"), still.read, 10.0, None)[
            "energy_reason"
        ]
    )
    missing = Counter(per_call=None)
    assert energy.energy_figures(
        lambda: None, None, torch.device("cpu"), missing.read, 10.0, "pynvml is not installed"
    ) == {"energy_reason": "pynvml is not installed"}


def test_a_row_without_a_counter_says_why_and_keeps_its_figures(tmp_path):
    (row,) = energy_run([implementations.get("naive")], [CASE], tmp_path / "r.jsonl")
    assert row["status"] == "ok" and row["time_ms"] > 0
    assert row["energy_reason"] == "no NVIDIA GPU in use (device=cpu)" and "energy_j" not in row


def test_a_report_gives_energy_per_call_and_per_token(monkeypatch, tmp_path):
    from suite.reporting.build import build_report

    monkeypatch.setattr(energy, "WINDOW_S", 0.02)
    readings = iter(range(0, 10**9, 50))  # 50 mJ between any two reads
    monkeypatch.setattr(GpuMonitor, "energy_mj", lambda self: next(readings))
    energy_run([implementations.get("naive")], [CASE], tmp_path / "r.jsonl")
    report = build_report([tmp_path / "r.jsonl"], tmp_path / "report").read_text()
    section = report.split("## Energy", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith("| naive"))
    assert CASE.label in line and "mJ per token" in section


@pytest.mark.gpu
def test_gpu_energy_per_call_agrees_with_power_and_time(tmp_path):
    case = Case(4, 16, 4096, 128, "bfloat16", True, "fwd", "cuda")
    (row,) = energy_run([implementations.get("sdpa")], [case], tmp_path / "r.jsonl", device="cuda")
    if "energy_reason" in row:
        pytest.skip(f"no energy counter here: {row['energy_reason']}")
    assert row["energy_window_s"] >= 0.9 * energy.WINDOW_S
    assert 20 < row["energy_power_w"] < 1500  # a board's draw, idle to beyond any TDP
    # Back to back, one call lasts about its median: energy per call is power times that time.
    assert row["energy_j"] == pytest.approx(row["energy_power_w"] * row["time_ms"] / 1e3, rel=0.5)


def test_a_dry_run_says_what_energy_and_graph_replays_add_to_its_estimate():
    from suite.run.session import extra_measurements as _extra_measurements

    line = _extra_measurements(90, graph_replays=True, energy_per_call=True, policy=TimingPolicy(budget_s=1.0))
    assert line == (
        "not in `took before`: --energy: about 2 s more per row (3.0 min for 90); "
        "--cuda-graph: each forward row's capture and up to 1 s of replays more"
    )
    assert _extra_measurements(90, graph_replays=False, energy_per_call=False, policy=TimingPolicy()) is None
