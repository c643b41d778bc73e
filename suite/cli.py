"""The `attnbench` command line: its parser, and the smaller commands (list, env, report, recommend, compare,
profile); run, check and local-errors have modules of their own."""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

import implementations

from . import __version__, config, naming
from .case import Case
from .check_command import cmd_check
from .config import UsageError
from .environment import collect, machine_name
from .local_errors_command import cmd_local_errors
from .presets import PRESETS
from .results import ResultsFormatError, read, recorded_machine
from .run_command import RETRYABLE, cmd_run
from .runs_command import cmd_runs
from .termination import exit_status, sigterm_raises, stop_word
from .timing import ADJUSTABLE, TimingPolicy, describe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Benchmark and compare attention implementations.")
    parser.add_argument("--version", action="version", version=f"attnbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="implementations, their family and whether they can run here")
    listing.add_argument("--device", help="cpu or cuda (default: cuda when available)")

    commands.add_parser("env", help="the environment record as JSON")

    run = commands.add_parser("run", help="run a grid of cases and write a results file")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default: default on cuda, smoke on cpu)")
    source.add_argument("--config", help="a TOML grid file (keys: " + ", ".join(config.CONFIG_KEYS) + ")")
    run.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    run.add_argument("--seq-len", dest="seq_len", help="N[,N...]: keys (and queries, without --q-len)")
    run.add_argument("--q-len", dest="q_len",
                     help="queries against each --seq-len of keys, Q[,Q...], as in decoding with a KV cache: the last Q "
                          "positions, causal masks aligned to the last key (default: = seq_len)")
    run.add_argument("--heads", help="H[,H...]")
    run.add_argument("--kv-heads", dest="kv_heads",
                     help="key/value heads for grouped-query attention, K[,K...] (default: = heads)")
    run.add_argument("--batch", help="B[,B...] (default: 16384 tokens per batch, i.e. 16384 // seq_len, unless a "
                                     "preset sets the batch: one named, or the default preset over its own lengths)")
    run.add_argument("--head-dim", dest="head_dim", help="D[,D...]")
    run.add_argument("--dtype", help="float16,bfloat16,float32")
    run.add_argument("--causal", nargs="?", const="true", help="causal masking: true (bare flag), false or both")
    run.add_argument("--no-causal", dest="causal", action="store_const", const="false", help="the same as --causal false")
    run.add_argument("--mode", help="fwd,bwd,fwd+bwd")
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.add_argument("--threads", help="N: threads torch computes with on a CPU (default: torch's own choice)")
    run.add_argument("--out", help="results file (default: results/<date>_<device>_<preset>.jsonl)")
    run.add_argument("--resume", action="store_true", help="append to --out, skipping cases already in it")
    run.add_argument("--retry", help=f"with --resume: run again the cases whose row has one of these statuses "
                                     f"({', '.join(RETRYABLE)}); the new row replaces the old one")
    run.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    run.add_argument("--timing", help="KEY=VALUE[,KEY=VALUE...]: how each case is timed, e.g. min_repeats=20,budget_s=3 "
                                      "(keys: " + ", ".join(ADJUSTABLE) + "; defaults: on cuda " +
                                      describe(vars(TimingPolicy.for_device("cuda"))) + ", on cpu " +
                                      describe(vars(TimingPolicy.for_device("cpu"))) + ")")
    run.add_argument("--time-limit", dest="time_limit",
                     help="seconds: start no new row after this long; the run stops cleanly, every finished row kept "
                          "(exit 3; continue with --resume --out FILE)")
    run.add_argument("--cuda-graph", dest="cuda_graph", action="store_true",
                     help="also time each forward row replayed from a CUDA graph, without the host issuing its kernels "
                          "(graph_time_ms; GPU only)")
    run.add_argument("--energy", action="store_true",
                     help="also measure each row's energy per call and mean power from the GPU's energy counter (NVML; "
                          "about 2 s more per row; GPU only)")
    run.add_argument("--dry-run", dest="dry_run", action="store_true",
                     help="print what the run would measure, skip (--resume) or record as unsupported, and stop")

    checking = commands.add_parser("check", help="correctness only: forward and gradients against the float64 "
                                                 "exact twin at awkward sizes and many seeds (exit 1 on a failure)")
    checking.add_argument("--impl", required=True, help="NAME[:KEY=VALUE...][,NAME...]; see `attnbench list`")
    checking.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    checking.add_argument("--dtype", help="(default: float32,bfloat16 on cpu; float16,bfloat16,float32 on cuda)")
    checking.add_argument("--seed", type=int, default=0, help="added to every input seed, for other inputs (default 0)")
    checking.add_argument("--seq-len", help="lengths of your own to check too, N[,N...] (each with grouped-query heads)")
    checking.add_argument("--head-dim", help="head dims of your own to check too, D[,D...] (at 17, 257 and 33 tokens)")
    checking.add_argument("--q-len", help="query lengths of your own to check too, Q[,Q...]: the last Q positions "
                                          "against each --seq-len of keys (257 without one), as in decoding")
    checking.add_argument("--json", help="also write every case's result to this file (for CI dashboards)")
    checking.add_argument("--verbose", action="store_true",
                          help="name each case before it runs (to find the one a crash that ends the process was in)")

    amend = commands.add_parser("local-errors", help="add the local-inputs error to a results file's approximate rows "
                                                     "that lack it (nothing is timed; the rows are appended amended)")
    amend.add_argument("results", help="results file (JSON Lines), amended in place")
    amend.add_argument("--redo", action="store_true", help="measure every approximate row again, not only those without it")
    amend.add_argument("--seed", type=int, default=0, help="seed for the local inputs (default 0)")
    amend.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...]: only these implementations' rows (a name "
                                      "covers all its options; default: every approximate row)")

    listing_runs = commands.add_parser("runs", help="what results files hold: machine, dates, preset, software, rows "
                                                    "by status, implementations")
    listing_runs.add_argument("results", nargs="*", help="results files (default: every one in results/)")
    listing_runs.add_argument("--format", default="text", choices=("text", "json"))

    report = commands.add_parser("report", help="markdown, charts and HTML from results files")
    report.add_argument("results", nargs="+", help="results files (JSON Lines)")
    report.add_argument("--out", help="output folder (default: reports/<name of the first results file>)")
    report.add_argument("--baseline", help="implementation the speed-up chart divides by, one measured in the results "
                                           "(default: sdpa, where it was measured)")
    report.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...], shell wildcards allowed: only these "
                                        "implementations (a name covers all its options; default: every one)")
    report.add_argument("--chart-formats", dest="chart_formats", default="png",
                        help="comma-separated, of png, svg, pdf (default png): each chart in these formats; PNG is "
                             "always written, as the pages show it (vector SVG or PDF for publishing)")

    comparing = commands.add_parser("compare", help="regressions between two runs (exit 1 on a regression)")
    comparing.add_argument("baseline", help="results file(s), comma-separated (attnbench JSONL or pytest-benchmark JSON)")
    comparing.add_argument("current", help="results file(s), comma-separated")
    comparing.add_argument("--threshold", default="5", help="smallest slowdown that counts, in percent (default 5)")
    comparing.add_argument("--memory-threshold", default="10",
                           help="smallest growth of peak memory that counts, in percent (default 10), or 'off'")
    comparing.add_argument("--format", default="text", choices=("text", "md", "json"))
    comparing.add_argument("--chart", help="also draw every case's time ratio, coloured by verdict, into this "
                                           "file (.png, .svg or .pdf)")
    comparing.add_argument("--baseline-impl", dest="baseline_impl",
                           help="with --current-impl: compare two implementations instead of two runs, this one's "
                                "rows in BASELINE against the other's in CURRENT (the same file may be both)")
    comparing.add_argument("--current-impl", dest="current_impl", help="see --baseline-impl")
    comparing.add_argument("--impl", help="NAME[:KEY=VALUE...][,NAME...], shell wildcards allowed: compare only these "
                                          "implementations' rows (default: every one)")

    recommend = commands.add_parser("recommend", help="rank implementations for a shape from measured results")
    recommend.add_argument("--seq-len", dest="seq_len", required=True,
                           help="sequence length; between two measured ones, interpolated (log-log)")
    recommend.add_argument("--heads", required=True, help="query heads; another measured head count is scaled to it "
                                                          "where this one was not measured")
    recommend.add_argument("--head-dim", dest="head_dim", required=True, help="head dimension, as measured")
    recommend.add_argument("--kv-heads", dest="kv_heads", help="key/value heads (default: = heads)")
    recommend.add_argument("--q-len", dest="q_len", help="queries against --seq-len keys, as measured with run --q-len "
                                                         "(default: = seq-len)")
    recommend.add_argument("--batch", default="1", help="batch to scale time and memory to (default 1)")
    recommend.add_argument("--dtype", default="bfloat16", help="float16, bfloat16 or float32 (default bfloat16)")
    recommend.add_argument("--causal", nargs="?", const="true", default="false", help="true (bare flag) or false")
    recommend.add_argument("--mode", default="fwd", help="fwd, bwd or fwd+bwd")
    recommend.add_argument("--max-error", dest="max_error", help="largest relative RMS error to accept")
    recommend.add_argument("--memory-budget", dest="memory_budget", help="bytes, or with a unit: 512MiB, 8GiB, 40GB")
    recommend.add_argument("--results", nargs="+",
                           help="results files (default: the newest in results/ timed on this GPU or CPU model)")
    recommend.add_argument("--format", default="text", choices=("text", "json"),
                           help="json: the ranking and exclusions for a program that picks a kernel")

    prof = commands.add_parser("profile", help="where one case's time goes: torch.profiler's heaviest operators")
    prof.add_argument("--impl", required=True, help="NAME[:KEY=VALUE...]; see `attnbench list`")
    prof.add_argument("--seq-len", dest="seq_len", required=True, help="sequence length")
    prof.add_argument("--heads", default="16", help="(default 16)")
    prof.add_argument("--kv-heads", dest="kv_heads", help="key/value heads (default: = heads)")
    prof.add_argument("--q-len", dest="q_len", help="queries against --seq-len keys (default: = seq-len)")
    prof.add_argument("--head-dim", dest="head_dim", default="64", help="(default 64)")
    prof.add_argument("--batch", default="1", help="(default 1)")
    prof.add_argument("--dtype", help="(default: bfloat16 on cuda, float32 on cpu)")
    prof.add_argument("--causal", nargs="?", const="true", default="false", help="true (bare flag) or false")
    prof.add_argument("--mode", default="fwd", help="fwd, bwd or fwd+bwd (default fwd)")
    prof.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    prof.add_argument("--calls", default="3", help="profiled calls after warm-up (default 3)")
    prof.add_argument("--rows", default="20", help="operators to list (default 20)")
    prof.add_argument("--trace", help="also write a Chrome/Perfetto trace to this path")
    prof.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    return parser


