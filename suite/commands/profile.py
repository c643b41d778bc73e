"""`attnbench profile`: where one case's time goes, torch.profiler's heaviest operators."""

from __future__ import annotations

import argparse
from pathlib import Path

from .shape import one_shape, representative_case


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("profile", help="where one case's time goes: torch.profiler's heaviest operators")
    parser.add_argument("--impl", required=True, help="NAME[:KEY=VALUE...]; see `attnbench list`")
    parser.add_argument("--seq-len", dest="seq_len", required=True, help="sequence length")
    parser.add_argument("--heads", default="16", help="(default 16)")
    parser.add_argument("--kv-heads", dest="kv_heads", help="key/value heads (default: = heads)")
    parser.add_argument("--q-len", dest="q_len", help="queries against --seq-len keys (default: = seq-len)")
    parser.add_argument("--head-dim", dest="head_dim", default="64", help="(default 64)")
    parser.add_argument("--batch", default="1", help="(default 1)")
    parser.add_argument("--dtype", help="(default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--causal", nargs="?", const="true", default="false", help="true (bare flag) or false")
    parser.add_argument("--mode", default="fwd", help="fwd, bwd or fwd+bwd (default fwd)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--calls", default="3", help="profiled calls after warm-up (default 3)")
    parser.add_argument("--rows", default="20", help="operators to list (default 20)")
    parser.add_argument("--trace", help="also write a Chrome/Perfetto trace to this path")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import implementations

    from ..case import Case
    from ..run import config
    from ..run.config import UsageError
    from ..run.profiling import profile_case

    device = config.device_or_default(args.device)
    shape = one_shape(args, representative_case(device).dtype)
    specs = config.impl_specs("--impl", args.impl)
    if len(specs) != 1:
        raise UsageError(f"--impl: {args.impl!r} names {len(specs)} implementations (allowed: exactly one)")
    impl = config.build_impl("--impl", specs[0])
    case = Case(**shape, device=device)
    if args.trace:
        config.writable("--trace", args.trace)
    reasons = impl.supports(case)
    if reasons:
        raise UsageError(f"{impl.label} cannot run {case.label}: {'; '.join(reasons)}")
    count = lambda flag, text: config.only_one(flag, config.positive_ints(flag, text))  # noqa: E731
    try:
        result = profile_case(
            impl,
            case,
            calls=count("--calls", args.calls),
            rows=count("--rows", args.rows),
            seed=args.seed,
            trace=Path(args.trace) if args.trace else None,
        )
    except implementations.Unsupported as unsupported:
        raise UsageError(f"{impl.label} refused {case.label}: {unsupported}") from None
    print(result.format())
    return 0
