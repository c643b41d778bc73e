"""Starting a run onto a results file: its output path, what a resumed file allows, the measured ceilings and
settings, and the writer whose header records them."""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

import implementations

from ..case import Case, key_of_row
from ..measure import cpu_contention, energy
from ..measure.peak import measured_copy_gbytes_per_s, measured_matmul_tflops
from ..measure.settings import RunSettings, TimingPolicy, describe
from ..results import naming, speed_settings
from ..results.environment import collect, machine_name
from ..results.files import ResultsWriter, finished_keys, recorded_machine, timed_by_runs
from ..results.lock import ResultsLocked, WriterLock
from ..results.schema import RETRYABLE
from .config import UsageError
from .in_flight import InFlight


def retry_statuses(value: str | None, resume: bool) -> set[str]:
    if value is None:
        return set()
    if not resume:
        raise UsageError("--retry: only with --resume (it re-runs cases of an existing results file)")
    statuses = [item.strip() for item in value.split(",")]
    for status in statuses:
        if status not in RETRYABLE:
            raise UsageError(f"--retry: unknown status {status!r} (allowed: {', '.join(RETRYABLE)})")
    return set(statuses)


def default_out_path(device: str, preset_name: str, resume: bool) -> Path:
    """results/DATE_MACHINE_PRESET.jsonl, named by the model that times it (the GPU, or the CPU for CPU runs),
    so two machines' files never share a name."""
    machine = naming.slug(machine_name(device)) or device
    stem = f"{_dt.date.today().isoformat()}_{machine}_{naming.slug(preset_name)}"
    path = naming.RESULTS_DIR / f"{stem}.jsonl"
    counter = 2
    while path.exists() and not resume:
        path = naming.RESULTS_DIR / f"{stem}-{counter}.jsonl"
        counter += 1
    return path


@contextlib.contextmanager
def one_writer(results: Path, flag: str) -> Iterator[bool]:
    """The body runs holding the lock on `results` (results/lock.py), before it writes anything; yields whether the
    lock is held (False where locks are not available). Another process holding it is refused with one line naming
    the file and that process, as is a lock file that cannot be written (a full disk)."""
    lock = WriterLock(results)
    try:
        held = lock.acquire()
    except ResultsLocked as locked:
        raise UsageError(f"{flag}: {locked}; two processes appending to one file would interleave their rows") from None
    except OSError as error:
        raise UsageError(f"{flag}: cannot write {str(lock.path)!r}: {error.strerror or error}") from None
    try:
        yield held
    finally:
        lock.release()


def refuse_another_machine(out: Path, runs: list[dict], device: str) -> None:
    """One file's timings are read as one comparison: a resumed run must measure on the same model."""
    here = machine_name(device)
    others = sorted({machine for machine in map(recorded_machine, timed_by_runs(runs)) if machine and machine != here})
    if others:
        raise UsageError(
            f"--resume: {str(out)!r} holds timings measured on {', '.join(others)}, and this run would "
            f"measure on {here} (resume it there, or write these rows to another file with --out)"
        )


def refuse_another_seed(out: Path, runs: list[dict], seed: int) -> None:
    """A file's rows of one case were measured on the same inputs, which the seed makes: resuming with another
    would check and time its new rows on other inputs (files written before the seed was recorded pass)."""
    seeds = sorted({run["seed"] for run in runs if not run.get("amends") and run.get("seed") is not None} - {seed})
    if seeds:
        raise UsageError(
            f"--seed: {str(out)!r} was measured with seed {', '.join(map(str, seeds))}, and this run would "
            f"use {seed} (resume with --seed {seeds[0]}, or write these rows to another file with --out)"
        )


def note_another_timing(out: Path, runs: list[dict], policy: TimingPolicy) -> None:
    """Rows timed with another policy are still measurements of the same calls, so a resume may change it; it is
    said, and each run's header records its own."""
    others = sorted(
        {describe(run["timing_policy"]) for run in runs if run.get("timing_policy")} - {describe(vars(policy))}
    )
    if others:
        print(
            f"note: {out} holds rows timed with {'; '.join(others)}; these will be timed with {describe(vars(policy))}",
            file=sys.stderr,
        )


