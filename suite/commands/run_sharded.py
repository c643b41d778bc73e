"""`attnbench run` as one rank of several under torchrun: its share of the grid into a rank file, then, on rank 0,
every rank's file merged into `--out` (suite/run/shard.py, suite/run/merge.py)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..results.files import CannotWrite
from ..run.config import UsageError
from ..run.shard import Launch, Plan

if TYPE_CHECKING:
    from ..measure.settings import RunSettings
    from ..results.files import ResultsWriter
    from ..results.lock import WriterLock
    from ..run.in_flight import InFlight
    from ..run.plan import EarlierRows
    from ..run.shard import ProcessGroup, WholeRunProgress
    from .run import _Request

STOPPED_PATIENCE_S = 20.0  # a stopped run waits this long for the other ranks' last rows: torchrun allows them 30 s


def run_sharded(args: argparse.Namespace, request: _Request, launch: Launch) -> int:
    from ..run import shard

    if args.dry_run:
        return _dry_run(args, request, launch) if launch.rank == 0 else 0
    try:
        return _run_rank(args, request, launch, shard.ProcessGroup(launch, _rank_timeout(args)))
    except shard.RanksUnreachable as error:
        print(f"attnbench: error: {error}", file=sys.stderr)
        return 1


def _run_rank(args: argparse.Namespace, request: _Request, launch: Launch, group: ProcessGroup) -> int:
    from ..run import session, shard

    with contextlib.ExitStack() as out_lock:  # rank 0 holds --out's lock to the end of the merge
        with contextlib.ExitStack() as own_lock:
            try:
                plan = _agreed_plan(args, request, launch, group, out_lock)
                if plan is not None and plan.nothing_to_do:
                    if launch.rank == 0:
                        print(f"nothing to run: every case is already in {request.out}")
                    return 0
                own = shard.rank_path(request.out, plan.group, launch.rank) if plan else None
                if plan is None or not _all_ready(
                    group, lambda: own_lock.enter_context(session.one_writer(own, "--out"))
                ):
                    return 2
            finally:
                group.close()
            stop, progress = _measure_share(args, request, launch, plan, own)
        if launch.rank == 0:
            return _merge_all(args, request, launch, plan, stop, progress)
    return _rank_status(launch, stop)


def _rank_status(launch: Launch, stop: BaseException | None) -> int:
    """The exit status of a rank other than 0: a signal's where one stopped it; otherwise 0, even where a lost
    device or a failed worker ended its share early, since torchrun stops every rank once one fails, and the others
    should finish theirs. Rank 0 reports the run, with the rows it misses."""
    from ..run.termination import exit_status

    if isinstance(stop, KeyboardInterrupt):
        return exit_status(stop)
    if stop is not None:
        print(f"attnbench: rank {launch.rank} stopped: {stop}", file=sys.stderr)
    return 0


def _rank_timeout(args: argparse.Namespace) -> float:
    from ..run import config
    from ..run.shard import DEFAULT_RANK_TIMEOUT_S

    return config.positive_float("--rank-timeout", args.rank_timeout) if args.rank_timeout else DEFAULT_RANK_TIMEOUT_S


def _agreed_plan(
    args: argparse.Namespace, request: _Request, launch: Launch, group: ProcessGroup, out_lock: contextlib.ExitStack
) -> Plan | None:
    """Rank 0's plan, which every rank receives; None on the other ranks where rank 0 found a usage error, which
    rank 0 raises (it alone says it)."""
    from ..run import session

    answer: Plan | str | None = None
    if launch.rank == 0:
        try:
            out_lock.enter_context(session.one_writer(request.out, "--out"))
            answer = _plan(args, request, launch)
        except UsageError as error:
            answer = str(error)
    answer = group.from_rank_0(answer)
    if isinstance(answer, str):
        if launch.rank == 0:
            raise UsageError(answer)
        return None
    request.out = answer.out  # every rank's file beside the same --out
    return answer


def _all_ready(group: ProcessGroup, ready: Callable[[], object]) -> bool:
    """Every rank holds the lock on its own file before any measures, so that rank 0 tells a rank that ended from
    one that has not started; False where another rank could not (it says why), raises where this one could not."""
    try:
        ready()
        problem = None
    except UsageError as error:
        problem = str(error)
    problems = group.everyone(problem)
    if problem:
        raise UsageError(problem)
    return not any(problems)


def _plan(args: argparse.Namespace, request: _Request, launch: Launch) -> Plan:
    """--resume's skips from --out and every rank file beside it; the shares, balanced by earlier row times."""
    from ..results import naming
    from ..results.environment import machine_name
    from ..run import shard
    from ..run.in_flight import InFlight
    from ..run.plan import EarlierRows
    from .run import _stored

    if request.out.exists() and not args.resume:
        raise UsageError(f"--out: {str(request.out)!r} already exists (use --resume to continue it, or another path)")
    held = not args.dry_run  # the lock on --out, by which any marker found is a dead process's
    skip, died = _stored(args, request, InFlight(request.out, exclusive=held))
    leftovers = shard.rank_files(request.out)
    if leftovers and not args.resume:
        names = ", ".join(path.name for path in leftovers[:3])
        raise UsageError(f"--out: rank files of an earlier run are beside it ({names}); continue it with --resume")
    skip |= _skipped_in_rank_files(leftovers, request.retry, held)
    if died and "error" not in request.retry:
        from ..case import key_of_row

        skip.add(key_of_row(died))
    files = [*naming.RESULTS_DIR.glob("*.jsonl"), request.out, *leftovers]
    earlier = EarlierRows.read(files, machine_name(request.device))
    plan = shard.make_plan(request.impls, request.cases, skip, earlier.seconds, launch.world_size, died)
    plan.leftovers, plan.out = len(leftovers), request.out
    return plan


