"""`attnbench compare`: regressions between two runs, or between two implementations."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compare", help="regressions between two runs (exit 1 on a regression)")
    parser.add_argument("baseline", help="results file(s), comma-separated (attnbench JSONL or pytest-benchmark JSON)")
    parser.add_argument("current", help="results file(s), comma-separated")
    parser.add_argument("--threshold", default="5", help="smallest slowdown that counts, in percent (default 5)")
    parser.add_argument(
        "--memory-threshold",
        default="10",
        help="smallest growth of peak memory that counts, in percent (default 10), or 'off'",
    )
    parser.add_argument("--format", default="text", choices=("text", "md", "json"))
    parser.add_argument(
        "--chart", help="also draw every case's time ratio, coloured by verdict, into this file (.png, .svg or .pdf)"
    )
    parser.add_argument(
        "--baseline-impl",
        dest="baseline_impl",
        help="with --current-impl: compare two implementations instead of two runs, this one's "
        "rows in BASELINE against the other's in CURRENT (the same file may be both)",
    )
    parser.add_argument("--current-impl", dest="current_impl", help="see --baseline-impl")
    parser.add_argument(
        "--impl",
        help="NAME[:KEY=VALUE...][,NAME...], shell wildcards allowed: compare only these "
        "implementations' rows (default: every one)",
    )
    parser.set_defaults(handler=handle)


def _chart_path(text: str | None) -> Path | None:
    from ..reporting.charts import CHART_FORMATS
    from ..run import config
    from ..run.config import UsageError

    if not text:
        return None
    chart = config.writable("--chart", text)
    if chart.suffix.lstrip(".") not in CHART_FORMATS:
        raise UsageError(
            f"--chart: {text!r} does not end in a chart format "
            f"(allowed: {', '.join('.' + fmt for fmt in CHART_FORMATS)})"
        )
    return chart


def _compared_impls(args: argparse.Namespace) -> tuple[str, str] | None:
    from ..run.config import UsageError

    if (args.baseline_impl is None) != (args.current_impl is None):
        given, missing = (
            ("--baseline-impl", "--current-impl") if args.baseline_impl else ("--current-impl", "--baseline-impl")
        )
        raise UsageError(f"{given}: only with {missing} (allowed: both, to compare two implementations, or neither)")
    impls = (args.baseline_impl, args.current_impl) if args.baseline_impl else None
    if impls is not None and args.impl is not None:
        raise UsageError("--impl: not with --baseline-impl and --current-impl, which name the rows compared already")
    return impls


def handle(args: argparse.Namespace) -> int:
    from ..compare.regressions import CompareInputError, run
    from ..run import config
    from ..run.config import UsageError

    threshold = config.positive_float("--threshold", args.threshold) / 100
    memory_threshold = (
        None
        if args.memory_threshold == "off"
        else config.positive_float("--memory-threshold", args.memory_threshold) / 100
    )
    split = lambda text: [Path(p) for p in text.split(",") if p]  # noqa: E731
    chart = _chart_path(args.chart)
    impls = _compared_impls(args)
    patterns = None if args.impl is None else config.comma_items("--impl", args.impl)
    try:
        text, status = run(
            split(args.baseline), split(args.current), threshold, args.format, memory_threshold, chart, impls, patterns
        )
    except CompareInputError as error:
        raise UsageError(f"compare: {error}") from None
    print(text)
    return status
