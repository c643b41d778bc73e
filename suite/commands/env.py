"""`attnbench env`: the environment record a run writes into its header, as JSON."""

from __future__ import annotations

import argparse
import json


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("env", help="the environment record as JSON")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import torch

    from ..results.environment import collect

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(collect(device), indent=2))
    return 0
