"""`attnbench local-errors`: add the local-inputs error to a results file's approximate rows."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import worker_flags


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "local-errors",
        help="add the local-inputs error to a results file's approximate "
        "rows that lack it (nothing is timed; the rows are appended "
        "amended)",
    )
    parser.add_argument("results", help="results file (JSON Lines), amended in place")
    parser.add_argument(
        "--redo", action="store_true", help="measure every approximate row again, not only those without it"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the local inputs (default 0)")
    parser.add_argument(
        "--impl",
        help="NAME[:KEY=VALUE...][,NAME...]: only these implementations' rows (a name "
        "covers all its options; default: every approximate row)",
    )
    worker_flags.add_to(parser, "--row-timeout", "one row", "the row noted as not measured, saying why")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..run.config import UsageError
    from ..run.session import one_writer

    worker_flags.limits(args, "--row-timeout")  # its flags checked before the file is read
    path = Path(args.results)
    if not path.is_file():
        raise UsageError(f"local-errors: {str(path)!r} is not a file")
    with one_writer(path, "local-errors") as exclusive:  # read under the lock too: the rows are those amended
        return _amend_file(args, path, exclusive)


def _amend_file(args: argparse.Namespace, path: Path, exclusive: bool) -> int:
    import torch

    from ..results.files import ResultsFormatError, read
    from ..run import config
    from ..run.config import UsageError
    from ..run.local_amend import approximate_rows, rows_to_amend

    try:
        _, rows = read(path)
    except ResultsFormatError as error:
        raise UsageError(f"local-errors: {error}") from None
    impls = None
    if args.impl is not None:
        impls = config.comma_items("--impl", args.impl)
        present = sorted({row["impl"] for row in approximate_rows(rows)})
        typo = config.unmatched_pattern(impls, present)
        if typo is not None:
            raise UsageError(
                f"--impl: {typo!r} has no approximate row that ran in {path} (allowed: {', '.join(present) or 'none'})"
            )
    devices = {row.get("device") for row in rows_to_amend(rows, args.redo, impls)}
    if not devices:
        which = f" of {', '.join(impls)}" if impls else ""
        print(
            f"nothing to amend: every approximate row{which} of {path} that ran has its local-inputs error (or why not)"
        )
        return 0
    device = "cuda" if "cuda" in devices else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"local-errors: {path} has rows measured on cuda, and no CUDA device is available here")
    return _amend(args, path, rows, impls, torch.device(device), exclusive)


def _amend(args: argparse.Namespace, path: Path, rows: list, impls: list[str] | None, device, exclusive: bool) -> int:
    """The amending, as the only process writing `path` where `exclusive`."""
    from ..results.environment import collect
    from ..results.files import CannotWrite, ResultsWriter
    from ..run import config
    from ..run.config import UsageError
    from ..run.in_flight import InFlight
    from ..run.local_amend import amend_died_row, amend_local_errors
    from ..run.runner import DeviceLost

    run_info = {"amends": "local-inputs errors", "argv": sys.argv[1:], "seed": args.seed}
    in_flight = InFlight(path, ".amending", exclusive=exclusive)
    if (writing := in_flight.running_elsewhere()) is not None:  # never under the lock; the guard without locks
        raise UsageError(
            f"local-errors: {str(path)!r} is being written by another process on this machine (pid {writing})"
        )
    writer = ResultsWriter(path, collect(device), run_info)
    measure = _measure(args)
    try:
        rows = amend_died_row(rows, in_flight.died_in(), writer)
        done = amend_local_errors(
            rows,
            writer,
            measure,
            lambda label: config.build_impl("results file", label),
            redo=args.redo,
            impls=impls,
            on_start=in_flight.started,
        )
    except (KeyboardInterrupt, DeviceLost, CannotWrite) as stop:
        return _stopped(path, stop, wrote=writer.started)
    finally:  # any end Python sees; only a process that died leaves the file naming its row
        getattr(measure, "close", lambda: None)()
        in_flight.clear()
        writer.close()
    print(f"amended {done.amended} rows of {path}; {done.already_there} already had the figure (or why not)")
    for reason, count in done.cannot_run_here.items():
        print(f"  {count} rows cannot run here: {reason}")
    return 0


def _measure(args: argparse.Namespace):
    """LocalErrors.of, in a worker unless --in-process."""
    from ..check.expected import LocalErrors
    from ..measure.settings import RunSettings
    from ..run.supervisor import LocalErrorsInWorker

    limits = worker_flags.limits(args, "--row-timeout")
    settings = RunSettings(seed=args.seed)
    return LocalErrors(settings).of if limits is None else LocalErrorsInWorker(settings, limits)


def _stopped(path: Path, stop: BaseException, *, wrote: bool) -> int:
    """The exit status of amending that stopped before its last row, after one line saying why and what is kept."""
    from ..results.files import CannotWrite
    from ..run.config import UsageError
    from ..run.runner import DeviceLost
    from ..run.termination import exit_status, stop_word

    if isinstance(stop, CannotWrite):
        if not wrote:  # nothing of this amending is in the file: it could not start
            raise UsageError(f"local-errors: {stop}")
        print(
            f"\nstopped: {stop}; the rows amended so far are in {path}; run the command again, once it can be "
            "written, to amend the rest",
            file=sys.stderr,
        )
        return 1
    if isinstance(stop, DeviceLost):
        print(
            f"\nstopped: {stop}\nthe rows amended so far are in {path}; run the command again, in a new process, "
            "to amend the rest",
            file=sys.stderr,
        )
        return 1
    print(
        f"\n{stop_word(stop)}: the rows amended so far are in {path}; run the command again to amend the rest",
        file=sys.stderr,
    )
    return exit_status(stop)
