"""`attnbench check`: correctness only, forward and gradients against the float64 exact twin."""
from __future__ import annotations

import argparse


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("check", help="correctness only: forward and gradients against the float64 "
                                               "exact twin at awkward sizes and many seeds (exit 1 on a failure)")
    parser.add_argument("--impl", required=True, help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", help="(default: float32,bfloat16 on cpu; float16,bfloat16,float32 on cuda)")
    parser.add_argument("--seed", type=int, default=0, help="added to every input seed, for other inputs (default 0)")
    parser.add_argument("--seq-len", help="lengths of your own to check too, N[,N...] (each with grouped-query heads)")
    parser.add_argument("--head-dim", help="head dims of your own to check too, D[,D...] (at 17, 257 and 33 tokens)")
    parser.add_argument("--q-len", help="query lengths of your own to check too, Q[,Q...]: the last Q positions "
                                        "against each --seq-len of keys (257 without one), as in decoding")
    parser.add_argument("--json", help="also write every case's result to this file (for CI dashboards)")
    parser.add_argument("--verbose", action="store_true",
                        help="name each case before it runs (to find the one a crash that ends the process was in)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..check_command import cmd_check

    return cmd_check(args)
