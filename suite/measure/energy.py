"""Energy per call from the GPU's own energy counter (NVML), with `run --energy` (GPU only).

After its timed repeats, a row's call runs back to back, as a program calls it, for at least WINDOW_S
seconds, between two reads of NVML's total-energy counter (the board's energy since the driver loaded,
in millijoules, Volta and later). The difference over the calls is the energy of one call, everything
the board drew while the program ran it included (its idle floor too: a host-bound call pays for the
GPU waiting); over the wall time it is the mean power. The counter is updated every 20–100 ms on recent
GPUs, so a window of two seconds keeps that step within a few percent; `energy_window_s` records the
window. Rows carry `energy_j` (per call), `energy_power_w`, `energy_calls`, `energy_window_s`, or
`energy_reason` where there is no counter to read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from .timing import synchronize

WINDOW_S = 2.0
MAX_CALLS = 1_000_000


WHY_GPU_ONLY = "NVML reads an NVIDIA GPU's energy counter"


def energy_figures(
    fn: Callable[[], object],
    before_each: Callable[[], object] | None,
    device: torch.device,
    read_mj: Callable[[], int | None],
    time_ms: float,
    why_no_counter: str | None,
) -> dict[str, Any]:
    """The row's energy columns: `fn` called back to back for about WINDOW_S seconds (its median is `time_ms`)
    between two reads of the counter (`read_mj`, None where it cannot be read, `why_no_counter` saying why)."""
    calls = max(1, min(MAX_CALLS, math.ceil(WINDOW_S * 1e3 / max(time_ms, 1e-6))))
    synchronize(device)
    start_mj, start = read_mj(), time.perf_counter()
    if start_mj is None:
        return {"energy_reason": why_no_counter or "NVML gives no total-energy counter for this GPU"}
    for _ in range(calls):
        if before_each:
            before_each()
        fn()
    synchronize(device)
    end_mj, seconds = read_mj(), time.perf_counter() - start
    if end_mj is None or end_mj <= start_mj:
        return {"energy_reason": f"the energy counter read {start_mj} mJ and then {end_mj} mJ over {seconds:.3g} s"}
    joules = (end_mj - start_mj) / 1e3
    return {
        "energy_j": joules / calls,
        "energy_power_w": joules / seconds,
        "energy_calls": calls,
        "energy_window_s": seconds,
    }
