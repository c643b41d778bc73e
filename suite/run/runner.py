"""Runs implementations over cases; every (implementation, case) ends as exactly one result row.

Failures never lose the run: unsupported inputs, out-of-memory and any other exception each become
a row with its status and reason, and the next case runs; that includes a `BaseException` an implementation
raises (SystemExit, GeneratorExit, its own KeyboardInterrupt), but not Ctrl-C or SIGTERM sent to the run,
which stop it (measure/stop_signals.py tells them apart). One failure stops it: an error that leaves
the GPU unusable (a sticky CUDA error, such as a kernel's illegal memory access), after which every
later case would fail too and be blamed on its implementation. That row is written and `DeviceLost`
is raised; the rest can run in a new process (`run --resume`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch

from implementations import Implementation, Unsupported

from ..case import Case, row_key
from ..check.accuracy import judge
from ..check.checked_slices import CheckedSlices
from ..check.expected import ExpectedOutputs, LocalErrors, softmax_error, softmax_reference, twin_reference
from ..check.poison import poisoned_allocations
from ..check.workload import Inputs, Workload, make_inputs
from ..measure import failures, stop_signals
from ..measure.cpu_contention import row_verdict as cpu_row_verdict
from ..measure.cpu_contention import sample as cpu_sample
from ..measure.cuda_graph import graph_figures, unavailable_reason
from ..measure.energy import energy_figures
from ..measure.failures import free_after_failure, is_out_of_memory
from ..measure.flops import case_flops
from ..measure.gpu_monitor import GpuMonitor, throttle_verdict
from ..measure.memory import peak_call_memory
from ..measure.settings import RunSettings, TimingPolicy
from ..measure.timing import Measurement, measure, time_once_wall
from ..measure.traffic import minimum_bytes
from ..packing import with_doc_lens

SLOW_FIRST_CALL_MS = 100.0  # above this, one warm-up call is enough


class TimeLimitReached(RuntimeError):
    """`run --time-limit`: the deadline passed before a row could start; every finished row is written."""

    def __init__(self, done: int, total: int):
        super().__init__(f"the time limit passed after {done} of {total} rows")
        self.done, self.total = done, total


class DeviceLost(RuntimeError):
    """An implementation's failure left the device unusable in this process; `row` is its result row."""

    def __init__(self, row: dict[str, Any]):
        super().__init__(f"{row['impl']} on {Case.from_row(row).label} left the device unusable: {row['reason']}")
        self.row = row


def _base_row(impl: Implementation, case: Case) -> dict[str, Any]:
    density = impl.visible_pairs(case) / (case.query_len * case.seq_len)  # of the full Q×N score matrix
    return {
        "impl": impl.label,
        "family": impl.family,
        **asdict(case),
        "status": None,
        "reason": None,
        "density": density,
    }


def _throughput(impl: Implementation, case: Case, time_ms: float, settings: RunSettings) -> dict[str, Any]:
    tflops = case_flops(impl, case) / (time_ms * 1e-3) / 1e12
    gbytes_per_s = minimum_bytes(case, impl.carried_state_bytes(case)) / (time_ms * 1e-3) / 1e9
    peak, bandwidth = settings.peak_tflops.get(case.dtype), settings.peak_gbytes_per_s
    return {
        "tflops": tflops,
        "tokens_per_s": case.batch * case.query_len / (time_ms * 1e-3),  # queries: tokens decoded, with a KV cache
        "peak_fraction": tflops / peak if peak else None,
        "gbytes_per_s": gbytes_per_s,
        "bandwidth_fraction": gbytes_per_s / bandwidth if bandwidth else None,
    }


def measure_row(
    impl: Implementation,
    case: Case,
    inputs: Inputs,
    reference: ExpectedOutputs,
    settings: RunSettings,
    monitor: GpuMonitor,
    local_errors: LocalErrors | None = None,
) -> dict[str, Any]:
    """Check, time and measure one implementation on one case (raises on failure). The implementation's own
    set-up (a forced SDPA backend) is entered once around all of it, so none of the timed calls pays for it."""
    with impl.session():
        return _measure_in_session(impl, case, inputs, reference, settings, monitor, local_errors)


