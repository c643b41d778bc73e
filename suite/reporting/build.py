"""`attnbench report`: result files -> report.md, charts (PNG, and SVG or PDF if asked) and index.html in one folder."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import Path

import pandas as pd

from ..case import CASE_FIELDS, Case
from ..check.workload import LOCAL_CORRELATION_TOKENS, LOCAL_REFERENCE_TOKENS, LOCAL_SELF_LOGIT
from ..measure import settings as measure_settings
from ..results import speed_settings
from ..results.files import ResultsFormatError, load, read
from ..results.naming import slug
from ..results.schema import DATA_COLUMNS
from ..run import config
from ..run.completeness import shortfall_notes
from . import charts
from .attention_maps import attention_map_chart
from .blocks import Heading, Image, Paragraph, Report, Table, to_html, to_markdown
from .crossover import MISMATCH_MARK, crossover_summary, crossover_table
from .data import (
    MEASURED,
    ReportInputError,
    colours,
    fmt_bytes,
    fmt_num,
    group_title,
    groups,
    impl_order,
    prepare,
    scope_words,
)
from .energy_table import ENERGY, energy_table
from .fastest import fastest_table, lead_grids, win_counts
from .fastest_map import fastest_map
from .first_calls import first_call_table
from .graph_replays import GRAPH_REPLAYS, graph_replay_table
from .machines import machine_table, machines_in_order
from .memory_glance import memory_summary
from .roofline import roofline_chart
from .run_grid import grid_words
from .run_time import run_time_table
from .scaling import LONGEST_LENGTHS, scaling_tables

PADDED_BASELINE = "padded"  # packed documents padded to the longest: what a program without a varlen kernel runs
CHART_KEYS = ("device", "gpu", "batching", "queries", "packing", "dtype", "causal", "mode")


def _environment_blocks(paths: list[Path]) -> list:
    rows = []
    for path in paths:
        for run in read(path)[0]:
            env = run.get("environment", {})
            state = env.get("gpu_state") or {}
            rows.append(
                [
                    Path(path).name,
                    env.get("gpu") or env.get("cpu") or "?",
                    env.get("driver") or "–",
                    f"{state.get('sm_clock_mhz', '–')}/{state.get('max_sm_clock_mhz', '–')} MHz"
                    if "sm_clock_mhz" in state
                    else "–",
                    f"torch {env.get('torch')}, CUDA {env.get('cuda') or '–'}, cuDNN {env.get('cudnn') or '–'}, "
                    f"triton {env.get('triton') or '–'}, xformers {env.get('xformers') or '–'}",
                    _settings_text(env),
                    measure_settings.describe(run.get("timing_policy")) or "–",
                    ", ".join(f"{k} {v:.0f}" for k, v in (run.get("measured_peak_tflops") or {}).items()) or "–",
                    f"{run['measured_peak_gbytes_per_s']:.0f}" if run.get("measured_peak_gbytes_per_s") else "–",
                    (env.get("git_commit") or "–")[:12],
                    grid_words(run),
                ]
            )
    return [
        Heading("Environment"),
        Table(
            [
                "file",
                "device",
                "driver",
                "SM clock (now/max)",
                "software",
                "settings",
                "timing",
                "measured matmul TFLOP/s",
                "measured copy GB/s",
                "commit",
                "grid",
            ],
            rows,
        ),
    ]


def _settings_text(environment: dict) -> str:
    """What the run's process set that changes speed (suite/speed_settings.py), 'default' where nothing."""
    text = speed_settings.summary(environment.get("speed_settings"))
    return "not recorded" if text is None else (text or "default")


def _cell(row) -> str:
    if row.status not in MEASURED:
        return row.status
    text = f"{fmt_num(row.time_ms)} ms · {fmt_num(row.tflops)} TF/s"
    if pd.notna(row.peak_mem_bytes):
        text += f" · {fmt_bytes(row.peak_mem_bytes)}"
    if row.status == "mismatch":
        text += " · MISMATCH"
    if row.noisy is True:
        text += " ~"
    if row.throttled is True:
        text += " †"
    if row.host_bound is True:
        text += " ‡"
    return text


