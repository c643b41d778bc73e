"""`attnbench run`: a grid of cases measured into a results file, resumable, with a time limit."""
from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path

import torch

import implementations

from . import config, cpu_contention, cuda_graph, energy, naming, speed_settings
from .case import Case, GridError
from .config import UsageError
from .environment import collect, machine_name, torch_threads
from .in_flight import InFlight
from .peak import measured_copy_gbytes_per_s, measured_matmul_tflops
from .plan import EarlierRows, format_plan, plan_run
from .presets import default_preset
from .progress import Progress
from .results import ResultsFormatError, ResultsWriter, finished_keys, key_of_row, read, recorded_machine, timed_by_runs
from .runner import DeviceLost, RunSettings, TimeLimitReached, row_key, run_cases
from .schema import RETRYABLE
from .summary import format_table
from .termination import exit_status, stop_word
from .timing_policy import TimingPolicy, describe


def _retry_statuses(value: str | None, resume: bool) -> set[str]:
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


def _refuse_another_machine(out: Path, runs: list[dict], device: str) -> None:
    """One file's timings are read as one comparison: a resumed run must measure on the same model."""
    here = machine_name(device)
    others = sorted({machine for machine in map(recorded_machine, timed_by_runs(runs)) if machine and machine != here})
    if others:
        raise UsageError(f"--resume: {str(out)!r} holds timings measured on {', '.join(others)}, and this run would "
                         f"measure on {here} (resume it there, or write these rows to another file with --out)")


def _refuse_another_seed(out: Path, runs: list[dict], seed: int) -> None:
    """A file's rows of one case were measured on the same inputs, which the seed makes: resuming with another
    would check and time its new rows on other inputs (files written before the seed was recorded pass)."""
    seeds = sorted({run["seed"] for run in runs if not run.get("amends") and run.get("seed") is not None} - {seed})
    if seeds:
        raise UsageError(f"--seed: {str(out)!r} was measured with seed {', '.join(map(str, seeds))}, and this run would "
                         f"use {seed} (resume with --seed {seeds[0]}, or write these rows to another file with --out)")


def _note_another_timing(out: Path, runs: list[dict], policy: TimingPolicy) -> None:
    """Rows timed with another policy are still measurements of the same calls, so a resume may change it; it is
    said, and each run's header records its own."""
    others = sorted({describe(run["timing_policy"]) for run in runs if run.get("timing_policy")} - {describe(vars(policy))})
    if others:
        print(f"note: {out} holds rows timed with {'; '.join(others)}; these will be timed with {describe(vars(policy))}",
              file=sys.stderr)


def cmd_run(args) -> int:
    """`attnbench run`, with torch's CPU threads set by --threads for all of it: they name the machine (machine_name)
    its results file and --resume's checks go by."""
    threads = None if args.threads is None else config.threads("--threads", args.threads)
    with torch_threads(threads):
        return _run(args, threads)