def _measure_in_session(
    impl: Implementation,
    case: Case,
    inputs: Inputs,
    reference: ExpectedOutputs,
    settings: RunSettings,
    monitor: GpuMonitor,
    local_errors: LocalErrors | None,
) -> dict[str, Any]:
    device = torch.device(case.device)
    row: dict[str, Any] = {}
    work = Workload(impl, case, inputs)
    try:
        outputs: dict[str, torch.Tensor] = {}
        # The first call carries one-time costs (compilation, autotuning, lazy setup): recorded apart.
        with poisoned_allocations(device):  # an output element it never writes must not pass
            row["first_call_ms"] = time_once_wall(lambda: outputs.update(work.checked_call()), device)
        approximate = impl.family != "exact"
        twin = twin_reference(impl, case, inputs, settings) if approximate else reference
        expected, not_checked = twin.expected()
        if approximate:
            row.update(softmax_error(outputs["out"], reference))
            row.update((local_errors or LocalErrors(settings)).of(impl, case))
        if expected is None:
            row.update(status="ok", reason=not_checked, accuracy_ok=None)
        else:
            verdict = judge(twin.slices.select(outputs), expected, case.dtype, case.seq_len, impl.atol_scale_for(case))
            row.update(
                status="ok" if verdict.ok else "mismatch",
                reason=verdict.reason(),
                accuracy_scope=twin.slices.describe(),
                max_abs_err=verdict.max_abs,
                rel_rms_err=verdict.worst[1].rel_rms,
                accuracy_ok=verdict.ok,
                accuracy_tolerance={"rtol": verdict.rtol, "atol": verdict.atol},
                errors={name: asdict(e) for name, e in verdict.errors.items()},
            )
        # The checked slices of the first call, kept on the host (no device memory during timing) to compare a
        # call after the timed ones with: the timed kernel must be the checked one (autotuning, plan caches).
        checked_first = (
            None
            if expected is None
            else {name: t.detach().to("cpu", copy=True) for name, t in twin.slices.select(outputs).items()}
        )
        outputs.clear()  # free them before timing
        del expected
        if approximate:
            twin.release()  # the softmax reference stays: the case's other implementations share it
        row["backend"] = work.backend()
        row["setup_ms"] = impl.setup_ms()
        fn, before_each = work.timed_call()
        policy = settings.policies[case.device]
        if row["first_call_ms"] > SLOW_FIRST_CALL_MS:
            policy = replace(policy, warmup_calls=min(policy.warmup_calls, 1))
        row["gpu_before"] = monitor.sample()
        cpu_before = cpu_sample() if device.type == "cpu" else None
        timing = measure(fn, device, policy, before_each)
        cpu_after = cpu_sample() if device.type == "cpu" else None
        row["gpu_after"] = monitor.sample()
        row.update(
            time_ms=timing.median,
            time_iqr_ms=timing.iqr,
            repeats=timing.repeats,
            times_ms=timing.times_ms,
            noisy=timing.relative_iqr > policy.noisy_relative_iqr,
            **host_figures(timing),
            **_throughput(impl, case, timing.median, settings),
        )
        row["throttled"], row["throttle_reasons"] = throttle_verdict(row["gpu_after"])
        row["cpu_contended"], row["cpu_contention"] = cpu_row_verdict(cpu_before, cpu_after, torch.get_num_threads())
        if settings.energy:
            row.update(energy_figures(fn, before_each, device, monitor.energy_mj, timing.median, monitor.unavailable))
        if before_each:
            before_each()
        row["peak_mem_bytes"], row["peak_mem_reason"] = peak_call_memory(fn, device)
        if settings.cuda_graph:
            row.update(_graph_figures(fn, case, policy, twin.slices, checked_first, impl))
        if checked_first is not None and row["status"] == "ok":
            row.update(_after_timing(work, twin.slices, checked_first, impl, case))
    finally:
        work.release()
    return row


def _seconds_since(start: float) -> float:
    """Wall seconds a row took, everything included (checks, reference, warm-up, timing, memory): what it costs a
    run, for `--dry-run`'s estimates and the report's run time, not a measurement of the implementation."""
    return round(time.monotonic() - start, 3)


HOST_BOUND_SHARE = 0.9


def host_figures(timing: Measurement) -> dict[str, Any]:
    """On CUDA: the median time the host took to issue a call, and whether it was host-bound: called back to
    back, as in a model, the host would set the pace, and a CUDA graph or a fused kernel would gain what a
    faster kernel would not. A call the GPU waits for is timed at its issuing plus its last kernel, so it
    counts from HOST_BOUND_SHARE of the GPU time. None on a CPU, where the host is the device."""
    host = timing.host_median
    return {"host_ms": host, "host_bound": None if host is None else host >= HOST_BOUND_SHARE * timing.median}


