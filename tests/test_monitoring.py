"""GPU clock monitoring degrades to reasons on CPU; throttling is judged from clocks and NVML reasons."""

from __future__ import annotations

import io

import torch

from suite.case import Case, key_of_row
from suite.measure.gpu_monitor import GpuMonitor, throttle_verdict
from suite.run.progress import Progress


def test_monitor_on_cpu_gives_a_reason_and_never_fails():
    monitor = GpuMonitor(torch.device("cpu"))
    assert monitor.unavailable == "no NVIDIA GPU in use (device=cpu)"
    assert monitor.sample() == {"unavailable": monitor.unavailable}
    assert throttle_verdict(monitor.sample()) == (None, [])


def test_throttle_verdict_from_reasons_and_clock():
    calm = {"sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980, "clock_event_reasons": ["gpu_idle"]}
    assert throttle_verdict(calm) == (False, [])
    capped = {**calm, "clock_event_reasons": ["sw_power_cap"]}
    assert throttle_verdict(capped) == (True, ["sw_power_cap"])
    slow = {**calm, "sm_clock_mhz": 1200}
    throttled, why = throttle_verdict(slow)
    assert throttled and why == ["sm_clock 1200 MHz < 75% of max 1980 MHz"]


def test_progress_reports_position_elapsed_and_remaining():
    stream = io.StringIO()
    progress = Progress(stream)
    progress.start(3)
    case = Case(1, 2, 17, 16, "float32", True, "fwd", "cpu")
    row = {"impl": "naive", **case.__dict__, "status": "ok", "time_ms": 1.25}
    progress.row_started("naive", case)
    progress.row_done(row)
    progress.row_done({**row, "status": "oom"})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "attnbench: 3 measurements to run"
    assert lines[1].startswith("[1/3] 0:00:00 elapsed, ~0:00:00 left  naive")
    assert "B1-H2-N17-D16-fp32-causal-fwd  1.250 ms" in lines[1]
    assert lines[2].startswith("[2/3]") and lines[2].endswith("OOM")


def test_progress_lines_up_cases_after_the_longest_implementation_label():
    stream = io.StringIO()
    progress = Progress(stream)
    progress.start(2, ["naive", "sparse-window:window=32"])
    case = Case(1, 2, 17, 16, "float32", True, "fwd", "cpu")
    for impl in ("naive", "sparse-window:window=32"):
        progress.row_done({"impl": impl, **case.__dict__, "status": "ok", "time_ms": 1.25})
    first, second = stream.getvalue().splitlines()[1:]
    assert first.index("B1-H2-N17") == second.index("B1-H2-N17")


def test_progress_takes_the_time_left_from_earlier_rows_scaled_by_this_runs_pace():
    """Rows of one run differ by orders of magnitude (a compilation, a 64K case), so the mean so far misjudges
    what is left; earlier rows of the same cases, scaled by how this run compares with them so far, do not."""
    cases = [Case(1, 2, n, 16, "float32", False, "fwd", "cpu") for n in (17, 33, 65)]
    rows = [{"impl": "naive", **case.__dict__, "status": "ok", "time_ms": 1.0} for case in cases]
    keys = [key_of_row(row) for row in rows]
    stream = io.StringIO()
    progress = Progress(stream, earlier={keys[0]: 10.0, keys[1]: 100.0, keys[2]: 300.0})
    progress.start(3, ["naive"], keys)
    progress.row_done({**rows[0], "row_s": 20.0})  # twice as slow as before: 2 × (100 + 300) s left
    progress.row_done({**rows[1], "row_s": 200.0})
    first, second, third = stream.getvalue().splitlines()
    assert (
        first == "attnbench: 3 measurements to run; time left from what these rows took in earlier runs on this "
        "machine model"
    )
    assert "~0:13:20 left" in second and "~0:10:00 left" in third

    unknown = Progress(io.StringIO(), earlier={keys[0]: 10.0})
    unknown.start(3, ["naive"], keys)
    unknown.row_done({**rows[0], "row_s": 20.0})  # the other rows have no earlier time: the mean so far
    assert "time left from" not in unknown.stream.getvalue() and "~0:00:00 left" in unknown.stream.getvalue()
