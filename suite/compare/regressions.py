"""`attnbench compare BASELINE CURRENT`: did anything get slower, break, or stop running?

The verdict per (implementation, case) follows two peers:
  * asv (`asv compare`, airspeed velocity): a change is reported only if the ratio of the two
    results exceeds a factor *and* the difference is statistically significant on the raw samples
    (asv uses a Mann-Whitney U test where it has samples, confidence intervals otherwise);
  * nvbench's `nvbench_compare.py`: a difference counts only if it exceeds the measured noise of
    both runs (it compares the relative change with the larger of the two noise estimates).
Here a row is `slower` only if all of these hold: median ratio − 1 > threshold (default 5%);
ratio − 1 > the two runs' relative IQRs added up (their noise, with no overlap of typical spread);
and a one-sided Mann-Whitney U test on the raw per-repeat times gives p < 0.01. `faster` mirrors it.
Within the threshold a row is `same`; beyond it without that evidence, `ambiguous`. Rows during
which the GPU throttled in either run are `ambiguous`: their times measure the clock, not the code; so
are rows measured while other processes shared the CPU (`cpu_contended`): their times measure the load.
Status changes are regressions too: accuracy passed -> mismatch, ran -> oom/error/unsupported,
present -> missing. A case the current run was not asked for (outside the grid its header records,
e.g. `run --impl mykernel` against a full baseline) is `not-run`, which is no regression.
Peak memory gets its own verdict where both runs measured it. It is a count of bytes, not a noisy
sample, so a growth beyond a threshold (default 10%) and beyond MEMORY_FLOOR_BYTES is `more` memory, a
regression: a kernel that starts keeping an N x N tensor fails at the lengths that matter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..case import CASE_FIELDS
from ..reporting.data import fmt_bytes
from ..results.files import ResultsFormatError, cpu_machine, load, read, with_explicit_shape
from ..run.completeness import shortfall_notes
from ..run.grid_scope import GridScope

KEY = ("impl", *CASE_FIELDS)
P_VALUE = 0.01
RAN = ("ok", "mismatch")
MEMORY_FLOOR_BYTES = 64 * 1024  # smaller changes are scalars, allocator rounding and small workspaces


class CompareInputError(ValueError):
    """Inputs that cannot be compared; the message says why."""


# --- reading ----------------------------------------------------------------------------------


def _read_pytest_benchmark(path: Path, data: dict) -> pd.DataFrame:
    machine_info = data.get("machine_info") or {}
    gpu = machine_info.get("gpu")
    # benchmarks/conftest.py writes "cpu" there without a GPU; pytest-benchmark itself names the CPU
    cpu = (machine_info.get("cpu") or {}).get("brand_raw") if isinstance(machine_info.get("cpu"), dict) else None
    threads = (machine_info.get("attnbench") or {}).get("cpu_threads")
    machine = gpu if gpu and gpu != "cpu" else (cpu_machine(cpu, threads) if cpu else None)  # as attnbench's own files
    rows = []
    for bench in data.get("benchmarks", []):
        info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
        info.setdefault("kv_heads", None)  # written before grouped-query attention existed
        info.setdefault("q_len", None)  # written before query lengths existed
        if not all(key in info for key in KEY):
            raise CompareInputError(f"{path}: benchmark {bench.get('name')!r} lacks the attnbench case in extra_info")
        raw = [t * 1e3 for t in stats.get("data") or []]
        rows.append(
            {
                **{key: info[key] for key in KEY},
                "status": info.get("status", "ok"),
                "accuracy_ok": info.get("accuracy_ok"),
                "time_ms": stats.get("median", math.nan) * 1e3,
                "time_iqr_ms": stats.get("iqr", math.nan) * 1e3,
                "times_ms": raw,
                "throttled": None,
                "gpu": gpu,
                "machine": machine,
                "peak_mem_bytes": info.get("peak_mem_bytes"),
            }
        )
    return pd.DataFrame(rows)


def read_side(paths: list[Path]) -> tuple[pd.DataFrame, GridScope]:
    """attnbench JSON Lines or pytest-benchmark JSON, one or many files: rows keyed by KEY, and the cases
    their runs were asked for."""
    frames, scope = [], GridScope([])
    for path in paths:
        if not path.is_file():
            raise CompareInputError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "benchmarks" in whole:
            frames.append(_read_pytest_benchmark(path, whole))
            scope = scope.merged(GridScope.unknown())
            continue
        try:
            frames.append(load(path))
            scope = scope.merged(GridScope.from_headers(read(path)[0]))
        except ResultsFormatError as error:
            raise CompareInputError(str(error)) from None
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise CompareInputError(f"{', '.join(map(str, paths))}: no result rows")
    frame["machine"] = frame["machine"].fillna("unknown machine")
    return with_explicit_shape(frame), scope


def _merge_repeats(frame: pd.DataFrame) -> pd.DataFrame:
    """Several runs of one case (e.g. alternating base/candidate runs) pool their raw samples."""

    def pool(group: pd.DataFrame) -> pd.Series:
        ran = group[group.status.isin(RAN)]
        source = ran if not ran.empty else group
        times = [t for ts in source.times_ms if isinstance(ts, list) for t in ts]
        peaks = source.peak_mem_bytes.dropna() if "peak_mem_bytes" in source else pd.Series(dtype=float)
        last = source.iloc[-1]
        return pd.Series(
            {
                "status": last.status,
                "accuracy_ok": last.accuracy_ok,
                "reason": last.get("reason"),
                "time_ms": pd.Series(times).median() if times else last.time_ms,
                "iqr_ms": _iqr(times) if times else last.get("time_iqr_ms"),
                "times_ms": times,
                "throttled": bool(source.throttled.eq(True).any()),
                "cpu_contended": _flagged(source, "cpu_contended"),
                "machine": last.machine,
                "peak_mem_bytes": float(peaks.median()) if len(peaks) else None,
            }
        )

    return frame.groupby(list(KEY), dropna=False).apply(pool, include_groups=False).reset_index()


def _flagged(rows: pd.DataFrame, column: str) -> bool:
    """Whether any row holds True in `column`; files written before the column existed lack it."""
    return bool(rows[column].eq(True).any()) if column in rows else False


def _iqr(values: list[float]) -> float:
    series = pd.Series(values)
    return float(series.quantile(0.75) - series.quantile(0.25))


# --- statistics -------------------------------------------------------------------------------


def mann_whitney_greater(a: list[float], b: list[float]) -> float:
    """One-sided p-value that samples `a` tend to be larger than `b` (normal approximation, ties corrected)."""
    n, m = len(a), len(b)
    if n < 3 or m < 3:
        return 1.0
    ranks = pd.Series(list(a) + list(b)).rank().tolist()
    u = sum(ranks[:n]) - n * (n + 1) / 2
    counts = pd.Series(list(a) + list(b)).value_counts()
    ties = float(((counts**3) - counts).sum())
    total = n + m
    variance = n * m / 12 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n * m / 2 - 0.5) / math.sqrt(variance)  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass
class RowVerdict:
    key: dict
    verdict: str  # one of ORDER
    ratio: float | None = None
    detail: str = ""
    memory: str | None = None  # one of MEMORY_ORDER where both runs measured peak memory and it was compared
    memory_ratio: float | None = None
    memory_detail: str = ""


def timing_verdict(base: pd.Series, current: pd.Series, threshold: float) -> tuple[str, float | None, str]:
    ratio = current.time_ms / base.time_ms if base.time_ms and not math.isnan(base.time_ms) else None
    if ratio is None or math.isnan(ratio):
        return "ambiguous", None, "no median time to compare"
    change = ratio - 1
    if abs(change) <= threshold:
        return "same", ratio, f"{change:+.1%} within ±{threshold:.0%}"
    if base.throttled or current.throttled:
        return "ambiguous", ratio, f"{change:+.1%}, but the GPU throttled during this case"
    shared = [side for side, row in (("baseline", base), ("current", current)) if row.get("cpu_contended")]
    if shared:
        return (
            "ambiguous",
            ratio,
            (
                f"{change:+.1%}, but the CPU was shared with other processes while the "
                f"{' and '.join(shared)} run{'s' * (len(shared) > 1)} measured this case"
            ),
        )
    noise = sum(_relative(row) for row in (base, current))
    if math.isnan(noise) or abs(change) <= noise:
        return "ambiguous", ratio, f"{change:+.1%} does not clear the runs' noise (relative IQRs {noise:.1%})"
    slower = change > 0
    p = (
        mann_whitney_greater(current.times_ms, base.times_ms)
        if slower
        else mann_whitney_greater(base.times_ms, current.times_ms)
    )
    if not (current.times_ms and base.times_ms):
        return "ambiguous", ratio, f"{change:+.1%}, but no raw samples for a rank test"
    if p >= P_VALUE:
        return "ambiguous", ratio, f"{change:+.1%}, but the rank test is not significant (p={p:.2g})"
    return ("slower" if slower else "faster"), ratio, f"{change:+.1%}, noise {noise:.1%}, p={p:.2g}"


def memory_verdict(base: pd.Series, current: pd.Series, threshold: float) -> tuple[str, float | None, str] | None:
    """`more`, `less` or `same` peak memory; None where either run did not measure it."""
    before, after = base.get("peak_mem_bytes"), current.get("peak_mem_bytes")
    if before is None or after is None or pd.isna(before) or pd.isna(after):
        return None
    ratio = after / before if before > 0 else None
    change = f"{fmt_bytes(before)} -> {fmt_bytes(after)}" + (f" ({ratio - 1:+.1%})" if ratio is not None else "")
    allowed = max(threshold * before, MEMORY_FLOOR_BYTES)
    if abs(after - before) <= allowed:
        return "same", ratio, f"peak memory {change}, within ±{threshold:.0%} (or {fmt_bytes(MEMORY_FLOOR_BYTES)})"
    return ("more" if after > before else "less"), ratio, f"peak memory {change}"


def _relative(row: pd.Series) -> float:
    return float(row.iqr_ms) / float(row.time_ms) if row.time_ms else math.nan


def status_verdict(base: pd.Series | None, current: pd.Series | None, asked_for: bool = True) -> tuple[str, str] | None:
    """A regression (or improvement) of status, or None when both ran alike. `asked_for`: whether the
    current run's grid includes the case."""
    if current is None and not asked_for:
        return "not-run", f"not in the current run's grid (was {base.status})"
    if current is None:  # a case that ran must not vanish; one that could not run may leave the grid
        return (
            ("regression", f"disappeared (was {base.status})")
            if base.status in RAN
            else ("dropped", f"not in the current results (was {base.status}: {base.reason})")
        )
    if base is None:
        return "new", f"new case ({current.status})"
    if base.status in RAN and current.status not in RAN:
        return "regression", f"{base.status} -> {current.status}: {current.reason}"
    if base.status == "ok" and base.accuracy_ok is not False and current.status == "mismatch":
        return "regression", f"accuracy passed -> mismatch: {current.reason}"
    if base.status not in RAN and current.status in RAN:
        return "improvement", f"{base.status} -> {current.status}"
    if base.status == "mismatch" and current.status == "ok":
        return "improvement", "mismatch -> ok"
    return None