def _skipped_in_rank_files(paths: list[Path], retry: set[str], held: bool) -> set[tuple]:
    """Rows finished in rank files a run left unmerged, and the rows their ranks died in (recorded at the merge)."""
    from ..case import key_of_row
    from ..results.files import ResultsFormatError, finished_keys, read
    from ..run.in_flight import InFlight

    skip: set[tuple] = set()
    for path in paths:
        try:
            skip |= finished_keys(read(path)[1], retry)
        except ResultsFormatError as error:
            raise UsageError(f"--resume: {error}") from None
        died = InFlight(path, exclusive=held).died_in()
        if died and "error" not in retry:
            skip.add(key_of_row(died))
    return skip


def _dry_run(args: argparse.Namespace, request: _Request, launch: Launch) -> int:
    from ..run import shard
    from .run import _dry_run as plain_dry_run

    plan = _plan(args, request, launch)
    status = plain_dry_run(args, request, plan.skip, plan.died, _earlier(request))
    print(shard.format_shares(plan, request.cases, launch.world_size))
    return status


def _earlier(request: _Request) -> EarlierRows:
    from ..results import naming
    from ..results.environment import machine_name
    from ..run.plan import EarlierRows

    return EarlierRows.read([*naming.RESULTS_DIR.glob("*.jsonl"), request.out], machine_name(request.device))


def _measure_share(args: argparse.Namespace, request: _Request, launch: Launch, plan: Plan, own: Path) -> tuple:
    """This rank's share into its own file; what stopped it before its last row (None if nothing did), and rank 0's
    progress display."""
    from ..run import shard
    from ..run.in_flight import InFlight
    from ..run.runner import DeviceLost, TimeLimitReached
    from ..run.supervisor import WorkerFailed

    cases = [request.cases[i] for i in plan.shares[launch.rank]]
    in_flight = InFlight(own, exclusive=True)
    writer, progress = None, _progress(request, launch, plan)
    try:
        writer, settings = _rank_writer(args, request, launch, plan, own, cases)
        writer.write_header()
        _measure_rows(request, launch, plan, cases, settings, writer, in_flight, progress)
    except (TimeLimitReached, KeyboardInterrupt, DeviceLost, CannotWrite, WorkerFailed) as stop:
        if isinstance(stop, CannotWrite) and (writer is None or not writer.started):
            raise UsageError(f"--out: rank {launch.rank}: {stop}") from None
        return stop, progress
    finally:
        if writer is not None:
            writer.close()
        in_flight.clear()
        with contextlib.suppress(OSError):
            shard.ended_path(own).touch()
    return None, progress


def _progress(request: _Request, launch: Launch, plan: Plan) -> WholeRunProgress | None:
    """Rank 0's display of the whole run; the other ranks show none."""
    from ..run import shard
    from ..run.progress import Progress

    if launch.rank != 0:
        return None
    others = [shard.rank_path(request.out, plan.group, rank) for rank in range(1, launch.world_size)]
    return shard.WholeRunProgress(Progress(earlier=_earlier(request).seconds), others, len(plan.todo), plan.todo)


def _rank_writer(
    args: argparse.Namespace, request: _Request, launch: Launch, plan: Plan, own: Path, cases: list
) -> tuple:
    import socket

    from .run import _results_writer

    return _results_writer(
        args,
        request,
        cases,
        own,
        plan.planned_rows[launch.rank],
        shard={
            "run": plan.group,
            "rank": launch.rank,
            "local_rank": launch.local_rank,
            "world_size": launch.world_size,
            "host": socket.gethostname(),
            "device": request.pinned_device,
            "planned_rows": plan.total_rows,
        },
    )


