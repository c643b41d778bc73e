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
which the GPU throttled in either run are `ambiguous`: their times measure the clock, not the code.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .case import CASE_FIELDS
from .grid_scope import GridScope
from .reporting.data import fmt_bytes, geometric_mean
from .results import ResultsFormatError, cpu_machine, load, read, with_explicit_kv_heads

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
        if not all(key in info for key in KEY):
            raise CompareInputError(f"{path}: benchmark {bench.get('name')!r} lacks the attnbench case in extra_info")
        raw = [t * 1e3 for t in stats.get("data") or []]
        rows.append({**{key: info[key] for key in KEY}, "status": info.get("status", "ok"),
                     "accuracy_ok": info.get("accuracy_ok"), "time_ms": stats.get("median", math.nan) * 1e3,
                     "time_iqr_ms": stats.get("iqr", math.nan) * 1e3, "times_ms": raw, "throttled": None, "gpu": gpu,
                     "machine": machine, "peak_mem_bytes": info.get("peak_mem_bytes")})
    return pd.DataFrame(rows)


def read_side(paths: list[Path]) -> tuple[pd.DataFrame, GridScope]:
    """attnbench JSON Lines or pytest-benchmark JSON, one or many files: rows keyed by KEY, and the cases
    their runs were asked for."""
    frames, scope = [], GridScope([])
    for path in paths:
        if not path.is_file():
            raise CompareInputError(f"{path}: no such file")
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
    return with_explicit_kv_heads(frame), scope


def _merge_repeats(frame: pd.DataFrame) -> pd.DataFrame:
    """Several runs of one case (e.g. alternating base/candidate runs) pool their raw samples."""
    def pool(group: pd.DataFrame) -> pd.Series:
        ran = group[group.status.isin(RAN)]
        source = ran if not ran.empty else group
        times = [t for ts in source.times_ms if isinstance(ts, list) for t in ts]
        peaks = source.peak_mem_bytes.dropna() if "peak_mem_bytes" in source else pd.Series(dtype=float)
        last = source.iloc[-1]
        return pd.Series({
            "status": last.status, "accuracy_ok": last.accuracy_ok, "reason": last.get("reason"),
            "time_ms": pd.Series(times).median() if times else last.time_ms,
            "iqr_ms": _iqr(times) if times else last.get("time_iqr_ms"),
            "times_ms": times, "throttled": bool(source.throttled.fillna(False).astype(bool).any()),
            "machine": last.machine, "peak_mem_bytes": float(peaks.median()) if len(peaks) else None,
        })
    return frame.groupby(list(KEY), dropna=False).apply(pool, include_groups=False).reset_index()


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
    noise = sum(_relative(row) for row in (base, current))
    if math.isnan(noise) or abs(change) <= noise:
        return "ambiguous", ratio, f"{change:+.1%} does not clear the runs' noise (relative IQRs {noise:.1%})"
    slower = change > 0
    p = mann_whitney_greater(current.times_ms, base.times_ms) if slower else mann_whitney_greater(base.times_ms, current.times_ms)
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
        return ("regression", f"disappeared (was {base.status})") if base.status in RAN else \
            ("dropped", f"not in the current results (was {base.status}: {base.reason})")
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

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r.verdict == verdict)

    def count_memory(self, verdict: str) -> int:
        return sum(1 for r in self.rows if r.memory == verdict)

    @property
    def regressed(self) -> bool:
        return any(r.verdict in ("slower", "regression") or r.memory == "more" for r in self.rows)


