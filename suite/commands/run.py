"""`attnbench run`: a grid of cases, measured and checked, into a results file."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..measure.settings import ADJUSTABLE, TimingPolicy, describe
from ..results.schema import RETRYABLE
from ..run.presets import CONFIG_KEYS, GRID_AXES, PRESETS
from . import worker_flags


def _timing_help() -> str:
    defaults = {device: describe(vars(TimingPolicy.for_device(device))) for device in ("cuda", "cpu")}
    # argparse formats help with %, so the policy's own "±1%" must be escaped.
    return (
        "KEY=VALUE[,KEY=VALUE...]: how each case is timed, e.g. min_repeats=20,budget_s=3 (keys: "
        + ", ".join(ADJUSTABLE)
        + f"; defaults: on cuda {defaults['cuda']}, on cpu {defaults['cpu']})"
    ).replace("%", "%%")


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default: default on cuda, smoke on cpu)")
    source.add_argument("--config", help="a TOML grid file (keys: " + ", ".join(CONFIG_KEYS) + ")")
    parser.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    parser.add_argument("--seq-len", dest="seq_len", help="N[,N...]: keys (and queries, without --q-len)")
    parser.add_argument(
        "--q-len",
        dest="q_len",
        help="queries against each --seq-len of keys, Q[,Q...], as in decoding with a KV cache: the "
        "last Q positions, causal masks aligned to the last key (default: = seq_len)",
    )
    parser.add_argument("--heads", help="H[,H...]")
    parser.add_argument(
        "--kv-heads", dest="kv_heads", help="key/value heads for grouped-query attention, K[,K...] (default: = heads)"
    )
    parser.add_argument(
        "--batch",
        help="B[,B...] (default: 16384 tokens per batch, i.e. 16384 // seq_len, unless a "
        "preset sets the batch: one named, or the default preset over its own lengths)",
    )
    parser.add_argument("--head-dim", dest="head_dim", help="D[,D...]")
    parser.add_argument("--dtype", help="float16,bfloat16,float32")
    parser.add_argument("--causal", nargs="?", const="true", help="causal masking: true (bare flag), false or both")
    parser.add_argument(
        "--no-causal", dest="causal", action="store_const", const="false", help="the same as --causal false"
    )
    parser.add_argument("--mode", help="fwd,bwd,fwd+bwd")
    parser.add_argument(
        "--docs",
        help="SPEC[,SPEC...]: documents packed per sequence: fixed (one; default), "
        "uniform:MIN-MAX (lengths drawn from the seed, the last cut to fit) or lengths:A+B+... (summing to --seq-len)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", help="N: threads torch computes with on a CPU (default: torch's own choice)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="results file (default: results/<date>_<device>_<preset>.jsonl)")
    parser.add_argument("--resume", action="store_true", help="append to --out, skipping cases already in it")
    parser.add_argument(
        "--retry",
        help=f"with --resume: run again the cases whose row has one of these statuses "
        f"({', '.join(RETRYABLE)}); the new row replaces the old one",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    parser.add_argument("--timing", help=_timing_help())
    parser.add_argument(
        "--time-limit",
        dest="time_limit",
        help="seconds: start no new row after this long; the run stops cleanly, every finished row "
        "kept (exit 3; continue with --resume --out FILE)",
    )
    parser.add_argument(
        "--cuda-graph",
        dest="cuda_graph",
        action="store_true",
        help="also time each forward row replayed from a CUDA graph, without the host issuing its "
        "kernels (graph_time_ms; GPU only)",
    )
    parser.add_argument(
        "--energy",
        action="store_true",
        help="also measure each row's energy per call and mean power from the GPU's energy counter "
        "(NVML; about 2 s more per row; GPU only)",
    )
    worker_flags.add_to(parser, "--row-timeout", "one row", "the row recorded as timeout or oom; a new worker goes on")
    parser.add_argument(
        "--rank-timeout",
        dest="rank_timeout",
        help="under torchrun: seconds each rank waits for the others to start before it stops, measuring nothing "
        "(default 300)",
    )
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print what the run would measure, skip (--resume) or record as unsupported, and stop",
    )


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run a grid of cases and write a results file")
    _add_grid_arguments(parser)
    _add_run_arguments(parser)
    parser.set_defaults(handler=handle)


@dataclass
class _Request:
    """What the flags ask for, checked: the grid's cases on a device, into one results file."""

    device: str
    preset_name: str
    grid: Any
    impls: list
    cases: list
    out: Path
    retry: set[str]
    policy: Any
    deadline: float | None
    threads: int | None
    limits: Any  # supervisor.Limits; None: measured in this process (--in-process)
    pinned_device: str = ""  # the device as the run records it: cuda:LOCAL_RANK under torchrun