def _group_table(part: pd.DataFrame) -> Table:
    labels = impl_order(part.impl)
    rows = []
    for (seq_len, batch), cases in part.groupby(["seq_len", "batch"], sort=True):
        by_impl = {row.impl: _cell(row) for row in cases.itertuples()}
        rows.append([f"{seq_len} (B{batch})", *(by_impl.get(label, "") for label in labels)])
    return Table(["seq len (batch)", *labels], rows)


def _median_and_max(errors: pd.Series, exact: bool) -> list[str]:
    if exact:
        return ["exact", "exact"]
    errors = errors.dropna()
    return [fmt_num(errors.median()), fmt_num(errors.max())] if not errors.empty else ["—", "—"]


def _accuracy_table(frame: pd.DataFrame) -> Table:
    measured = frame[frame.status.isin(MEASURED)]
    with_local = measured.softmax_local_rel_rms_err.notna().any()
    rows = []
    for (label, dtype), part in measured.groupby(["impl", "dtype"]):
        checked = part[part.accuracy_ok.notna()]
        exact = (part.family == "exact").all()
        rows.append(
            [
                label,
                dtype,
                fmt_num(pd.to_numeric(checked.max_abs_err, errors="coerce").max()),
                fmt_num(checked.rel_rms_err.max()),
                f"{int((checked.accuracy_ok == True).sum())}/{len(checked)}",  # noqa: E712
                *_median_and_max(part.softmax_rel_rms_err, exact),
                *(_median_and_max(part.softmax_local_rel_rms_err, exact) if with_local else []),
            ]
        )
    order = impl_order([r[0] for r in rows])
    rows.sort(key=lambda r: (order.index(r[0]), r[1]))
    local_header = ["vs softmax, local inputs: median", "vs softmax, local inputs: max"] if with_local else []
    return Table(
        [
            "implementation",
            "dtype",
            "max abs err",
            "max rel RMS err",
            "passed",
            "vs softmax: median rel RMS",
            "vs softmax: max rel RMS",
            *local_header,
        ],
        rows,
    )


def _status_paragraph(frame: pd.DataFrame) -> Paragraph:
    counts = frame.status.value_counts()
    text = ", ".join(f"{count} {status}" for status, count in counts.items())
    host_bound = (frame.host_bound == True).sum()  # noqa: E712
    return Paragraph(
        f"{len(frame)} result rows: {text}. Cells: median time · TFLOP/s · peak memory; "
        f"~ = noisy (IQR above 10% of the median){_throttle_words(frame)}"
        + (
            f" ‡ = host-bound ({host_bound} rows): issuing the call took the host (Python, dispatch, "
            "launches) 90% or more of the time the GPU took to run it, so called back to back the host "
            "sets the pace; `host_ms` in the results gives its time."
            if host_bound
            else ""
        )
    )


def _throttle_words(frame: pd.DataFrame) -> str:
    """The end of the cells' legend: what † means, where rows were watched for throttling (GPU rows; a CPU's
    rows are not, and a legend of a mark that cannot appear would suggest they were)."""
    throttled = frame["throttled"] if "throttled" in frame else pd.Series(dtype=object)
    if not throttled.notna().any():
        return "."
    marked = int((throttled == True).sum())  # noqa: E712
    return (
        f", † = GPU throttled during the case ({marked} row{'s' * (marked != 1)})."
        if marked
        else ". The GPU throttled during none of the cases."
    )


_OOM_HEAD = re.compile(r"^(.*?out of memory\.(?: Tried to allocate [\d.]+ \w+\.)?)", re.IGNORECASE)
_LISTED_CASES = 4  # a failure group names its cases up to this many


def _reason_head(reason) -> str:
    """The part of a reason that groups rows: an out-of-memory message without the allocator's
    free/reserved figures, which differ from row to row; any other reason whole."""
    text = " ".join(str(reason).split())
    match = _OOM_HEAD.match(text)
    return match.group(1) if match else text[:300]


def _case_name(row: dict) -> str:
    try:
        return Case.from_row(row).label
    except (TypeError, ValueError):  # a row from a hand-edited or foreign file: still say which length
        return f"N{row.get('seq_len')}"