def compare(base_frame: pd.DataFrame, current_frame: pd.DataFrame, threshold: float = 0.05,
            current_scope: GridScope | None = None, memory_threshold: float | None = 0.10) -> Comparison:
    """`memory_threshold` None leaves peak memory out of the verdicts."""
    base_machines, current_machines = set(base_frame.machine), set(current_frame.machine)
    if base_machines != current_machines:
        raise CompareInputError(f"different machines: baseline ran on {sorted(base_machines)}, current on "
                                f"{sorted(current_machines)}; timings from different GPU (or CPU) models are not "
                                "comparable")
    base, current = _merge_repeats(base_frame), _merge_repeats(current_frame)
    keyed_base = {tuple(r[k] for k in KEY): r for _, r in base.iterrows()}
    keyed_current = {tuple(r[k] for k in KEY): r for _, r in current.iterrows()}
    if not set(keyed_base) & set(keyed_current):
        raise CompareInputError("the two results have no (implementation, case) in common: different grids")
    scope = current_scope or GridScope.unknown()
    result = Comparison()
    for key in sorted(set(keyed_base) | set(keyed_current), key=str):
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


# --- output -----------------------------------------------------------------------------------

ORDER = ("regression", "slower", "ambiguous", "faster", "improvement", "new", "dropped", "same", "not-run")
MEMORY_ORDER = ("more", "less", "same")


def _label(key: dict) -> str:
    mask = "causal" if key["causal"] else "dense"
    return (f"{key['impl']} B{key['batch']} H{key['heads']} N{key['seq_len']} D{key['head_dim']} "
            f"{key['dtype']} {mask} {key['mode']}")


def _summary(result: Comparison) -> str:
    times = ", ".join(f"{result.count(v)} {v}" for v in ORDER if result.count(v))
    memory = ", ".join(f"{result.count_memory(v)} {v}" for v in MEMORY_ORDER if result.count_memory(v))
    return times + (f"; peak memory: {memory}" if memory else "")


@dataclass
class ImplementationSummary:
    """One implementation over every case both runs timed: the geometric mean of its time ratios (what a
    reader weighs first), and its verdicts."""
    impl: str
    geomean_ratio: float | None
    timed: int
    verdicts: Counter
    memory_geomean_ratio: float | None = None
    memory_verdicts: Counter = field(default_factory=Counter)


def per_implementation(result: Comparison) -> list[ImplementationSummary]:
    summaries = []
    for impl in sorted({row.key["impl"] for row in result.rows}):
        rows = [row for row in result.rows if row.key["impl"] == impl and row.verdict != "not-run"]
        if not rows:
            continue
        ratios = _usable([row.ratio for row in rows])
        memory_ratios = _usable([row.memory_ratio for row in rows if row.memory])
        summaries.append(ImplementationSummary(impl, geometric_mean(ratios), len(ratios), Counter(row.verdict for row in rows),
                                               geometric_mean(memory_ratios), Counter(row.memory for row in rows if row.memory)))
    return summaries


def _usable(ratios: list[float | None]) -> list[float]:
    return [r for r in ratios if r is not None and r > 0 and math.isfinite(r)]


def _verdict_counts(counts: Counter) -> str:
    return ", ".join(f"{counts[v]} {v}" for v in ORDER if counts[v])


def _times(ratio: float | None) -> str:
    return f"×{ratio:.3f}" if ratio is not None else "–"


def _memory_summary(summary: ImplementationSummary) -> str:
    if not summary.memory_verdicts:
        return "peak memory not compared"
    return f"peak memory {_times(summary.memory_geomean_ratio)}: " + ", ".join(
        f"{summary.memory_verdicts[v]} {v}" for v in MEMORY_ORDER if summary.memory_verdicts[v])


_DETAIL_CHARS = 200  # the text view shortens long reasons (an unsupported xformers' runs to 800); json keeps them