def handle(args: argparse.Namespace) -> int:
    """`attnbench run`, with torch's CPU threads set by --threads for all of it: they name the machine
    (machine_name) its results file and --resume's checks go by."""
    if not (args.in_process or args.dry_run):
        from ..run import worker_server

        worker_server.start_early()
    from ..results.environment import torch_threads
    from ..run import config

    threads = None if args.threads is None else config.threads("--threads", args.threads)
    with torch_threads(threads):
        return _run(args, threads)


def _run(args: argparse.Namespace, threads: int | None) -> int:
    from ..run import session, shard

    launch = shard.Launch.from_environment()
    request = _request(args, threads, started=time.monotonic())
    request.pinned_device = shard.pin_device(request.device)
    if launch is None and args.resume and shard.rank_files(request.out):
        launch = shard.Launch(0, 1, 0)  # a run under torchrun left its ranks' files unmerged: merged at the end
    if launch is not None:
        from .run_sharded import run_sharded

        return run_sharded(args, request, launch)
    # The lock is held from before anything is written to the end; --dry-run only reads, and takes none.
    writing = contextlib.nullcontext(False) if args.dry_run else session.one_writer(request.out, "--out")
    with writing as exclusive:
        return _run_alone(args, request, exclusive)


def _run_alone(args: argparse.Namespace, request: _Request, exclusive: bool) -> int:
    """The run, as the only process writing its file where `exclusive` (no other can start one meanwhile)."""
    from ..case import key_of_row, row_key
    from ..results import naming
    from ..results.environment import machine_name
    from ..run.in_flight import InFlight
    from ..run.plan import EarlierRows

    if request.out.exists() and not args.resume:  # checked under the lock: another run may just have made it
        raise _usage(f"--out: {str(request.out)!r} already exists (use --resume to continue it, or another path)")
    in_flight = InFlight(request.out, exclusive=exclusive)
    writing = in_flight.running_elsewhere()  # never under the lock; the guard where locks are not available
    if writing is not None and not args.dry_run:
        raise _usage(
            f"--out: {str(request.out)!r} is being written by another process on this machine (pid {writing}); "
            "two processes appending to one file would interleave their rows"
        )
    skip, died = _stored(args, request, in_flight)
    if died and "error" not in request.retry:
        skip.add(key_of_row(died))
    earlier = EarlierRows.read([*naming.RESULTS_DIR.glob("*.jsonl"), request.out], machine_name(request.device))
    if args.dry_run:
        return _dry_run(args, request, skip, died, earlier)
    if not died and skip and all(row_key(impl.label, case) in skip for impl in request.impls for case in request.cases):
        print(f"nothing to run: every case is already in {request.out}")  # before measuring the GPU's peaks
        return 0
    return _measure(args, request, skip, died, earlier, in_flight)


def _usage(message: str) -> Exception:
    from ..run.config import UsageError

    return UsageError(message)