def measured_settings(cases: list[Case], device: str, seed: int, policy: TimingPolicy | None = None) -> RunSettings:
    """The run's settings (`policy`: how each case is timed, the device's default if None), with this GPU's matmul
    peak for each dtype of `cases` and its copy bandwidth (the ceilings TFLOP/s and GB/s are read against). On a GPU,
    first a warning for each setting of this process under which its timings would not be a program's (the results
    record them too); on a CPU, how busy the machine is (cpu_load), with a warning where other processes would share
    its cores with torch's threads."""
    settings = RunSettings(seed=seed)
    if policy is not None:
        settings.policies[device] = policy
    if device == "cpu":
        settings.cpu_load = cpu_contention.before_run(torch.get_num_threads())
        warning = cpu_contention.busy_warning(settings.cpu_load)
        if warning:
            print(f"attnbench: warning: {warning}", file=sys.stderr, flush=True)
    if device == "cuda":
        for warning in speed_settings.warnings_for(speed_settings.current()):
            print(f"attnbench: warning: {warning}", file=sys.stderr, flush=True)
        torch_device = torch.device(device)
        for dtype in sorted({case.dtype for case in cases}):
            print(f"measuring this GPU's {dtype} matmul peak...", file=sys.stderr, flush=True)
            settings.peak_tflops[dtype] = measured_matmul_tflops(implementations.DTYPES[dtype], torch_device)
        print("measuring this GPU's copy bandwidth...", file=sys.stderr, flush=True)
        settings.peak_gbytes_per_s = measured_copy_gbytes_per_s(torch_device)
    return settings


def results_writer(out: Path, grid, settings: RunSettings, device: str, **how) -> ResultsWriter:
    """A writer whose run header records the environment, the grid asked for (so `compare` tells a case left
    out from a case lost), the measured ceilings and the timing policy; `how`: preset, config, argv, threads (those
    asked for, None for torch's default; the environment's cpu_threads says how many torch used), planned_rows (the
    rows the run will write, so that readers tell a run cut short: completeness.py)."""
    run_info = {
        **how,
        "grid": _grid_record(grid),
        "seed": settings.seed,
        "measured_peak_tflops": settings.peak_tflops,
        "measured_peak_gbytes_per_s": settings.peak_gbytes_per_s,
        "timing_policy": vars(settings.policies[device]),
        "cuda_graph": settings.cuda_graph,
        "energy": settings.energy,
        "cpu_load": settings.cpu_load,
    }
    return ResultsWriter(out, collect(torch.device(device)), run_info)


def _grid_record(grid) -> dict:
    return {key: value for key, value in vars(grid).items() if key != "description"}


def row_a_process_died_in(in_flight: InFlight, rows: list[dict]) -> dict | None:
    """The error row for the row a previous run on the file died in, unless that row (among the file's `rows`) was
    written after all."""
    died = in_flight.died_in()
    if died is None or key_of_row(died) in finished_keys(rows):
        return None
    return died


def row_name(row: dict) -> str:
    return f"{row['impl']} on {Case.from_row(row).label}"


def extra_measurements(rows: int, graph_replays: bool, energy_per_call: bool, policy: TimingPolicy) -> str | None:
    """What --cuda-graph and --energy add to the rows a dry run counts, which `took before` leaves out."""
    parts = []
    if energy_per_call:
        parts.append(
            f"--energy: about {energy.WINDOW_S:g} s more per row ({rows * energy.WINDOW_S / 60:.1f} min for {rows})"
        )
    if graph_replays:
        parts.append(f"--cuda-graph: each forward row's capture and up to {policy.budget_s:g} s of replays more")
    return ("not in `took before`: " + "; ".join(parts)) if parts else None