def _run(args, threads: int | None) -> int:
    started = time.monotonic()
    flags = {key: getattr(args, key) for key in ("impl", "seq_len", "q_len", "heads", "kv_heads", "batch", "head_dim",
                                                 "dtype", "causal", "mode")}
    from_config = config.read_config(args.config) if args.config else {}
    device = config.device_or_default(args.device or from_config.get("device"))
    named_preset = args.preset or from_config.get("preset")
    preset_name = named_preset or default_preset(device)
    base = config.preset("--preset" if args.preset else "--config preset", preset_name)
    merged = {**from_config, **{k: v for k, v in flags.items() if v is not None}}
    grid = config.build_grid(base, merged, preset_named=bool(named_preset))
    impls = [config.build_impl("--impl", spec) for spec in grid.impls]
    try:
        cases = grid.cases(device)
    except GridError as error:
        raise UsageError(f"{error.flag}: {error} (allowed: {error.allowed})") from None
    label = Path(args.config).stem if args.config else preset_name
    out = Path(args.out) if args.out else default_out_path(device, label, args.resume)
    config.writable("--out", out)  # first: a pipe or a device would block --resume's read, or fill memory
    if out.exists() and not args.resume:
        raise UsageError(f"--out: {str(out)!r} already exists (use --resume to continue it, or another path)")
    retry = _retry_statuses(args.retry, args.resume)
    policy = config.timing_policy("--timing", from_config.get("timing") if args.timing is None else args.timing, device)
    deadline = started + config.positive_float("--time-limit", args.time_limit) if args.time_limit else None
    for asked, flag, why in ((args.cuda_graph, "--cuda-graph", cuda_graph.WHY_GPU_ONLY),
                             (args.energy, "--energy", energy.WHY_GPU_ONLY)):
        if asked and config.gpu_only(flag, device, why):
            raise UsageError(config.gpu_only(flag, device, why))
    in_flight = InFlight(out)
    writing = in_flight.running_elsewhere()
    if writing is not None and not args.dry_run:
        raise UsageError(f"--out: {str(out)!r} is being written by a run still going on this machine (pid {writing}); "
                         "two runs appending to one file would interleave their rows")
    try:
        stored_runs, stored_rows = read(out) if out.exists() else ([], [])  # once: it may hold thousands of rows
    except ResultsFormatError as error:
        raise UsageError(f"--resume: {error}") from None
    skip = finished_keys(stored_rows, retry) if args.resume else set()
    if args.resume:
        _refuse_another_machine(out, stored_runs, device)
        _refuse_another_seed(out, stored_runs, args.seed)
        _note_another_timing(out, stored_runs, policy)
    died = _row_a_process_died_in(in_flight, stored_rows)
    if died and "error" not in retry:
        skip.add(key_of_row(died))
    earlier = EarlierRows.read([*naming.RESULTS_DIR.glob("*.jsonl"), out], machine_name(device))
    if args.dry_run:
        if died:
            print(f"the run that wrote {out} died while measuring {_row_name(died)}: this run will record that as "
                  "an error row", file=sys.stderr)
        plans = plan_run(impls, cases, skip, earlier)
        print(format_plan(plans, cases, device))
        extra = _extra_measurements(sum(plan.to_measure for plan in plans), args.cuda_graph, args.energy, policy)
        if extra:
            print(extra)
        return 0
    if not died and skip and all(row_key(impl.label, case) in skip for impl in impls for case in cases):
        print(f"nothing to run: every case is already in {out}")  # before measuring the GPU's peaks
        return 0

    settings = measured_settings(cases, device, args.seed, policy)
    settings.cuda_graph, settings.energy = args.cuda_graph, args.energy
    writer = results_writer(out, grid, settings, device, preset=preset_name, config=args.config, argv=sys.argv[1:],
                            threads=threads)
    if died:
        writer.append(died)
        print(f"the run that wrote {out} died while measuring {_row_name(died)}: recorded as an error row"
              + (" (--retry error: measured again below)" if "error" in retry else ""), file=sys.stderr)
    if skip:
        print(f"resuming {out}: {len(skip)} rows already there", file=sys.stderr)
    try:
        rows = run_cases(impls, cases, settings=settings, on_row=writer.append, skip=skip,
                         progress=Progress(earlier=earlier.seconds), deadline=deadline, on_start=in_flight.started)
    except TimeLimitReached as reached:
        writer.close()
        kept = f"every finished row is in {out}" if reached.done else "no row finished"
        print(f"\nstopped at --time-limit {args.time_limit} s: {reached}; {kept} (continue with --resume --out {out})",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (termination.Terminated)
        writer.close()
        print(f"\n{stop_word(interrupt)}: every finished row is in {out} (continue with --resume --out {out})",
              file=sys.stderr)
        return exit_status(interrupt)
    except DeviceLost as lost:
        writer.close()
        print(f"\nstopped: {lost}\nevery finished row is in {out}; the other cases can run in a new process with "
              f"--resume --out {out} (the failed row counts as done; --retry error runs it again)", file=sys.stderr)
        return 1
    finally:  # any end Python sees; only a process that died leaves the file naming its row
        in_flight.clear()
    writer.close()
    print(format_table(rows))
    print(f"results: {out}")
    return 0


def _extra_measurements(rows: int, graph_replays: bool, energy_per_call: bool, policy: TimingPolicy) -> str | None:
    """What --cuda-graph and --energy add to the rows a dry run counts, which `took before` leaves out."""
    parts = []
    if energy_per_call:
        parts.append(f"--energy: about {energy.WINDOW_S:g} s more per row ({rows * energy.WINDOW_S / 60:.1f} min for {rows})")
    if graph_replays:
        parts.append(f"--cuda-graph: each forward row's capture and up to {policy.budget_s:g} s of replays more")
    return ("not in `took before`: " + "; ".join(parts)) if parts else None


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
    asked for, None for torch's default; the environment's cpu_threads says how many torch used)."""
    run_info = {**how, "grid": _grid_record(grid), "seed": settings.seed, "measured_peak_tflops": settings.peak_tflops,
                "measured_peak_gbytes_per_s": settings.peak_gbytes_per_s, "timing_policy": vars(settings.policies[device]),
                "cuda_graph": settings.cuda_graph, "energy": settings.energy, "cpu_load": settings.cpu_load}
    return ResultsWriter(out, collect(torch.device(device)), run_info)


def _row_a_process_died_in(in_flight: InFlight, rows: list[dict]) -> dict | None:
    """The error row for the row a previous run on the file died in, unless that row (among the file's `rows`) was
    written after all."""
    died = in_flight.died_in()
    if died is None or key_of_row(died) in finished_keys(rows):
        return None
    return died


def _row_name(row: dict) -> str:
    return f"{row['impl']} on {Case.from_row(row).label}"


def _grid_record(grid) -> dict:
    return {key: value for key, value in vars(grid).items() if key != "description"}