def _graph_figures(
    fn: Callable[[], object],
    case: Case,
    policy: TimingPolicy,
    slices: CheckedSlices,
    checked_first: dict[str, torch.Tensor] | None,
    impl: Implementation,
) -> dict[str, Any]:
    """The row's CUDA-graph columns (cuda_graph.py); raises if a failed capture left the GPU unusable, as any
    failure that does is raised, so that the run stops there."""
    why_not = unavailable_reason(case.device, case.mode)
    if why_not:
        return {"graph_reason": why_not}

    def disagreement(output: torch.Tensor) -> str | None:
        if checked_first is None:
            return None
        verdict = _against_checked_first({"out": output}, slices, checked_first, impl, case)
        return None if verdict.ok else verdict.reason()

    figures = graph_figures(fn, torch.device(case.device), policy, disagreement)
    if "graph_reason" in figures and not failures.device_usable(case.device):
        raise RuntimeError(f"the GPU is unusable after a CUDA graph capture: {figures['graph_reason']}")
    return figures


def _against_checked_first(
    outputs: dict[str, torch.Tensor],
    slices: CheckedSlices,
    checked_first: dict[str, torch.Tensor],
    impl: Implementation,
    case: Case,
):
    """A later call's outputs (their checked slices, copied to the host) judged against the checked first call's."""
    later = {name: t.detach().to("cpu") for name, t in slices.select(outputs).items()}
    return judge(later, checked_first, case.dtype, case.seq_len, impl.atol_scale_for(case))


def _after_timing(
    work: Workload, slices: CheckedSlices, checked_first: dict[str, torch.Tensor], impl: Implementation, case: Case
) -> dict[str, Any]:
    """One more call, untimed, against the checked first call: a kernel that autotunes or caches plans must
    compute after its timed calls what it computed when it was checked."""
    try:
        with poisoned_allocations(torch.device(case.device)):
            again = work.checked_call()
        verdict = _against_checked_first(again, slices, checked_first, impl, case)
    except torch.OutOfMemoryError:  # the timed calls fitted: keep their row, and say what was not done
        return {"reason": "the call after the timed ones ran out of memory: it was not compared with the checked one"}
    if verdict.ok:
        return {}
    return {
        "status": "mismatch",
        "accuracy_ok": False,
        "reason": f"a call after the timed ones disagrees with the checked first call beyond the tolerance (the "
        f"timed kernel is not the one that was checked): {verdict.reason()}",
    }


def run_one(
    impl: Implementation,
    case: Case,
    inputs: Inputs,
    reference: ExpectedOutputs,
    settings: RunSettings,
    monitor: GpuMonitor,
    local_errors: LocalErrors | None = None,
) -> dict[str, Any]:
    """One result row, whatever happens.

    An out-of-memory error is retried once after freeing the allocator's cache: memory left
    fragmented by earlier cases must not be reported as this implementation not fitting.
    """
    row = _base_row(impl, case)
    for _attempt in (1, 2):
        try:
            reasons = impl.supports(case)
            if reasons:
                return {**row, "status": "unsupported", "reason": "; ".join(reasons)}
            return {**row, **measure_row(impl, case, inputs, reference, settings, monitor, local_errors)}
        except Unsupported as error:
            return {**row, "status": "unsupported", "reason": str(error)}
        except BaseException as error:  # noqa: BLE001 - whatever the call raises is the row's, SystemExit too
            stop_signals.raise_if_stop(error)
            oom = is_out_of_memory(error)
            detail = (
                " ".join(str(error).split())
                if oom
                else traceback.format_exception_only(type(error), error)[-1].strip()
                + stop_signals.not_a_stop_note(error)
            )
            failure = ("oom" if oom else "error", detail[:2000])
        # Outside the except block, so the exception and the tensors its frames hold can be freed.
        free_after_failure(case.device)
        if failure[0] != "oom":
            break
    status, reason = failure
    if status == "oom":
        reason += " (still out of memory after freeing the allocator cache and retrying)"
    return {**row, "status": status, "reason": reason}


WROTE_INTO_INPUTS = (
    "it wrote into its inputs (q, k, v or the upstream gradient changed during its calls); the case's "
    "later implementations got fresh inputs"
)


