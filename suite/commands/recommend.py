"""`attnbench recommend`: rank implementations for one shape from measured results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .shape import one_shape


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("recommend", help="rank implementations for a shape from measured results")
    parser.add_argument(
        "--seq-len",
        dest="seq_len",
        required=True,
        help="sequence length; between two measured ones, interpolated (log-log)",
    )
    parser.add_argument(
        "--heads",
        required=True,
        help="query heads; another measured head count is scaled to it where this one was not measured",
    )
    parser.add_argument("--head-dim", dest="head_dim", required=True, help="head dimension, as measured")
    parser.add_argument("--kv-heads", dest="kv_heads", help="key/value heads (default: = heads)")
    parser.add_argument(
        "--q-len",
        dest="q_len",
        help="queries against --seq-len keys, as measured with run --q-len (default: = seq-len)",
    )
    parser.add_argument(
        "--docs", default="fixed", help="documents packed per sequence, as measured with run --docs (default: fixed)"
    )
    parser.add_argument("--batch", default="1", help="batch to scale time and memory to (default 1)")
    parser.add_argument("--dtype", default="bfloat16", help="float16, bfloat16 or float32 (default bfloat16)")
    parser.add_argument("--causal", nargs="?", const="true", default="false", help="true (bare flag) or false")
    parser.add_argument("--mode", default="fwd", help="fwd, bwd or fwd+bwd")
    parser.add_argument("--max-error", dest="max_error", help="largest relative RMS error to accept")
    parser.add_argument("--memory-budget", dest="memory_budget", help="bytes, or with a unit: 512MiB, 8GiB, 40GB")
    parser.add_argument(
        "--results", nargs="+", help="results files (default: the newest in results/ timed on this GPU or CPU model)"
    )
    parser.add_argument(
        "--format",
        default="text",
        choices=("text", "json"),
        help="json: the ranking and exclusions for a program that picks a kernel",
    )
    parser.set_defaults(handler=handle)


def _newest_results(device: str) -> list[Path]:
    """The newest results file in results/ timed on this machine model (this GPU, or this CPU): another
    model's times would rank implementations by a machine the user is not on."""
    from ..results import naming
    from ..results.environment import machine_name
    from ..results.files import ResultsFormatError, read, recorded_machine
    from ..run.config import UsageError

    here = machine_name(device)
    elsewhere: dict[str, list[str]] = {}
    newest_first = sorted(
        naming.RESULTS_DIR.glob("*.jsonl"), key=lambda p: (p.name[:10], p.stat().st_mtime), reverse=True
    )
    for path in newest_first:
        try:
            runs, _ = read(path)
        except ResultsFormatError:
            continue
        machines = {recorded_machine(run.get("environment", {})) for run in runs if not run.get("amends")}
        if machines == {here}:
            return [path]
        for machine in sorted(m for m in machines if m):
            elsewhere.setdefault(machine, []).append(str(path))
    found = "".join(f"; {machine}: {', '.join(paths)}" for machine, paths in elsewhere.items())
    raise UsageError(
        f"--results: no results file timed on {here} in {naming.RESULTS_DIR}/ (run `attnbench run` "
        f"first, or name files with --results{found and ', e.g. those of another machine' + found})"
    )


def _chosen_results() -> list[Path]:
    """The newest results file of this machine model, named on stderr before the answer: which run a ranking
    comes from changes with every new file in results/."""
    from ..results import naming
    from ..results.environment import machine_name
    from ..run import config

    device = config.device_or_default(None)
    sources = _newest_results(device)
    print(
        f"recommend: reading {', '.join(map(str, sources))} (the newest results file in {naming.RESULTS_DIR}/ "
        f"timed on {machine_name(device)}; --results names others)",
        file=sys.stderr,
    )
    return sources


def handle(args: argparse.Namespace) -> int:
    from ..compare.recommend import Query, answer_record, format_answer, rank, unmeasured_shape
    from ..reporting.data import ReportInputError, prepare
    from ..results.files import ResultsFormatError, load
    from ..run import config
    from ..run.config import UsageError

    query = Query(
        **one_shape(args, "bfloat16"),
        docs=config.only_one("--docs", config.docs_specs("--docs", args.docs)),
        max_error=None if args.max_error is None else config.positive_float("--max-error", args.max_error),
        memory_budget=None if args.memory_budget is None else config.byte_size("--memory-budget", args.memory_budget),
    )
    sources = [Path(p) for p in args.results] if args.results else _chosen_results()
    missing = [p for p in sources if not p.is_file()]
    if missing:
        raise UsageError(f"--results: {str(missing[0])!r} is not a file")
    try:
        frame = prepare(load(sources))
    except (ResultsFormatError, ReportInputError) as error:
        raise UsageError(f"--results: {error}") from None
    unmeasured = unmeasured_shape(frame, query)
    if unmeasured:
        raise UsageError(f"recommend: {unmeasured}")
    candidates, excluded = rank(frame, query)
    answer = answer_record if args.format == "json" else format_answer
    print(answer(query, candidates, excluded, sources))
    return 0 if candidates else 1  # a script picking a kernel must not go on with none