def _representative_case(device: str) -> Case:
    dtype = "bfloat16" if device == "cuda" else "float32"
    return Case(batch=1, heads=8, seq_len=1024, head_dim=64, dtype=dtype, causal=False, mode="fwd", device=device)


def _listed_reasons(impl: implementations.Implementation, case: Case) -> list[str]:
    """`impl.supports(case)`, or the exception it raised as the reason: an installed package's bug must not hide
    the rest of the list."""
    try:
        return impl.supports(case)
    except Exception as error:  # noqa: BLE001
        return [f"supports() raised {type(error).__name__}: {error}"]


def cmd_list(args) -> int:
    device = config.device_or_default(args.device)
    case = _representative_case(device)
    print(f"implementations on {device} (checked with {case.label}):")
    for name in implementations.names():
        impl = implementations.get(name)
        reasons = _listed_reasons(impl, case)
        verdict = "runs" if not reasons else "cannot run: " + "; ".join(reasons)
        print(f"  {name:<16} {impl.family:<10} {verdict}")
        # One query against the keys, causal: whether it decodes too, where it runs at all.
        decoding = _listed_reasons(impl, replace(case, q_len=1, causal=True)) if not reasons else []
        if decoding:
            print(f"  {'':<16} {'':<10} not with fewer queries than keys (--q-len): {'; '.join(decoding)}")
        declared_by = implementations.origin(name)
        if declared_by:
            print(f"  {'':<16} {'':<10} declared by {declared_by}")
        if impl.options:
            defaults = ", ".join(f"{key}={option.default}" for key, option in impl.options.items())
            print(f"  {'':<16} {'':<10} options ({name}:KEY=VALUE): {defaults}")
    for line in implementations.ignored_declarations():
        print(f"  ignored entry point {line}")
    return 0