@dataclass
class Comparison:
    rows: list[RowVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what differed between the runs besides the code

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r.verdict == verdict)

    def count_memory(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r.memory == verdict)

    @property
    def regressed(self) -> bool:
        return any(r.verdict in ("slower", "regression") or r.memory == "more" for r in self.rows)


def _recorded(frame: pd.DataFrame, column: str) -> list[str]:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=object)
    return sorted({str(value) or "default" for value in values})


def conditions_notes(base_frame: pd.DataFrame, current_frame: pd.DataFrame) -> list[str]:
    """What differed between the two sides besides the code (software; settings that change speed; the timing
    policy, which sets what a median is taken over), and settings under which neither side's timings mean what they
    claim: a verdict then may be theirs, not the code's."""
    notes = []
    for column, what in (("software", "software"), ("settings", "speed settings"), ("timing", "timing policy")):
        before, after = _recorded(base_frame, column), _recorded(current_frame, column)
        if before and after and before != after:
            notes.append(f"the runs differ in {what}: baseline {'; '.join(before)}, current {'; '.join(after)}")
    for side, frame in (("baseline", base_frame), ("current", current_frame)):
        distorting = _recorded(frame, "distorted_by")
        if distorting:
            notes.append(
                f"the {side} ran with {'; '.join(distorting)} set: its timings include costs a program does "
                "not pay (suite/speed_settings.py says which)"
            )
    return notes


