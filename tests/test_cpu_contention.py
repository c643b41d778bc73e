"""A CPU run notices other processes on its cores: the header says how busy the machine was, a warning says so,
and each row records whether other processes took the cores its calls were timed on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from suite.cli import main
from suite.measure import cpu_contention
from suite.measure.cpu_contention import Contention, CpuSample, cpu_times, row_verdict

linux_only = pytest.mark.skipif(cpu_contention.sample() is None, reason="no /proc/stat on this system")
TINY = [
    "--impl",
    "naive",
    "--seq-len",
    "16",
    "--heads",
    "1",
    "--batch",
    "1",
    "--head-dim",
    "8",
    "--dtype",
    "float32",
    "--causal",
    "false",
    "--mode",
    "fwd",
    "--device",
    "cpu",
]
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def after(before: CpuSample, window_s: float, busy_cores: float, own_cores: float) -> CpuSample:
    """A sample `window_s` after `before`, the CPUs busy `busy_cores` on average, this process `own_cores` of them."""
    ticks = round(window_s * TICKS_PER_S)
    return CpuSample(
        before.busy_ticks + round(busy_cores * ticks),
        before.total_ticks + before.cores * ticks,
        before.own_s + own_cores * window_s,
        before.cores,
    )


START = CpuSample(busy_ticks=50_000, total_ticks=200_000, own_s=30.0, cores=2)


def test_other_processes_contend_when_they_take_cores_torchs_threads_need():
    alone = Contention.between(START, after(START, 1.0, busy_cores=2.0, own_cores=1.98))
    assert alone.others_busy_cores == pytest.approx(0.02) and alone.contended(threads=2) is False
    shared = Contention.between(START, after(START, 1.0, busy_cores=2.0, own_cores=1.0))
    assert shared.others_busy_cores == pytest.approx(1.0) and shared.contended(threads=2) is True
    # One thread leaves a core idle: another process on it takes nothing the measured calls needed.
    assert shared.contended(threads=1) is False
    assert Contention.between(START, after(START, 1.0, busy_cores=2.0, own_cores=0.4)).contended(threads=1) is True
    # Idle cores are not contention, however few processes of this run are busy.
    idle = Contention.between(START, after(START, 1.0, busy_cores=0.3, own_cores=0.3))
    assert idle.others_busy_cores == pytest.approx(0.0, abs=1e-9) and idle.contended(threads=2) is False


def test_a_window_too_short_for_whole_ticks_is_not_judged():
    short = Contention.between(START, after(START, 1 / TICKS_PER_S, busy_cores=2.0, own_cores=0.0))
    assert short.resolution_cores == pytest.approx(2.0) and short.contended(threads=2) is None
    assert Contention.between(START, START) is None
    contended, record = row_verdict(START, START, 2)
    assert contended is None and record["others_busy_cores"] is None and record["window_s"] == 0.0
    assert row_verdict(None, None, 2) == (None, None)  # a GPU row, or a system without /proc/stat


def test_proc_stat_is_read_for_the_cpus_this_process_may_use_with_steal_as_busy():
    text = (
        "cpu  900 0 90 900 9 0 0 9 0 0\n"
        "cpu0 100 1 10 200 5 2 3 7 50 0\n"  # busy: user nice system irq softirq steal (guest is in user)
        "cpu1 800 0 80 100 4 0 0 2 0 0\n"
        "cpu2 1 0 0 9\n"  # an older kernel's fewer fields
        "intr 5 6\nctxt 7\nprocs_running 3\n"
    )
    assert cpu_times(text, {0}) == (100 + 1 + 10 + 2 + 3 + 7, 100 + 1 + 10 + 200 + 5 + 2 + 3 + 7)
    assert cpu_times(text, {0, 2}) == (123 + 1, 328 + 10)
    assert cpu_times(text, {5}) == (0, 0)


def test_the_warning_is_one_line_naming_the_load_and_the_threads():
    busy = {"others_busy_cores": 1.96, "cores": 2, "threads": 1, "busy": True}
    warning = cpu_contention.busy_warning(busy)
    assert len(warning.splitlines()) == 1
    assert "other processes kept 2.0 of its 2 cores busy while torch will use 1 thread;" in warning
    assert cpu_contention.busy_warning({**busy, "busy": False}) is None
    assert cpu_contention.busy_warning({"unavailable": "no /proc/stat", "threads": 1, "busy": None}) is None


@linux_only
def test_the_header_records_the_load_against_the_threads_of_the_run(tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    header = json.loads(out.read_text().splitlines()[0])
    load = header["cpu_load"]
    assert load["threads"] == torch.get_num_threads() and load["cores"] == len(os.sched_getaffinity(0))
    assert load["window_s"] > 0 and load["others_busy_cores"] >= 0 and isinstance(load["busy"], bool)
    row = json.loads(out.read_text().splitlines()[1])
    assert row["cpu_contention"]["threads"] == load["threads"] and row["cpu_contention"]["cores"] == load["cores"]


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """As many busy loops as this process has cores, running until the test ends."""
    loops = [
        subprocess.Popen(
            [sys.executable, "-c", "print('running', flush=True)\nwhile True: pass"], stdout=subprocess.PIPE, text=True
        )
        for _ in os.sched_getaffinity(0)
    ]
    try:
        for loop in loops:
            loop.stdout.readline()
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
            loop.stdout.close()


@linux_only
def test_a_run_beside_busy_processes_warns_once_and_marks_its_rows(tmp_path, capsys, busy_machine):
    out = tmp_path / "r.jsonl"
    # Timed for a fixed budget, not until the median settles: enough ticks of /proc/stat to judge the row.
    timing = "warmup_calls=1,min_repeats=5,max_repeats=100000,budget_s=0.3,target_relative_ci=0"
    assert main(["run", *TINY, "--timing", timing, "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "this machine is busy" in line]
    assert len(warnings) == 1
    assert f"while torch will use {torch.get_num_threads()} thread" in warnings[0]
    header, row = (json.loads(line) for line in out.read_text().splitlines())
    assert header["cpu_load"]["busy"] is True
    assert f"kept {header['cpu_load']['others_busy_cores']:.1f} of its" in warnings[0]
    assert row["cpu_contended"] is True and row["cpu_contention"]["others_busy_cores"] > 0.5