def cmd_env(args) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(collect(device), indent=2))
    return 0




def cmd_report(args) -> int:
    from .reporting import build_report
    from .reporting.charts import CHART_FORMATS
    from .reporting.data import ReportInputError

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UsageError(f"report: {missing[0]!r} is not a file")
    formats = tuple(dict.fromkeys(config.comma_items("--chart-formats", args.chart_formats)))
    unknown = [fmt for fmt in formats if fmt not in CHART_FORMATS]
    if unknown:
        raise UsageError(f"--chart-formats: unknown format {unknown[0]!r} (allowed: {', '.join(CHART_FORMATS)})")
    out = config.writable("--out", args.out if args.out else Path("reports") / Path(args.results[0]).stem, folder=True)
    try:
        path = build_report(args.results, out, baseline=args.baseline, chart_formats=formats,
                            say=lambda message: print(f"attnbench: {message}", file=sys.stderr, flush=True),
                            impls=None if args.impl is None else config.comma_items("--impl", args.impl))
    except ReportInputError as error:
        raise UsageError(f"report: {error}") from None
    print(f"report: {path}\nhtml: {path.parent / 'index.html'}")
    return 0


def _newest_results(device: str) -> list[Path]:
    """The newest results file in results/ timed on this machine model (this GPU, or this CPU): another
    model's times would rank implementations by a machine the user is not on."""
    here = machine_name(device)
    elsewhere: dict[str, list[str]] = {}
    for path in sorted(naming.RESULTS_DIR.glob("*.jsonl"), key=lambda p: (p.name[:10], p.stat().st_mtime), reverse=True):
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
    raise UsageError(f"--results: no results file timed on {here} in {naming.RESULTS_DIR}/ (run `attnbench run` first, "
                     f"or name files with --results{found and ', e.g. those of another machine' + found})")