def _shorten(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


def format_text(result: Comparison) -> str:
    lines = [f"{'verdict':<12}{'ratio':>8}  case / detail"]
    for row in sorted(result.rows, key=lambda r: ORDER.index(r.verdict)):
        if row.verdict == "not-run":  # one line per implementation below: a narrow run leaves hundreds
            continue
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "–"
        lines.append(f"{row.verdict:<12}{ratio:>8}  {_label(row.key)}: {_shorten(row.detail)}")
    for row in [r for r in result.rows if r.memory == "more"] + [r for r in result.rows if r.memory == "less"]:
        ratio = f"{row.memory_ratio:.3f}" if row.memory_ratio is not None else "–"
        lines.append(f"{row.memory + ' memory':<12}{ratio:>8}  {_label(row.key)}: {row.memory_detail}")
    not_run = Counter(row.key["impl"] for row in result.rows if row.verdict == "not-run")
    for impl, count in sorted(not_run.items()):
        lines.append(f"{'not-run':<12}{'–':>8}  {impl}: {count} baseline case{'s' * (count != 1)} not in the current "
                     "run's grid")
    lines.append("per implementation (geometric mean of current / baseline time over the cases both timed):")
    for summary in per_implementation(result):
        lines.append(f"  {summary.impl:<28}{_times(summary.geomean_ratio):>9} over {summary.timed:>3}   "
                     f"{_verdict_counts(summary.verdicts)}; {_memory_summary(summary)}")
    lines.append(f"summary: {_summary(result)}")
    return "\n".join(lines)


def format_markdown(result: Comparison) -> str:
    bad = [(r.verdict, r.ratio, r.detail, r) for r in result.rows if r.verdict in ("regression", "slower")]
    bad += [("more memory", r.memory_ratio, r.memory_detail, r) for r in result.rows if r.memory == "more"]
    lines = ["## attnbench: " + ("**regression**" if result.regressed else "no regression"), ""]
    if bad:
        lines += ["| verdict | case | ratio | detail |", "|---|---|---|---|"]
        lines += [f"| {verdict} | `{_label(r.key)}` | {f'{ratio:.3f}' if ratio else '–'} | {detail} |"
                  for verdict, ratio, detail, r in bad]
        lines.append("")
    lines += ["| implementation | time, current / baseline (geometric mean) | cases timed in both | verdicts | peak memory |",
              "|---|---|---|---|---|"]
    lines += [f"| `{s.impl}` | {_times(s.geomean_ratio)} | {s.timed} | {_verdict_counts(s.verdicts)} | "
              f"{_memory_summary(s).removeprefix('peak memory ')} |" for s in per_implementation(result)]
    lines += ["", "| verdict | rows |", "|---|---|"]
    lines += [f"| {v} | {result.count(v)} |" for v in ORDER if result.count(v)]
    lines += [f"| {v} memory | {result.count_memory(v)} |" for v in MEMORY_ORDER if result.count_memory(v)]
    return "\n".join(lines)


def format_json(result: Comparison) -> str:
    return json.dumps({"regressed": result.regressed,
                       "counts": {v: result.count(v) for v in ORDER},
                       "memory_counts": {v: result.count_memory(v) for v in MEMORY_ORDER},
                       "implementations": [{"impl": s.impl, "geomean_ratio": s.geomean_ratio, "timed": s.timed,
                                            "verdicts": dict(s.verdicts), "memory_geomean_ratio": s.memory_geomean_ratio,
                                            "memory_verdicts": dict(s.memory_verdicts)} for s in per_implementation(result)],
                       "rows": [{**r.key, "verdict": r.verdict, "ratio": r.ratio, "detail": r.detail,
                                 "memory_verdict": r.memory, "memory_ratio": r.memory_ratio, "memory_detail": r.memory_detail}
                                for r in result.rows]}, indent=2, default=str)


def run(base_paths: list[Path], current_paths: list[Path], threshold: float, fmt: str,
        memory_threshold: float | None = 0.10) -> tuple[str, int]:
    (base, _), (current, scope) = read_side(base_paths), read_side(current_paths)
    result = compare(base, current, threshold, scope, memory_threshold)
    text = {"text": format_text, "md": format_markdown, "json": format_json}[fmt](result)
    return text, 1 if result.regressed else 0