READING_ORDER = (
    "impl",
    "device",
    "dtype",
    "head_dim",
    "heads",
    "kv_heads",
    "causal",
    "mode",
    "q_len",
    "seq_len",
    "batch",
)


def _reading_order(key: tuple) -> tuple:
    """Each implementation, each shape, its lengths in order (the key's own order starts with the batch, and as
    text 128 came before 64)."""
    named = dict(zip(KEY, key))
    return tuple(named[field] for field in READING_ORDER)


_SHOWN_VALUES = 8  # values listed per side and field; a long list of lengths says no more than its first few


def _values(frame: pd.DataFrame, column: str) -> str:
    values = sorted(set(frame[column]), key=lambda value: (str(type(value)), value))
    shown = ", ".join(str(value) for value in values[:_SHOWN_VALUES])
    return shown + (f" and {len(values) - _SHOWN_VALUES} more" if len(values) > _SHOWN_VALUES else "")


def _grid_difference(base: pd.DataFrame, current: pd.DataFrame) -> str:
    """The fields of the key whose values differ between the sides, with each side's values: what kept every
    case of one side out of the other."""
    differing = [column for column in READING_ORDER if set(base[column]) != set(current[column])]
    if not differing:
        return "every field's values occur on both sides, but in no combination both have"
    return "; ".join(
        f"{column}: {_values(base, column)} (baseline) vs {_values(current, column)} (current)" for column in differing
    )


