"""The `attnbench` command line: the parser assembled from `suite.commands`, and the exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS
from .measure.stop_signals import stop_signals_recorded
from .run.termination import exit_status, sigterm_raises, stop_word


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Benchmark and compare attention implementations.")
    parser.add_argument("--version", action="version", version=f"attnbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(commands)
    return parser


def _trace_native_crashes() -> None:
    """A segmentation fault or abort in a kernel prints the Python traceback it happened in (the
    implementation's module and line), where it would otherwise end the process without a word."""
    if not faulthandler.is_enabled():
        with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):  # stderr without a descriptor
            faulthandler.enable()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _trace_native_crashes()
    from .run.config import UsageError  # after parsing: it imports the registry, and with it torch

    try:
        with sigterm_raises(), stop_signals_recorded():  # SIGTERM raises; both it and Ctrl-C are noted
            return args.handler(args)
    except UsageError as error:
        print(f"attnbench: error: {error}", file=sys.stderr)
        return 2
    except (
        KeyboardInterrupt
    ) as interrupt:  # before a run started (e.g. while measuring the matmul peak): nothing written
        print(f"\nattnbench: {stop_word(interrupt)}", file=sys.stderr)
        return exit_status(interrupt)
    except BrokenPipeError:  # the reader went away (`attnbench check ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141
