"""How `attnbench compare` shows a comparison: text for a terminal, Markdown for a pull-request comment,
JSON for a program; each with a summary per implementation (geometric means of its ratios, its verdicts)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

from ..reporting.data import geometric_mean
from .regressions import Comparison, RowVerdict

ORDER = ("regression", "slower", "ambiguous", "faster", "improvement", "new", "dropped", "same", "not-run")
MEMORY_ORDER = ("more", "less", "same")


def _label(key: dict) -> str:
    """`sdpa B1 H32 KV8 N8192 Q1 D128 bfloat16 causal fwd`: KV and Q only where they differ from H and N."""
    mask = "causal" if key["causal"] else "dense"
    grouped = f" KV{key['kv_heads']}" if key.get("kv_heads") not in (None, key["heads"]) else ""
    queries = f" Q{key['q_len']}" if key.get("q_len") not in (None, key["seq_len"]) else ""
    return (
        f"{key['impl']} B{key['batch']} H{key['heads']}{grouped} N{key['seq_len']}{queries} D{key['head_dim']} "
        f"{key['dtype']} {mask} {key['mode']}"
    )


def _summary(result: Comparison) -> str:
    times = ", ".join(f"{result.count(v)} {v}" for v in ORDER if result.count(v))
    memory = ", ".join(f"{result.count_memory(v)} {v}" for v in MEMORY_ORDER if result.count_memory(v))
    return times + (f"; peak memory: {memory}" if memory else "")


_GROWTHS_LISTED = 5  # cases named in the verdict line; the `more memory` lines name every one


def memory_growth(row: RowVerdict) -> str:
    """A case whose peak memory grew: `sdpa B1 H2 N32 ... (8.0 MiB -> 12.0 MiB (+50.0%))`."""
    return f"{_label(row.key)} ({row.memory_detail.removeprefix('peak memory ')})"


def verdict_line(result: Comparison) -> str:
    """Whether the comparison regressed and by what: failed or vanished cases, slower ones, more peak memory
    (its cases named with their growth), so an exit status set by memory alone does not read as a slowdown."""
    if not result.regressed:
        return "no regression"
    causes = [f"{result.count(v)} {v}" for v in ("regression", "slower") if result.count(v)]
    grown = [row for row in result.rows if row.memory == "more"]
    if grown:
        listed = "; ".join(memory_growth(row) for row in grown[:_GROWTHS_LISTED])
        more = f"; and {len(grown) - _GROWTHS_LISTED} more" if len(grown) > _GROWTHS_LISTED else ""
        causes.append(f"peak memory grew in {len(grown)} case{'s' * (len(grown) != 1)}: {listed}{more}")
    if len(causes) == 1 and grown:
        return f"regressed by peak memory alone (no case slower or failing): {causes[0]}"
    return "regressed: " + "; ".join(causes)


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
        summaries.append(
            ImplementationSummary(
                impl,
                geometric_mean(ratios),
                len(ratios),
                Counter(row.verdict for row in rows),
                geometric_mean(memory_ratios),
                Counter(row.memory for row in rows if row.memory),
            )
        )
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
        f"{summary.memory_verdicts[v]} {v}" for v in MEMORY_ORDER if summary.memory_verdicts[v]
    )


_DETAIL_CHARS = 200  # the text view shortens long reasons (an unsupported xformers' runs to 800); json keeps them


def _shorten(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def format_text(result: Comparison) -> str:
    lines = [f"note: {note}" for note in result.notes]
    lines.append(f"{'verdict':<12}{'ratio':>8}  case / detail")
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
        lines.append(
            f"{'not-run':<12}{'–':>8}  {impl}: {count} baseline case{'s' * (count != 1)} not in the current run's grid"
        )
    lines.append("per implementation (geometric mean of current / baseline time over the cases both timed):")
    for summary in per_implementation(result):
        lines.append(
            f"  {summary.impl:<28}{_times(summary.geomean_ratio):>9} over {summary.timed:>3}   "
            f"{_verdict_counts(summary.verdicts)}; {_memory_summary(summary)}"
        )
    lines.append(f"summary: {_summary(result)}")
    lines.append(f"verdict: {verdict_line(result)}")
    return "\n".join(lines)


def format_markdown(result: Comparison) -> str:
    bad = [(r.verdict, r.ratio, r.detail, r) for r in result.rows if r.verdict in ("regression", "slower")]
    bad += [("more memory", r.memory_ratio, r.memory_detail, r) for r in result.rows if r.memory == "more"]
    lines = ["## attnbench: " + ("**regression**" if result.regressed else "no regression"), ""]
    lines += [verdict_line(result), ""] if result.regressed else []
    lines += [f"> note: {note}" for note in result.notes] + ([""] if result.notes else [])
    if bad:
        lines += ["| verdict | case | ratio | detail |", "|---|---|---|---|"]
        lines += [
            f"| {verdict} | `{_label(r.key)}` | {f'{ratio:.3f}' if ratio else '–'} | {detail} |"
            for verdict, ratio, detail, r in bad
        ]
        lines.append("")
    lines += [
        "| implementation | time, current / baseline (geometric mean) | cases timed in both | verdicts | peak memory |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{s.impl}` | {_times(s.geomean_ratio)} | {s.timed} | {_verdict_counts(s.verdicts)} | "
        f"{_memory_summary(s).removeprefix('peak memory ')} |"
        for s in per_implementation(result)
    ]
    lines += ["", "| verdict | rows |", "|---|---|"]
    lines += [f"| {v} | {result.count(v)} |" for v in ORDER if result.count(v)]
    lines += [f"| {v} memory | {result.count_memory(v)} |" for v in MEMORY_ORDER if result.count_memory(v)]
    return "\n".join(lines)


def format_json(result: Comparison) -> str:
    return json.dumps(
        {
            "regressed": result.regressed,
            "verdict": verdict_line(result),
            "notes": result.notes,
            "counts": {v: result.count(v) for v in ORDER},
            "memory_counts": {v: result.count_memory(v) for v in MEMORY_ORDER},
            "implementations": [
                {
                    "impl": s.impl,
                    "geomean_ratio": s.geomean_ratio,
                    "timed": s.timed,
                    "verdicts": dict(s.verdicts),
                    "memory_geomean_ratio": s.memory_geomean_ratio,
                    "memory_verdicts": dict(s.memory_verdicts),
                }
                for s in per_implementation(result)
            ],
            "rows": [
                {
                    **r.key,
                    "verdict": r.verdict,
                    "ratio": r.ratio,
                    "detail": r.detail,
                    "memory_verdict": r.memory,
                    "memory_ratio": r.memory_ratio,
                    "memory_detail": r.memory_detail,
                }
                for r in result.rows
            ],
        },
        indent=2,
        default=str,
    )
