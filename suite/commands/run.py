"""`attnbench run`: a grid of cases, measured and checked, into a results file."""
from __future__ import annotations

import argparse

from ..presets import CONFIG_KEYS, PRESETS
from ..schema import RETRYABLE
from ..timing_policy import ADJUSTABLE, TimingPolicy, describe


def _timing_help() -> str:
    defaults = {device: describe(vars(TimingPolicy.for_device(device))) for device in ("cuda", "cpu")}
    # argparse formats help with %, so the policy's own "±1%" must be escaped.
    return ("KEY=VALUE[,KEY=VALUE...]: how each case is timed, e.g. min_repeats=20,budget_s=3 (keys: "
            + ", ".join(ADJUSTABLE) + f"; defaults: on cuda {defaults['cuda']}, on cpu {defaults['cpu']})"
            ).replace("%", "%%")


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default: default on cuda, smoke on cpu)")
    source.add_argument("--config", help="a TOML grid file (keys: " + ", ".join(CONFIG_KEYS) + ")")
    parser.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    parser.add_argument("--seq-len", dest="seq_len", help="N[,N...]: keys (and queries, without --q-len)")
    parser.add_argument("--q-len", dest="q_len",
                        help="queries against each --seq-len of keys, Q[,Q...], as in decoding with a KV cache: the "
                             "last Q positions, causal masks aligned to the last key (default: = seq_len)")
    parser.add_argument("--heads", help="H[,H...]")
    parser.add_argument("--kv-heads", dest="kv_heads",
                        help="key/value heads for grouped-query attention, K[,K...] (default: = heads)")
    parser.add_argument("--batch", help="B[,B...] (default: 16384 tokens per batch, i.e. 16384 // seq_len, unless a "
                                        "preset sets the batch: one named, or the default preset over its own lengths)")
    parser.add_argument("--head-dim", dest="head_dim", help="D[,D...]")
    parser.add_argument("--dtype", help="float16,bfloat16,float32")
    parser.add_argument("--causal", nargs="?", const="true", help="causal masking: true (bare flag), false or both")
    parser.add_argument("--no-causal", dest="causal", action="store_const", const="false",
                        help="the same as --causal false")
    parser.add_argument("--mode", help="fwd,bwd,fwd+bwd")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", help="N: threads torch computes with on a CPU (default: torch's own choice)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="results file (default: results/<date>_<device>_<preset>.jsonl)")
    parser.add_argument("--resume", action="store_true", help="append to --out, skipping cases already in it")
    parser.add_argument("--retry", help=f"with --resume: run again the cases whose row has one of these statuses "
                                        f"({', '.join(RETRYABLE)}); the new row replaces the old one")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    parser.add_argument("--timing", help=_timing_help())
    parser.add_argument("--time-limit", dest="time_limit",
                        help="seconds: start no new row after this long; the run stops cleanly, every finished row "
                             "kept (exit 3; continue with --resume --out FILE)")
    parser.add_argument("--cuda-graph", dest="cuda_graph", action="store_true",
                        help="also time each forward row replayed from a CUDA graph, without the host issuing its "
                             "kernels (graph_time_ms; GPU only)")
    parser.add_argument("--energy", action="store_true",
                        help="also measure each row's energy per call and mean power from the GPU's energy counter "
                             "(NVML; about 2 s more per row; GPU only)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print what the run would measure, skip (--resume) or record as unsupported, and stop")


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run a grid of cases and write a results file")
    _add_grid_arguments(parser)
    _add_run_arguments(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..run_command import cmd_run

    return cmd_run(args)
