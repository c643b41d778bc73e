"""`attnbench local-errors`: add the local-inputs error to a results file's approximate rows."""
from __future__ import annotations

import argparse


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("local-errors", help="add the local-inputs error to a results file's approximate "
                                                      "rows that lack it (nothing is timed; the rows are appended "
                                                      "amended)")
    parser.add_argument("results", help="results file (JSON Lines), amended in place")
    parser.add_argument("--redo", action="store_true",
                        help="measure every approximate row again, not only those without it")
    parser.add_argument("--seed", type=int, default=0, help="seed for the local inputs (default 0)")
    parser.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...]: only these implementations' rows (a name "
                                       "covers all its options; default: every approximate row)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..local_errors_command import cmd_local_errors

    return cmd_local_errors(args)