def _one_shape(args, default_dtype: str) -> dict:
    """The flags that name one case's shape (recommend, profile), parsed and checked."""
    if args.causal == "both":
        raise UsageError("--causal: 'both' is not allowed here (allowed: true, false)")
    one = lambda flag, parse, text: config.only_one(flag, parse(flag, text))  # noqa: E731
    shape = {
        "seq_len": one("--seq-len", config.positive_ints, args.seq_len),
        "heads": one("--heads", config.positive_ints, args.heads),
        "head_dim": one("--head-dim", config.positive_ints, args.head_dim),
        "batch": one("--batch", config.positive_ints, args.batch),
        "kv_heads": None if args.kv_heads is None else one("--kv-heads", config.positive_ints, args.kv_heads),
        "q_len": None if args.q_len is None else one("--q-len", config.positive_ints, args.q_len),
        "dtype": one("--dtype", config.dtypes, args.dtype) if args.dtype else default_dtype,
        "causal": config.causal_values("--causal", args.causal) == (True,),
        "mode": one("--mode", config.modes, args.mode),
    }
    if shape["kv_heads"] and shape["heads"] % shape["kv_heads"]:
        raise UsageError(f"--kv-heads: {shape['kv_heads']} does not divide --heads {shape['heads']}")
    if shape["q_len"] and shape["q_len"] > shape["seq_len"]:
        raise UsageError(f"--q-len: {shape['q_len']} exceeds --seq-len {shape['seq_len']} (allowed: at most --seq-len; "
                         "the queries are the last positions of the keys)")
    return shape


