"""`attnbench check`: correctness only, forward and gradients against the float64 exact twin."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import worker_flags

if TYPE_CHECKING:
    from ..case import Case


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "check",
        help="correctness only: forward and gradients against the float64 "
        "exact twin at awkward sizes and many seeds (exit 1 on a failure)",
    )
    parser.add_argument("--impl", required=True, help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", help="(default: float32,bfloat16 on cpu; float16,bfloat16,float32 on cuda)")
    parser.add_argument("--seed", type=int, default=0, help="added to every input seed, for other inputs (default 0)")
    parser.add_argument("--seq-len", help="lengths of your own to check too, N[,N...] (each with grouped-query heads)")
    parser.add_argument("--head-dim", help="head dims of your own to check too, D[,D...] (at 17, 257 and 33 tokens)")
    parser.add_argument(
        "--q-len",
        help="query lengths of your own to check too, Q[,Q...]: the last Q positions "
        "against each --seq-len of keys (257 without one), as in decoding",
    )
    parser.add_argument("--json", help="also write every case's result to this file (for CI dashboards)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="name each case before it runs (to find the one a crash that ends the process was in)",
    )
    worker_flags.add_to(
        parser, "--case-timeout", "one case", "the case recorded as an error; the next implementation goes on"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if not args.in_process:
        from ..run import worker_server

        worker_server.start_early()
    from ..check import conformance
    from ..check.poison import poisoning
    from ..run import config

    specs = config.impl_specs("--impl", args.impl)
    if args.json:
        config.writable("--json", args.json)  # before minutes of checking, not after
    device = config.device_or_default(args.device)
    dtypes = config.dtypes("--dtype", args.dtype or conformance.default_check_dtypes(device))
    lengths, head_dims, query_lengths = (
        config.positive_ints(flag, text) if text else ()
        for flag, text in (("--seq-len", args.seq_len), ("--head-dim", args.head_dim), ("--q-len", args.q_len))
    )
    try:
        own = conformance.own_shapes(lengths, head_dims, query_lengths)
    except ValueError as error:  # a query length longer than a length
        raise config.UsageError(f"--q-len: {error}") from None
    print(
        f"checking on {device} ({', '.join(dtypes)}): {len(conformance.AWKWARD_SHAPES)} awkward shapes and "
        f"{len(conformance.DECODING_SHAPES)} with fewer queries than keys, causal and not, with and without autograd, "
        f"then lengths {conformance.SHORT_LENGTHS} for "
        f"{len(conformance.SHORT_LENGTH_SEEDS)} seeds, each twice, then transposed (non-contiguous) inputs, then 257 "
        f"tokens and a 130-of-300 prefill at logits of spread {conformance.LARGE_LOGIT_STD:g} (finite results; "
        f"float32 also against the twin); memory poisoning: "
        f"{poisoning(device)}",
        flush=True,
    )
    if own:  # checked like the awkward shapes
        print(
            f"and shapes of your own: {', '.join(_shape_text(shape) for shape in own)} (KV: key/value heads shared "
            "by the query heads)",
            flush=True,
        )
    limits = worker_flags.limits(args, "--case-timeout")
    all_ok, summaries = True, []
    for number, spec in enumerate(specs):
        impl = config.build_impl("--impl", spec)
        starting = functools.partial(_announce_case, impl.label) if args.verbose else None
        summary, device_lost = _checked(impl, device, dtypes, args.seed, own, starting, limits)
        summaries.append(summary)
        print(summary.format(), flush=True)
        all_ok &= summary.ok
        if device_lost and limits is not None:  # the next implementation's worker is a new process
            print(f"  the device was unusable after the error on {summary.results[-1].case.label}", flush=True)
        elif device_lost:
            print(f"  stopped: the device was unusable after the error on {summary.results[-1].case.label}", flush=True)
            for rest in specs[number + 1 :]:
                print(f"{rest}: NOT CHECKED (the device was unusable after {impl.label}'s error)", flush=True)
            all_ok = False
            break
    if args.json:
        _write_json(
            Path(args.json),
            {
                "device": device,
                "dtypes": list(dtypes),
                "poisoning": poisoning(device),
                "ok": all_ok,
                "implementations": [s.as_record() for s in summaries],
            },
        )
        print(f"results: {args.json}")
    return 0 if all_ok else 1


def _checked(impl, device: str, dtypes: tuple[str, ...], seed: int, own: list, starting, limits):
    """conformance.checked, in a worker where `limits` are given and the implementation can be sent to one (a crash
    or a hang then ends its check, naming the case, and the next implementation's goes on)."""
    from ..check import conformance
    from ..run.supervisor import check_in_worker, unsendable
    from ..run.worker import CheckJob

    if limits is None or unsendable([impl]):
        return conformance.checked(impl, device, dtypes, seed, own, starting, moving=_say_it_is_moving)
    return check_in_worker(CheckJob(impl, device, dtypes, seed, own, starting, _say_it_is_moving), limits)


def _say_it_is_moving(label: str, done: int, seconds: float) -> None:
    print(f"  {label}: {done} cases done, {seconds:.0f} s", file=sys.stderr, flush=True)


def _announce_case(label: str, case: Case, seed: int) -> None:
    print(f"  {label}: {case.label} seed {seed} ...", file=sys.stderr, flush=True)


def _shape_text(shape: tuple) -> str:
    batch, heads, seq_len, head_dim, kv_heads, *q_len = shape
    queries = f"-Q{q_len[0]}" if q_len else ""
    return f"B{batch}-H{heads}{f'-KV{kv_heads}' if kv_heads else ''}-N{seq_len}{queries}-D{head_dim}"


def _write_json(path: Path, record: dict) -> None:
    """Whole or not at all: written beside, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)
