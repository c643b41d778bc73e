"""`attnbench report`: markdown, charts and HTML from results files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="markdown, charts and HTML from results files")
    parser.add_argument("results", nargs="+", help="results files (JSON Lines)")
    parser.add_argument("--out", help="output folder (default: reports/<name of the first results file>)")
    parser.add_argument(
        "--baseline",
        help="implementation the speed-up chart divides by, one measured in the "
        "results (default: sdpa, where it was measured)",
    )
    parser.add_argument(
        "--impl",
        help="NAME[:KEY=VALUE...][,NAME...], shell wildcards allowed: only these "
        "implementations (a name covers all its options; default: every one)",
    )
    parser.add_argument(
        "--chart-formats",
        dest="chart_formats",
        default="png",
        help="comma-separated, of png, svg, pdf (default png): each chart in these formats; PNG is "
        "always written, as the pages show it (vector SVG or PDF for publishing)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..reporting import build_report
    from ..reporting.charts import CHART_FORMATS
    from ..reporting.data import ReportInputError
    from ..run import config
    from ..run.config import UsageError

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UsageError(f"report: {missing[0]!r} is not a file")
    formats = tuple(dict.fromkeys(config.comma_items("--chart-formats", args.chart_formats)))
    unknown = [fmt for fmt in formats if fmt not in CHART_FORMATS]
    if unknown:
        raise UsageError(f"--chart-formats: unknown format {unknown[0]!r} (allowed: {', '.join(CHART_FORMATS)})")
    out = config.writable("--out", args.out if args.out else Path("reports") / Path(args.results[0]).stem, folder=True)
    try:
        path = build_report(
            args.results,
            out,
            baseline=args.baseline,
            chart_formats=formats,
            say=lambda message: print(f"attnbench: {message}", file=sys.stderr, flush=True),
            impls=None if args.impl is None else config.comma_items("--impl", args.impl),
        )
    except ReportInputError as error:
        raise UsageError(f"report: {error}") from None
    print(f"report: {path}\nhtml: {path.parent / 'index.html'}")
    return 0