def _request(args: argparse.Namespace, threads: int | None, started: float) -> _Request:
    from ..case import GridError
    from ..measure import cuda_graph, energy
    from ..run import config, session
    from ..run.presets import default_preset

    flags = {key: getattr(args, key) for key in GRID_AXES}
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
        raise _usage(f"{error.flag}: {error} (allowed: {error.allowed})") from None
    label = Path(args.config).stem if args.config else preset_name
    out = Path(args.out) if args.out else session.default_out_path(device, label, args.resume)
    config.writable("--out", out)  # first: a pipe or a device would block --resume's read, or fill memory
    retry = session.retry_statuses(args.retry, args.resume)
    policy = config.timing_policy("--timing", from_config.get("timing") if args.timing is None else args.timing, device)
    deadline = started + config.positive_float("--time-limit", args.time_limit) if args.time_limit else None
    for asked, flag, why in (
        (args.cuda_graph, "--cuda-graph", cuda_graph.WHY_GPU_ONLY),
        (args.energy, "--energy", energy.WHY_GPU_ONLY),
    ):
        if asked and config.gpu_only(flag, device, why):
            raise _usage(config.gpu_only(flag, device, why))
    limits = _limits(args, impls)
    return _Request(device, preset_name, grid, impls, cases, out, retry, policy, deadline, threads, limits)


def _limits(args: argparse.Namespace, impls: list):
    """The worker's limits, or None to measure in this process (--in-process, or implementations that cannot be
    sent to a worker, which is said)."""
    from ..run.supervisor import unsendable

    limits = worker_flags.limits(args, "--row-timeout")
    why_not = limits and unsendable(impls)
    if why_not:
        print(f"attnbench: warning: measuring in this process: {why_not}", file=sys.stderr)
        return None
    return limits


def _stored(args: argparse.Namespace, request: _Request, in_flight) -> tuple[set[tuple], dict | None]:
    """(keys of the rows --resume skips, the error row for a row a process died in), from the file read once: it
    may hold thousands of rows."""
    from ..results.files import ResultsFormatError, finished_keys, read
    from ..run import session

    out = request.out
    try:
        stored_runs, stored_rows = read(out) if out.exists() else ([], [])
    except ResultsFormatError as error:
        raise _usage(f"--resume: {error}") from None
    skip = finished_keys(stored_rows, request.retry) if args.resume else set()
    if args.resume:
        session.refuse_another_machine(out, stored_runs, request.device)
        session.refuse_another_seed(out, stored_runs, args.seed)
        session.note_another_timing(out, stored_runs, request.policy)
    return skip, session.row_a_process_died_in(in_flight, stored_rows)


def _dry_run(args: argparse.Namespace, request: _Request, skip: set[tuple], died: dict | None, earlier) -> int:
    from ..run import session
    from ..run.plan import format_plan, plan_run

    if died:
        print(
            f"the run that wrote {request.out} died while measuring {session.row_name(died)}: this run will "
            "record that as an error row",
            file=sys.stderr,
        )
    plans = plan_run(request.impls, request.cases, skip, earlier)
    print(format_plan(plans, request.cases, request.device))
    extra = session.extra_measurements(
        sum(plan.to_measure for plan in plans), args.cuda_graph, args.energy, request.policy
    )
    if extra:
        print(extra)
    return 0


def _planned_rows(request: _Request, skip: set[tuple], died: dict | None) -> int:
    """The rows this run will write: every implementation on every case, less those the file has (--resume), and
    the row a previous run died in, recorded as such."""
    from ..case import row_key

    measured = sum(row_key(impl.label, case) not in skip for impl in request.impls for case in request.cases)
    return measured + (died is not None)


def _results_writer(
    args: argparse.Namespace, request: _Request, cases: list, out: Path, planned_rows: int, **header
) -> tuple:
    """(the writer of `out`, whose run header records how its rows are measured; the settings they are measured
    with): `header` adds to the run header (a rank's `shard`)."""
    from ..run import session

    settings = session.measured_settings(cases, request.device, args.seed, request.policy)
    settings.cuda_graph, settings.energy = args.cuda_graph, args.energy
    writer = session.results_writer(
        out,
        request.grid,
        settings,
        request.device,
        preset=request.preset_name,
        config=args.config,
        argv=sys.argv[1:],
        threads=request.threads,
        worker=request.limits.record() if request.limits else None,
        planned_rows=planned_rows,
        **header,
    )
    return writer, settings


