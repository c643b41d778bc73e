"""`attnbench runs`: what results files hold."""
from __future__ import annotations

import argparse


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("runs", help="what results files hold: machine, dates, preset, software, rows "
                                              "by status, implementations")
    parser.add_argument("results", nargs="*", help="results files (default: every one in results/)")
    parser.add_argument("--format", default="text", choices=("text", "json"))
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..runs_command import cmd_runs

    return cmd_runs(args)