def _measure_rows(
    request: _Request,
    launch: Launch,
    plan: Plan,
    cases: list,
    settings: RunSettings,
    writer: ResultsWriter,
    in_flight: InFlight,
    progress: WholeRunProgress | None,
) -> None:
    from ..run import session
    from ..run.runner import run_cases
    from ..run.supervisor import run_supervised
    from .run import _threads

    if launch.rank == 0:
        if plan.died:
            writer.append(plan.died)
            print(
                f"the run that wrote {request.out} died while measuring {session.row_name(plan.died)}: recorded "
                "as an error row",
                file=sys.stderr,
            )
        if plan.skip:
            print(f"resuming {request.out}: {len(plan.skip)} rows already there", file=sys.stderr)
    how = dict(
        settings=settings,
        on_row=writer.append,
        skip=plan.skip,
        progress=progress,
        deadline=request.deadline,
        on_start=in_flight.started,
    )
    if request.limits is None:
        run_cases(request.impls, cases, **how)
    else:
        run_supervised(request.impls, cases, limits=request.limits, threads=_threads(), **how)


def _merge_all(
    args: argparse.Namespace,
    request: _Request,
    launch: Launch,
    plan: Plan,
    stop: BaseException | None,
    progress: WholeRunProgress | None,
) -> int:
    """Rank 0: waits for the other ranks (for as long as they measure; briefly once the run was stopped), merges
    every rank file beside --out into it, and says what the run did."""
    from ..run.completeness import shortfall
    from ..run.summary import format_table
    from .run import _stopped

    merged, running, stop = _wait_and_merge(request, launch, plan, stop, progress)
    for path in running:
        print(f"attnbench: {path} is still being written: --resume merges it", file=sys.stderr)
    for line in merged.left:
        print(f"attnbench: not merged: {line}", file=sys.stderr)
    if stop is not None:
        return _stopped(args, request.out, stop, wrote=True)
    print(format_table(merged.rows.get(plan.group, [])))
    print("results: " + ", ".join(map(str, dict.fromkeys(merged.written))))
    short = [f"{path}: {note}" for path in dict.fromkeys(merged.written) if (note := shortfall(path))]
    for line in short:  # a rank that died ended its rows early, and torchrun stopped the others
        print(f"attnbench: {line}", file=sys.stderr)
    return 1 if running or short or merged.left else 0


def _wait_and_merge(
    request: _Request, launch: Launch, plan: Plan, stop: BaseException | None, progress: WholeRunProgress | None
) -> tuple:
    """(what was merged, the rank files still being written when patience ran out, the stop if any). Ctrl-C or
    SIGTERM while waiting shortens the wait; during the merge they wait for its end, so that no file is left half
    merged."""
    from itertools import product

    from ..case import row_key
    from ..run import shard
    from ..run.in_flight import InFlight
    from ..run.merge import merge

    others = [shard.rank_path(request.out, plan.group, rank) for rank in range(1, launch.world_size)]
    try:
        # Only a signal ends the other ranks too (torchrun passes it on): after any other stop they go on.
        patience = STOPPED_PATIENCE_S if isinstance(stop, KeyboardInterrupt) else None
        locks = shard.wait_for_ranks(others, patience, progress.poll if progress else None, sys.stderr)
    except KeyboardInterrupt as interrupt:
        stop = stop or interrupt
        locks = shard.wait_for_ranks(others, STOPPED_PATIENCE_S)
    locks.append(_locked(shard.rank_path(request.out, plan.group, 0)))
    ended = {lock.results for lock in locks}
    running = [path for path in others if path not in ended]
    files = [path for path in shard.rank_files(request.out) if path not in running]
    order = {row_key(impl.label, case): i for i, (case, impl) in enumerate(product(request.cases, request.impls))}
    merged = None
    try:
        with _signals_held():
            merged = merge(request.out, files, order, plan.group)
            InFlight(request.out).clear()  # a single process's row it died in is merged, from rank 0's file
    except KeyboardInterrupt as interrupt:  # arrived during the merge, raised once it was done
        if merged is None:
            raise
        stop = stop or interrupt
    finally:
        for lock in locks:
            lock.release()
    return merged, running, stop


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back within the block and delivered at its end, where the platform can."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _locked(path: Path) -> WriterLock:
    from ..results.lock import WriterLock

    lock = WriterLock(path)
    lock.acquire()
    return lock