def _failure_table(frame: pd.DataFrame) -> Table:
    failed = frame[~frame.status.isin(MEASURED)].assign(reason_head=lambda f: f.reason.map(_reason_head))
    rows = []
    for (impl, status, reason), part in failed.groupby(["impl", "status", "reason_head"], dropna=False, sort=True):
        names = [_case_name(r) for r in part.to_dict("records")]
        where = "; ".join(names) if len(names) <= _LISTED_CASES else f"{len(names)} cases"
        rows.append([impl, status, reason, where])
    return Table(["implementation", "status", "reason", "cases"], rows)


def _accuracy_case(frame: pd.DataFrame) -> dict | None:
    """The shape where most implementations were measured (forward preferred, then the longest)."""
    ok = frame[frame.status.isin(MEASURED)]
    if ok.empty:
        return None
    keys = ["seq_len", "q_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "mode", "gpu"]
    counts = ok.groupby(keys).impl.nunique().reset_index(name="n")
    counts["fwd"] = counts["mode"] == "fwd"
    best = counts.sort_values(["n", "fwd", "seq_len"], ascending=False).iloc[0]
    return {key: best[key] for key in keys}


def _approximations(approximate: pd.DataFrame) -> list:
    """The approximate implementations measured in these rows that this version can still build."""
    built = []
    for label in impl_order(approximate.impl):
        try:
            built.append(config.build_impl("report", label))
        except config.UsageError:
            continue
    return built


def _add_crossovers(report: Report, frame: pd.DataFrame, baseline: str) -> None:
    tables = [(group, crossover_table(part, baseline)) for group, part in groups(frame)]
    tables = [(group, table) for group, table in tables if table is not None]
    if not tables:
        return
    mismatch = (frame.status == "mismatch").any()
    report.add(
        Heading(f"Speed-up over {baseline}"),
        Paragraph(
            f'Median time of {baseline} over each implementation\'s, per length. "Faster from" is the shortest '
            f"length from which an implementation is faster at every longer length measured (a length where "
            f"{baseline} could not run counts as faster; one where the implementation could not run shows why)."
            + (
                f" {MISMATCH_MARK} = it or {baseline} failed its accuracy check there (in a summary: at some length): "
                "the speed of a wrong result."
                if mismatch
                else ""
            )
        ),
    )
    for title, table in crossover_summary(frame, baseline):
        report.add(
            Heading(f"At a glance: {title}", 3),
            Paragraph(
                f"Where each implementation starts to beat {baseline}, and its speed-up at the longest length "
                "both ran (≈: within the two measurements' spread)."
            ),
            table,
        )
    for title, table in memory_summary(frame, baseline):
        report.add(
            Heading(f"Peak memory at a glance: {title}", 3),
            Paragraph(
                f"Each implementation's peak memory beyond its inputs over {baseline}'s, and its own, at the longest "
                f"length where both ran ({baseline}: its own peak there)."
            ),
            table,
        )
    for group, table in tables:
        report.add(Heading(group_title(group), 3), table)


def _add_padded_crossovers(report: Report, frame: pd.DataFrame, baseline: str) -> None:
    """Packed documents: every implementation's speed-up over the documents padded to the longest, beside the one
    over the baseline (`sdpa`, there with the block-diagonal mask materialized)."""
    packed = frame[frame.packing.notna()]
    if baseline != PADDED_BASELINE and PADDED_BASELINE in set(packed[packed.status.isin(MEASURED)].impl):
        _add_crossovers(report, packed, PADDED_BASELINE)


def _add_fastest(report: Report, frame: pd.DataFrame, chart, colour_of: dict) -> None:
    grids = lead_grids(frame)
    if not grids:
        return
    wins = win_counts(frame)
    tally = "; ".join(f"{label} {count}" for label, count in wins.items())
    report.add(
        Heading("Fastest exact implementation"),
        Paragraph(
            "For each case, the implementation of exact softmax attention with the shortest median time among those "
            "that passed their accuracy check; those within the two measurements' spread of it, or running the same "
            "kernel (`sdpa (cudnn)` is `sdpa` dispatching to the kernel `sdpa-cudnn` forces), are named after it (≈), "
            "and the margin is the median of the next one over the fastest's. Approximate families are left out: the "
            "speed-up tables weigh them, with their errors."
            + (
                f" Cases that one kernel led (`sdpa`'s choices counted with the backend it chose): {tally}."
                if tally
                else ""
            )
        ),
    )
    for group, grid, rows in grids:
        report.add(Heading(f"Fastest: {group_title(group)}", 3), fastest_table(grid))
        name = slug("fastest", group["gpu"], *scope_words(group), f"d{group['head_dim']}", group["dtype"])
        chart(fastest_map(group, grid, colour_of), name, "fastest exact implementation by length and head count", rows)


def _add_scaling(report: Report, frame: pd.DataFrame) -> None:
    tables = scaling_tables(frame)
    if not tables:
        return
    report.add(
        Heading("How time grows with length"),
        Paragraph(
            "The exponent x of N^x that fits the time of one sequence (the median over the batch) over the longest "
            f"{LONGEST_LENGTHS} lengths each implementation ran (least squares in log-log; the lengths in brackets). "
            "Exact attention is O(N²) per sequence and tends to 2; windows, linear attention and random features are "
            "O(N) and tend to 1. Above the limit, something grows faster than the maths (a serial pass, a cache that "
            "no longer holds); below it, fixed costs still weigh."
            + (
                " With a fixed number of queries (the groups that name them: decoding), N is the length of the cache, "
                "and exact attention too is O(N) and tends to 1; a window's time stops growing once the cache is "
                "longer than it."
                if "queries" in frame and frame["queries"].notna().any()
                else ""
            )
        ),
    )
    for title, table in tables:
        report.add(Heading(f"Scaling: {title}", 3), table)


def _add_machine_comparisons(report: Report, frame: pd.DataFrame) -> None:
    machines = machines_in_order(frame)
    tables = [(other, machine_table(frame, machines[0], other)) for other in machines[1:]]
    tables = [(other, table) for other, table in tables if table is not None]
    if not tables:
        return
    report.add(Heading("Across machines"))
    for other, table in tables:
        report.add(
            Heading(f"{other} against {machines[0]}", 3),
            Paragraph(
                f"Median time on {machines[0]} over the median time on {other}, for each implementation: the geometric "
                "mean over the cases both measured (same shape, dtype, mask, mode and batch). Above 1: faster on "
                f"{other}."
            ),
            table,
        )


DEFAULT_BASELINE = "sdpa"

ONE_TIME_COSTS = (
    "Each case's first call is timed apart and kept out of the timings above: it carries compilation "
    "(torch.compile, FlexAttention), autotuning (Triton kernels), plan building (cuDNN) and lazy set-up. "
    "A program pays it once per new shape. Implementations that share a library share its caches within "
    "a run (of `sdpa` and `sdpa-cudnn`, whichever meets a shape first builds cuDNN's plan for it), and "
    "caches on disk (Triton's autotuning results, Inductor's compiled graphs) shorten it in later runs: "
    "compare these figures within one run, and with the order of the run in mind."
)
RUN_TIME = (
    "What each implementation's rows cost the run, in wall time: everything a row does (the checks "
    "against the float64 reference, the first call, warm-up, the timed calls, the memory measurement; a "
    "case's inputs and reference count as its first implementation's). Not a measure of speed: a plan "
    "for the next run. `attnbench run --dry-run` sums them for the rows it would measure on this machine "
    "model."
)


def _write_data(frame: pd.DataFrame, path: Path) -> None:
    """The report's rows as CSV, for a spreadsheet or a plot of one's own (raw per-repeat times stay in the
    results files)."""
    data = frame.assign(machine=frame["gpu"]).reindex(columns=list(DATA_COLUMNS))
    data["repeats"] = pd.to_numeric(data["repeats"], errors="coerce").astype("Int64")  # not 50.0 beside empty cells
    data.to_csv(path, index=False)


def _one_row_per_case(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(frame with each case of each machine once, the last file's row; how many earlier rows were dropped).
    Two runs' rows of one case would be drawn as one zigzag line and counted twice."""
    repeated = frame.duplicated(["impl", *CASE_FIELDS, "machine"], keep="last")
    return frame[~repeated], int(repeated.sum())


def _selected(frame: pd.DataFrame, patterns: Collection[str], baseline: str | None) -> pd.DataFrame:
    """The rows of the implementations `patterns` name, and the `baseline` asked for, which the speed-ups need."""
    present = impl_order(frame.impl.dropna())
    typo = config.unmatched_pattern(patterns, present)
    if typo is not None:
        raise ReportInputError(
            f"--impl: {typo!r} matches no implementation in these results (they have: {', '.join(present)})"
        )
    return frame[frame.impl.map(lambda label: label == baseline or config.label_matches(label, patterns))]


def _remove_stale_charts(folder: Path, written: set[Path]) -> None:
    """Charts an earlier report left in the folder (other groups, other implementations, other formats): a folder
    published as it is must hold this report's charts only."""
    for path in folder.iterdir():
        if path.suffix.lstrip(".") in charts.CHART_FORMATS and path not in written:
            path.unlink()


CHARTS_INTRO = (
    "Per group: time, TFLOP/s, peak memory and speed-up against length (with fewer queries than keys, GB/s as well: "
    "decoding is bound by reading the KV cache, or the state a recurrent decoder carries in its place), and a "
    "roofline: each row's TFLOP/s against its arithmetic intensity (its FLOPs over the bytes it must move at least: "
    "inputs read once, outputs written once), under the matmul peak and copy bandwidth its GPU measured. A row far "
    "below the bandwidth roof at low intensity loses its time to extra passes over memory or to launches, not to "
    "arithmetic."
)
ACCURACY_INTRO = (
    "Errors against each implementation's float64 exact twin (softmax attention for exact ones), worst "
    "of output and input gradients."
)
PARTIAL_SCOPE = (
    " On {rows} rows (from {tokens} tokens) the float64 reference covered only some (batch, key/value "
    "head) slices, always the first and the last, to keep its cost bounded; `accuracy_scope` in the "
    "results says which share."
)
APPROXIMATE_NOTE = (
    " Approximate families also against exact softmax attention (a figure, not a test). The timed inputs are i.i.d. "
    "standard normal, on which softmax attention is nearly uniform: its output shrinks like 1/√N while a window's or "
    "a feature map's does not, so errors relative to it grow with length and exceed 1 at long lengths, and they do "
    "not predict the error on a trained model's peaked attention."
)
LOCAL_INPUTS_NOTE = (
    ' The "local inputs" columns repeat the forward pass on queries and keys that share a latent drifting along '
    "the sequence (at {tokens} tokens, correlation length {correlation:g} tokens and a query's logit against its own "
    "position about {self_logit:g}; beyond, both grow with the log of the length, so that at every length most of "
    "each query's weight lies within 64 tokens), so that softmax attention is peaked near the diagonal, as in many "
    "heads of trained models. There, windows and blocks keep the weight near the diagonal and feature maps do not; "
    "which figure matters depends on the attention a model actually learns."
)


class _Charts:
    """Draws each chart into charts/ in the asked formats (PNG always: the pages show it), adds it to the report,
    and remembers what it wrote, so that charts an earlier report left there can be removed."""

    def __init__(self, report: Report, out_dir: Path, chart_formats: tuple[str, ...]):
        self.report, self.out_dir = report, out_dir
        self.formats = tuple(dict.fromkeys(["png", *chart_formats]))
        self.written: set[Path] = set()

    def __call__(self, fig, name: str, alt: str, measured_rows: pd.DataFrame | None = None) -> None:
        if measured_rows is not None:
            charts.stamp(fig, measured_rows)
        stem = Path("charts") / name
        charts.save(fig, self.out_dir / stem, self.formats)
        self.written.update(self.out_dir / stem.with_suffix(f".{fmt}") for fmt in self.formats)
        self.report.add(Image(stem.with_suffix(".png"), alt))


def _loaded(paths: list[Path], impls: Collection[str] | None, baseline: str | None):
    """(the rows, each case once; how many repeated rows were dropped; the selection's paragraph or None; each
    implementation's colour in the whole files' report)."""
    try:
        loaded = prepare(load(paths))
    except ResultsFormatError as error:
        raise ReportInputError(str(error)) from None
    colour_of = colours(loaded.impl)
    selection = None
    if impls is not None:
        everything = impl_order(loaded.impl.dropna())
        loaded = _selected(loaded, impls, baseline)
        selection = Paragraph(
            f"Implementations shown: {', '.join(impl_order(loaded.impl.dropna()))}, selected with "
            f"`--impl {','.join(impls)}` of the {len(everything)} implementations in these files."
        )
    frame, repeated = _one_row_per_case(loaded)
    return frame, repeated, selection, colour_of


def _add_summary(
    report: Report,
    paths: list[Path],
    frame: pd.DataFrame,
    repeated: int,
    selection: Paragraph | None,
    shortfalls: list[str],
) -> None:
    """`shortfalls`: a note for each file whose last run fell short of its plan (completeness.py)."""
    report.add(*_environment_blocks(paths), Heading("Summary"), _status_paragraph(frame))
    report.add(*(Paragraph(f"{note}.") for note in shortfalls))
    if selection is not None:
        report.add(selection)
    if repeated:
        report.add(
            Paragraph(
                f"{repeated} rows measured a case that a later file measured again on the same "
                "machine; each case appears once, from the last file named (to compare two runs, "
                "use `attnbench compare`)."
            )
        )
    if not frame.status.isin(MEASURED).any():
        report.add(
            Paragraph("No case was measured: every row failed or could not run. Reasons:"), _failure_table(frame)
        )


def _add_group_charts(
    report: Report, frame: pd.DataFrame, chart: _Charts, colour_of: dict, baseline: str, say: Callable[[str], None]
) -> None:
    """Per group of one device, batching, dtype, mask and mode: time, TFLOP/s, GB/s, memory, speed-up, roofline."""
    report.add(Heading("Charts"), Paragraph(CHARTS_INTRO))
    if baseline not in set(frame[frame.status.isin(MEASURED)].impl):
        report.add(
            Paragraph(
                f"No speed-up charts: the baseline {baseline!r} was not measured in these results "
                "(choose another with --baseline)."
            )
        )
    chart_groups = [
        (dict(zip(CHART_KEYS, key)), part)
        for key, part in frame.groupby(list(CHART_KEYS), sort=True, dropna=False)
        if part.status.isin(MEASURED).any()
    ]
    for number, (group, part) in enumerate(chart_groups, 1):
        say(f"charts {number}/{len(chart_groups)}: {group_title(group)}")
        name = slug(
            group["gpu"], *scope_words(group), group["dtype"], "causal" if group["causal"] else "dense", group["mode"]
        )
        report.add(Heading(group_title(group), 3))
        for figure, what in (("time_ms", "median time"), ("tflops", "TFLOP/s")):
            chart(
                charts.throughput_chart(part, colour_of, group, figure),
                f"{figure.split('_')[0]}-{name}",
                f"{what} vs sequence length",
                part,
            )
        if isinstance(group.get("queries"), str):  # decoding: bound by reading the cache, not by arithmetic
            chart(
                charts.throughput_chart(part, colour_of, group, "gbytes_per_s"),
                f"bandwidth-{name}",
                "GB/s vs cache length",
                part,
            )
        if part.peak_mem_bytes.notna().any():
            chart(charts.memory_chart(part, colour_of, group), f"memory-{name}", "peak memory vs sequence length", part)
        if baseline in set(part[part.status.isin(MEASURED)].impl):
            chart(
                charts.speedup_chart(part, colour_of, group, baseline),
                f"speedup-{name}",
                f"speed-up over {baseline}",
                part,
            )
        if (part.status.isin(MEASURED) & (part.gbytes_per_s.fillna(0) > 0)).any():
            chart(
                roofline_chart(part, colour_of, group),
                f"roofline-{name}",
                "TFLOP/s against arithmetic intensity, under the measured roofs",
                part,
            )


def _add_accuracy(report: Report, frame: pd.DataFrame, chart: _Charts, colour_of: dict) -> None:
    """Error against speed at one shape, the attention maps, and the accuracy table with what its figures mean."""
    measured = frame[frame.status.isin(MEASURED)]
    case = _accuracy_case(frame)
    at_case = measured
    for key, value in case.items():
        at_case = at_case[at_case[key] == value]
    report.add(Heading("Accuracy against speed", 3))
    chart(
        charts.accuracy_speed_chart(at_case, colour_of, case),
        "accuracy-vs-speed",
        "error vs time at one shape",
        at_case,
    )
    approximate = measured[measured.family != "exact"]
    # Each map shows the approximations measured with its masking (Linformer has no causal form).
    maps = {
        causal: _approximations(approximate[approximate.causal == causal]) for causal in sorted(set(approximate.causal))
    }
    if any(maps.values()):
        report.add(Heading("Attention maps", 3))
    for causal, approximations in maps.items():
        if approximations:
            chart(
                attention_map_chart(approximations, causal=bool(causal)),
                f"attention-maps-{'causal' if causal else 'dense'}",
                "exact vs implied attention weights",
            )
    text = ACCURACY_INTRO
    partial = measured[measured.accuracy_scope.notna()]
    if not partial.empty:
        text += PARTIAL_SCOPE.format(rows=len(partial), tokens=int(partial.seq_len.min()))
    if not approximate.empty:
        text += APPROXIMATE_NOTE
        if approximate.softmax_local_rel_rms_err.notna().any():
            text += LOCAL_INPUTS_NOTE.format(
                tokens=LOCAL_REFERENCE_TOKENS, correlation=LOCAL_CORRELATION_TOKENS, self_logit=LOCAL_SELF_LOGIT
            )
    report.add(Heading("Accuracy"), Paragraph(text), _accuracy_table(frame))


def _add_tables(report: Report, frame: pd.DataFrame) -> None:
    for heading, text, table in (
        ("CUDA-graph replays", GRAPH_REPLAYS, graph_replay_table(frame)),
        ("Energy", ENERGY, energy_table(frame)),
        ("One-time costs", ONE_TIME_COSTS, first_call_table(frame)),
        ("Run time", RUN_TIME, run_time_table(frame)),
    ):
        if table is not None:
            report.add(Heading(heading), Paragraph(text), table)
    report.add(Heading("Tables"))
    for group, part in groups(frame):
        report.add(Heading(group_title(group), 3), _group_table(part))
    if (~frame.status.isin(MEASURED)).any():
        report.add(Heading("Rows that did not run"), _failure_table(frame))


def build_report(
    paths: list[str | Path],
    out_dir: str | Path,
    baseline: str | None = None,
    chart_formats: tuple[str, ...] = ("png",),
    say: Callable[[str], None] = lambda message: None,
    impls: Collection[str] | None = None,
) -> Path:
    """Writes the report of `paths` into `out_dir`. A `baseline` asked for must have been measured; without
    one, `sdpa` is used where it was, and the report says so where it was not. Each chart is written as PNG,
    which the pages show, and in the other `chart_formats` beside it. `say` is told how far it has got (drawing
    a large file's charts takes a minute). `impls` (labels or names, with shell wildcards) keeps only those
    implementations' rows, and the `baseline`'s; each keeps the colour it has in the whole files' report, so
    charts of several selections read alike."""
    paths = [Path(p) for p in paths]
    frame, repeated, selection, colour_of = _loaded(paths, impls, baseline)
    measured_impls = impl_order(frame[frame.status.isin(MEASURED)].impl)
    if baseline is not None and baseline not in measured_impls:
        raise ReportInputError(
            f"--baseline: {baseline!r} was not measured in these results "
            f"(measured: {', '.join(measured_impls) or 'none'})"
        )
    baseline = baseline or DEFAULT_BASELINE
    say(f"{len(frame)} rows from {len(paths)} file{'s' * (len(paths) != 1)}")
    shortfalls = shortfall_notes(paths)
    for note in shortfalls:
        say(note)
    out_dir = Path(out_dir)
    (out_dir / "charts").mkdir(parents=True, exist_ok=True)
    report = Report(f"attnbench report: {', '.join(p.stem for p in paths)}")
    chart = _Charts(report, out_dir, chart_formats)
    _add_summary(report, paths, frame, repeated, selection, shortfalls)
    _add_fastest(report, frame, chart, colour_of)
    if baseline in set(measured_impls):
        _add_crossovers(report, frame, baseline)
    _add_padded_crossovers(report, frame, baseline)
    _add_scaling(report, frame)
    _add_machine_comparisons(report, frame)
    if measured_impls:
        _add_group_charts(report, frame, chart, colour_of, baseline, say)
        _add_accuracy(report, frame, chart, colour_of)
        _add_tables(report, frame)
    _remove_stale_charts(out_dir / "charts", chart.written)
    say("writing report.md, index.html and data.csv")
    _write_data(frame, out_dir / "data.csv")
    (out_dir / "report.md").write_text(to_markdown(report), encoding="utf-8")
    (out_dir / "index.html").write_text(to_html(report, out_dir), encoding="utf-8")
    return out_dir / "report.md"