def _measure(
    args: argparse.Namespace, request: _Request, skip: set[tuple], died: dict | None, earlier, in_flight
) -> int:
    from ..results.files import CannotWrite
    from ..run.runner import DeviceLost, TimeLimitReached
    from ..run.summary import SummaryTable
    from ..run.supervisor import WorkerFailed

    _say_if_large(request, skip, earlier)
    writer, settings = _results_writer(args, request, request.cases, request.out, _planned_rows(request, skip, died))
    table = SummaryTable()

    def written_and_shown(row: dict) -> None:
        writer.append(row)
        table.add(row)

    try:
        _measure_rows(request, settings, skip, died, earlier, in_flight, written_and_shown)
    except (TimeLimitReached, KeyboardInterrupt, DeviceLost, CannotWrite, WorkerFailed) as stop:
        return _stopped(args, request.out, stop, wrote=writer.started)
    finally:  # any end Python sees; only a process that died leaves the file naming its row
        writer.close()
        in_flight.clear()
    print(table.render())
    print(f"results: {request.out}")
    return 0


def _say_if_large(request: _Request, skip: set[tuple], earlier) -> None:
    from ..case import row_key
    from ..run.plan import size_warning

    keys = (row_key(impl.label, case) for case in request.cases for impl in request.impls)
    warning = size_warning((key for key in keys if key not in skip), earlier.seconds)
    if warning:
        print(f"attnbench: warning: {warning}", file=sys.stderr, flush=True)


def _measure_rows(request: _Request, settings, skip: set[tuple], died: dict | None, earlier, in_flight, on_row) -> None:
    from ..run import session
    from ..run.progress import Progress
    from ..run.runner import run_cases
    from ..run.supervisor import run_supervised

    out = request.out
    if died:
        on_row(died)
        print(
            f"the run that wrote {out} died while measuring {session.row_name(died)}: recorded as an error row"
            + (" (--retry error: measured again below)" if "error" in request.retry else ""),
            file=sys.stderr,
        )
    if skip:
        print(f"resuming {out}: {len(skip)} rows already there", file=sys.stderr)
    how = dict(
        settings=settings,
        on_row=on_row,
        skip=skip,
        progress=Progress(earlier=earlier.seconds),
        deadline=request.deadline,
        on_start=in_flight.started,
    )
    if request.limits is None:
        run_cases(request.impls, request.cases, **how)
    else:
        run_supervised(request.impls, request.cases, limits=request.limits, threads=_threads(), **how)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _stopped(args: argparse.Namespace, out: Path, stop: BaseException, *, wrote: bool) -> int:
    """The exit status of a run that stopped before its last row, after one line saying why and what is kept."""
    from ..results.files import CannotWrite
    from ..run.runner import DeviceLost, TimeLimitReached
    from ..run.supervisor import WorkerFailed
    from ..run.termination import exit_status, stop_word

    again = f"--resume --out {out}"
    if isinstance(stop, TimeLimitReached):
        kept = f"every finished row is in {out}" if stop.done else "no row finished"
        print(f"\nstopped at --time-limit {args.time_limit} s: {stop}; {kept} (continue with {again})", file=sys.stderr)
        return 3
    if isinstance(stop, DeviceLost):
        print(
            f"\nstopped: {stop}\nevery finished row is in {out}; the other cases can run in a new process with "
            f"{again} (the failed row counts as done; --retry error runs it again)",
            file=sys.stderr,
        )
        return 1
    if isinstance(stop, WorkerFailed):
        print(f"\nstopped: {stop}\nevery finished row is in {out} (continue with {again})", file=sys.stderr)
        return 1
    if isinstance(stop, CannotWrite):
        if not wrote:  # nothing of this run is in the file: it could not start
            raise _usage(f"--out: {stop}")
        print(
            f"\nstopped: {stop}; every finished row is in {out} (continue with {again} once it can be written)",
            file=sys.stderr,
        )
        return 1
    # Ctrl-C, or SIGTERM (termination.Terminated)
    print(f"\n{stop_word(stop)}: every finished row is in {out} (continue with {again})", file=sys.stderr)
    return exit_status(stop)