def _rows_without_inputs(
    chosen: list[Implementation], case: Case, error: Exception, started: float
) -> list[dict[str, Any]]:
    """A row per implementation of a case whose inputs could not be made (an `oom` where they alone do not fit)."""
    status = "oom" if is_out_of_memory(error) else "error"
    rows = []
    for impl in chosen:
        rows.append(
            {
                **_base_row(impl, case),
                "status": status,
                "reason": f"creating inputs failed: {error}",
                "row_s": _seconds_since(started),
            }
        )
        started = time.monotonic()
    return rows


def run_cases(
    impls: list[Implementation],
    cases: list[Case],
    *,
    settings: RunSettings,
    on_row: Callable[[dict[str, Any]], None],
    skip: set[tuple] = frozenset(),
    progress=None,
    deadline: float | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Every implementation on every case (cases outer, so inputs and reference are made once), each row given to
    `on_row` and kept by no one here, so that a run's memory does not grow with its rows. No row starts
    after `deadline` (time.monotonic()): the run ends there with TimeLimitReached, each row whole. `on_start`
    is given each row's implementation and case before anything of it runs (the case's inputs count as its
    first implementation's). Ctrl-C and SIGTERM raise KeyboardInterrupt (stop_signals.Terminated) and write no row
    for the one they interrupt; whatever else an implementation raises is its row's (stop_signals)."""
    with stop_signals.stop_signals_recorded():
        return _run_cases(impls, cases, settings, on_row, skip, progress, deadline, on_start)


def _run_cases(
    impls: list[Implementation],
    cases: list[Case],
    settings: RunSettings,
    on_row: Callable[[dict[str, Any]], None],
    skip: set[tuple],
    progress,
    deadline: float | None,
    on_start: Callable[[dict[str, Any]], None] | None,
) -> None:
    cases = [with_doc_lens(case, settings.seed) for case in cases]  # every row of a case packs the same documents
    todo = [(case, [impl for impl in impls if row_key(impl.label, case) not in skip]) for case in cases]
    todo = [(case, chosen) for case, chosen in todo if chosen]
    total = sum(len(chosen) for _, chosen in todo)
    monitors: dict[str, GpuMonitor] = {}
    local_errors = LocalErrors(settings)
    done = 0
    if progress:
        progress.start(
            total,
            [impl.label for impl in impls],
            [row_key(impl.label, case) for case, chosen in todo for impl in chosen],
        )

    def check_deadline() -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeLimitReached(done, total)

    def record(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        on_row(row)
        if progress:
            progress.row_done(row)

    for case, chosen in todo:
        check_deadline()
        row_started = time.monotonic()  # a case's inputs and reference count as its first row's time
        monitor = monitors.setdefault(case.device, GpuMonitor(torch.device(case.device)))
        if on_start:
            on_start(_base_row(chosen[0], case))
        try:
            inputs = make_inputs(case, settings.seed)
        except Exception as error:  # noqa: BLE001 - e.g. the inputs alone do not fit
            for row in _rows_without_inputs(chosen, case, error, row_started):
                record(row)
            free_after_failure(case.device)
            continue
        if case.device == "cuda":
            torch.cuda.empty_cache()  # each case starts from an unfragmented allocator
        reference = softmax_reference(case, inputs, settings)
        untouched = inputs.fingerprint()
        for impl in chosen:
            check_deadline()
            if progress:
                progress.row_started(impl.label, case)
            if on_start:
                on_start(_base_row(impl, case))
            row = run_one(impl, case, inputs, reference, settings, monitor, local_errors)
            if (stop := stop_signals.stop_asked()) is not None:  # a kernel swallowed the interrupt: its row is moot
                raise stop
            if not inputs.unchanged_since(untouched):  # its results, and every later one's, would be on other inputs
                row = {**_base_row(impl, case), "status": "error", "reason": WROTE_INTO_INPUTS}
                reference.release()
                inputs = make_inputs(case, settings.seed)
                reference = softmax_reference(case, inputs, settings)  # it may have been computed from changed inputs
            lost = row["status"] == "error" and not failures.device_usable(case.device)
            if lost:
                row["reason"] += " [the device was unusable after this error: the rows after it ran in a new process]"
            row["row_s"] = _seconds_since(row_started)
            row_started = time.monotonic()
            record(row)
            if lost:
                raise DeviceLost(row)
        reference.release()
        local_errors.release()
        del inputs, reference