def cmd_recommend(args) -> int:
    from .recommend import Query, answer_record, format_answer, rank, unmeasured_shape
    from .reporting.data import ReportInputError, prepare
    from .results import load

    query = Query(
        **_one_shape(args, "bfloat16"),
        max_error=None if args.max_error is None else config.positive_float("--max-error", args.max_error),
        memory_budget=None if args.memory_budget is None else config.byte_size("--memory-budget", args.memory_budget),
    )
    sources = [Path(p) for p in args.results] if args.results else _newest_results(config.device_or_default(None))
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
    return 0


def cmd_compare(args) -> int:
    from .compare import CompareInputError, run

    threshold = config.positive_float("--threshold", args.threshold) / 100
    memory_threshold = None if args.memory_threshold == "off" else \
        config.positive_float("--memory-threshold", args.memory_threshold) / 100
    split = lambda text: [Path(p) for p in text.split(",") if p]  # noqa: E731
    chart = None
    if args.chart:
        from .reporting.charts import CHART_FORMATS

        chart = config.writable("--chart", args.chart)
        if chart.suffix.lstrip(".") not in CHART_FORMATS:
            raise UsageError(f"--chart: {args.chart!r} does not end in a chart format "
                             f"(allowed: {', '.join('.' + fmt for fmt in CHART_FORMATS)})")
    if (args.baseline_impl is None) != (args.current_impl is None):
        given, missing = ("--baseline-impl", "--current-impl") if args.baseline_impl else ("--current-impl",
                                                                                            "--baseline-impl")
        raise UsageError(f"{given}: only with {missing} (allowed: both, to compare two implementations, or neither)")
    impls = (args.baseline_impl, args.current_impl) if args.baseline_impl else None
    if impls is not None and args.impl is not None:
        raise UsageError("--impl: not with --baseline-impl and --current-impl, which name the rows compared already")
    patterns = None if args.impl is None else config.comma_items("--impl", args.impl)
    try:
        text, status = run(split(args.baseline), split(args.current), threshold, args.format, memory_threshold, chart,
                           impls, patterns)
    except CompareInputError as error:
        raise UsageError(f"compare: {error}") from None
    print(text)
    return status


def cmd_profile(args) -> int:
    from .profiling import profile_case

    device = config.device_or_default(args.device)
    shape = _one_shape(args, _representative_case(device).dtype)
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
    try:
        result = profile_case(impl, case, calls=config.only_one("--calls", config.positive_ints("--calls", args.calls)),
                              rows=config.only_one("--rows", config.positive_ints("--rows", args.rows)), seed=args.seed,
                              trace=Path(args.trace) if args.trace else None)
    except implementations.Unsupported as unsupported:
        raise UsageError(f"{impl.label} refused {case.label}: {unsupported}") from None
    print(result.format())
    return 0


def _trace_native_crashes() -> None:
    """A segmentation fault or abort in a kernel prints the Python traceback it happened in (the
    implementation's module and line), where it would otherwise end the process without a word."""
    if not faulthandler.is_enabled():
        with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):  # stderr without a descriptor
            faulthandler.enable()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _trace_native_crashes()
    try:
        commands = {"list": cmd_list, "env": cmd_env, "run": cmd_run, "check": cmd_check, "report": cmd_report,
                    "local-errors": cmd_local_errors, "runs": cmd_runs,
                    "recommend": cmd_recommend, "compare": cmd_compare, "profile": cmd_profile}
        with sigterm_raises():
            return commands[args.command](args)
    except UsageError as error:
        print(f"attnbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # before a run started (e.g. while measuring the matmul peak): nothing written
        print(f"\nattnbench: {stop_word(interrupt)}", file=sys.stderr)
        return exit_status(interrupt)
    except BrokenPipeError:  # the reader went away (`attnbench check ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141
