"""The flags of the commands that measure in a worker process (run, check, local-errors), and the limits they set."""

from __future__ import annotations

import argparse
from typing import Any


def add_to(parser: argparse.ArgumentParser, timeout_flag: str, one: str, then: str) -> None:
    """`one`: what the timeout applies to (a row, a case); `then`: what becomes of it past a limit."""
    parser.add_argument(
        timeout_flag,
        dest="worker_timeout",
        help=f"seconds {one} may take, compilation and autotuning included, before its worker process is stopped "
        f"and {then} (default 600)",
    )
    parser.add_argument(
        "--host-memory-limit",
        dest="host_memory_limit",
        help=f"SIZE (e.g. 16GiB): host memory the worker may hold before it is stopped and {then} (default: 90%% "
        "of the memory available at the start)",
    )
    parser.add_argument(
        "--in-process",
        dest="in_process",
        action="store_true",
        help="measure in this process, without a worker (for a debugger or a profiler): no limits, and a hang or "
        "a crash ends the command",
    )


def limits(args: argparse.Namespace, timeout_flag: str) -> Any:
    """supervisor.Limits from the flags, or None with --in-process (where a limit given is refused)."""
    from ..measure.host_memory import default_limit
    from ..run import config
    from ..run.supervisor import DEFAULT_ROW_TIMEOUT_S, Limits

    timeout, memory = args.worker_timeout, args.host_memory_limit
    if args.in_process:
        for flag, value in ((timeout_flag, timeout), ("--host-memory-limit", memory)):
            if value is not None:
                raise config.UsageError(f"{flag}: {value!r} needs a worker process; --in-process measures without one")
        return None
    seconds = config.positive_float(timeout_flag, timeout) if timeout is not None else DEFAULT_ROW_TIMEOUT_S
    memory = int(config.byte_size("--host-memory-limit", memory)) if memory is not None else default_limit()
    return Limits(seconds, memory, timeout_flag=timeout_flag)