def compare(
    base_frame: pd.DataFrame,
    current_frame: pd.DataFrame,
    threshold: float = 0.05,
    current_scope: GridScope | None = None,
    memory_threshold: float | None = 0.10,
) -> Comparison:
    """`memory_threshold` None leaves peak memory out of the verdicts."""
    base_machines, current_machines = set(base_frame.machine), set(current_frame.machine)
    if base_machines != current_machines:
        raise CompareInputError(
            f"different machines: baseline ran on {sorted(base_machines)}, current on "
            f"{sorted(current_machines)}; timings from different GPU (or CPU) models are not "
            "comparable"
        )
    base, current = _merge_repeats(base_frame), _merge_repeats(current_frame)
    keyed_base = {tuple(r[k] for k in KEY): r for _, r in base.iterrows()}
    keyed_current = {tuple(r[k] for k in KEY): r for _, r in current.iterrows()}
    if not set(keyed_base) & set(keyed_current):
        raise CompareInputError(
            f"the two results have no (implementation, case) in common: {_grid_difference(base, current)}"
        )
    scope = current_scope or GridScope.unknown()
    result = Comparison(notes=conditions_notes(base_frame, current_frame))
    for key in sorted(set(keyed_base) | set(keyed_current), key=_reading_order):
        b, c = keyed_base.get(key), keyed_current.get(key)
        names = dict(zip(KEY, key))
        changed = status_verdict(b, c, scope.asked_for(names))
        if changed:
            result.rows.append(RowVerdict(names, changed[0], detail=changed[1]))
        elif b.status in RAN and c.status in RAN:
            verdict, ratio, detail = timing_verdict(b, c, threshold)
            row = RowVerdict(names, verdict, ratio, detail)
            memory = memory_verdict(b, c, memory_threshold) if memory_threshold is not None else None
            if memory:
                row.memory, row.memory_ratio, row.memory_detail = memory
            result.rows.append(row)
        else:
            result.rows.append(RowVerdict(names, "same", detail=f"{c.status} in both"))
    return result


def paired(
    base: pd.DataFrame, current: pd.DataFrame, scope: GridScope, base_impl: str, current_impl: str
) -> tuple[pd.DataFrame, pd.DataFrame, GridScope]:
    """One implementation against another, case by case: the baseline side keeps `base_impl`'s rows, the current
    side `current_impl`'s, both under one label (`mine vs sdpa-flash`), so each case's verdict says whether
    `current_impl` is slower, faster or fails where `base_impl` runs."""
    label = f"{current_impl} vs {base_impl}"
    sides = []
    for side, frame, impl in (("baseline", base, base_impl), ("current", current, current_impl)):
        chosen = frame[frame.impl == impl]
        if chosen.empty:
            raise CompareInputError(
                f"the {side} results have no row of {impl!r} "
                f"(they have: {', '.join(sorted(frame.impl.dropna().unique()))})"
            )
        sides.append(chosen.assign(impl=label))
    return sides[0], sides[1], scope.renamed(current_impl, label)


def only(base: pd.DataFrame, current: pd.DataFrame, patterns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sides' rows of the implementations `patterns` name (labels or names, shell wildcards)."""
    from ..run.config import label_matches, unmatched_pattern

    present = sorted(set(base.impl.dropna()) | set(current.impl.dropna()))
    typo = unmatched_pattern(patterns, present)
    if typo is not None:
        raise CompareInputError(
            f"--impl: {typo!r} matches no implementation of either side (they have: {', '.join(present)})"
        )
    return tuple(frame[frame.impl.map(lambda label: label_matches(label, patterns))] for frame in (base, current))


def run(
    base_paths: list[Path],
    current_paths: list[Path],
    threshold: float,
    fmt: str,
    memory_threshold: float | None = 0.10,
    chart: Path | None = None,
    impls: tuple[str, str] | None = None,
    patterns: list[str] | None = None,
) -> tuple[str, int]:
    """The comparison in `fmt`, and the exit status; with `chart`, also the ratio chart (compare_chart.py). With
    `impls` (baseline implementation, current implementation), those two implementations' rows are compared;
    with `patterns`, only the implementations they name."""
    from .views import format_json, format_markdown, format_text

    (base, _), (current, scope) = read_side(base_paths), read_side(current_paths)
    if patterns is not None:
        base, current = only(base, current, patterns)
    if impls is not None:
        base, current, scope = paired(base, current, scope, *impls)
    result = compare(base, current, threshold, scope, memory_threshold)
    result.notes += shortfall_notes(base_paths, "baseline") + shortfall_notes(current_paths, "current")
    if chart is not None:
        from ..reporting.charts import save_to
        from .chart import ratio_chart

        save_to(ratio_chart(result, threshold), chart)
    text = {"text": format_text, "md": format_markdown, "json": format_json}[fmt](result)
    return text, 1 if result.regressed else 0
