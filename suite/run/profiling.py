"""Where one case's time goes: torch.profiler over the very call the runner times.

The first call (compilation, autotuning, lazy setup) and a few warm-up calls run before the profiler
starts, so the table shows steady-state kernels only; times in it are totals over `calls` calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from implementations import Implementation

from ..case import Case
from ..check.workload import Workload, make_inputs
from ..measure.quiet_profiler import start_quietly, stop_quietly
from ..measure.timing import synchronize, time_once_wall, warm_up

WARMUP_CALLS = 2


@dataclass
class CaseProfile:
    impl: str
    case: Case
    calls: int
    first_call_ms: float
    table: str  # torch.profiler's key_averages table, heaviest operators first
    trace: Path | None

    def format(self) -> str:
        clock = "GPU (self device time)" if self.case.device == "cuda" else "CPU (self time)"
        lines = [
            f"profile of {self.impl} on {self.case.label}: {self.calls} timed calls after warm-up, sorted by {clock}",
            f"first call {self.first_call_ms:.1f} ms (one-time costs: compilation, autotuning, lazy setup; "
            "not in the table)",
            "times below are totals over all calls; divide by the number of calls for one call",
            self.table,
        ]
        if self.trace:
            lines.append(f"trace (open in chrome://tracing or https://ui.perfetto.dev): {self.trace}")
        return "\n".join(lines)


def profile_case(
    impl: Implementation, case: Case, *, calls: int = 3, rows: int = 20, seed: int = 0, trace: Path | None = None
) -> CaseProfile:
    """Profile `calls` timed calls of `impl` on `case` (raises Unsupported or the call's own error)."""
    device = torch.device(case.device)
    work = Workload(impl, case, make_inputs(case, seed))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(work.release)
        cleanup.enter_context(impl.session())  # set once, as `attnbench run` does: not a cost of each call
        first_call_ms = time_once_wall(work.checked_call, device)
        fn, before_each = work.timed_call()
        warm_up(fn, device, WARMUP_CALLS, before_each)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities, record_shapes=True)
        start_quietly(profiler)
        try:
            for _ in range(calls):
                if before_each:
                    before_each()
                with record_function(f"attnbench: {impl.label} {case.mode}"):
                    fn()
            synchronize(device)
        finally:
            stop_quietly(profiler)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=rows)
    if trace:
        trace.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(trace))
    return CaseProfile(impl.label, case, calls, first_call_ms, table, trace)
