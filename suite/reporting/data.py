"""Shaping result rows for reports: groups of comparable cases, stable colours, formatting."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

import implementations

# Cases that differ only in seq_len (and the batch that goes with it) are drawn and tabulated together;
# `batching` (how the batch goes with it) is set only where the results mix several. `queries` keeps decoding
# cases (a fixed number of queries against seq_len keys) apart from those with as many queries as keys, and
# `packing` cases of packed documents apart from each other's packings and from one document per sequence.
GROUP_KEYS = (
    "device",
    "gpu",
    "batching",
    "queries",
    "packing",
    "heads",
    "kv_heads",
    "head_dim",
    "dtype",
    "causal",
    "mode",
)
MEASURED = ("ok", "mismatch")


class ReportInputError(ValueError):
    """Results that cannot make a report (empty, malformed); the message says which and why."""


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        raise ReportInputError("the results hold no result rows")
    frame = frame.copy()
    # the model that timed the rows names their groups: the GPU's, or for CPU runs the CPU's, so two CPU
    # models' rows are never drawn as one series ("cpu" for files that do not record it)
    machine = frame["machine"] if "machine" in frame else pd.Series(None, index=frame.index, dtype=object)
    frame["gpu"] = frame["gpu"].fillna(machine).fillna("cpu")
    # Several batchings (files of two presets, say) are kept apart; one needs no word in the titles.
    batchings = frame["batching"].fillna("batch as recorded") if "batching" in frame else None
    frame["batching"] = batchings if batchings is not None and batchings.nunique() > 1 else None
    frame["queries"] = (
        [query_words(q_len, seq_len) for q_len, seq_len in zip(frame["q_len"], frame["seq_len"])]
        if "q_len" in frame
        else None
    )
    frame["packing"] = [packing_words(docs) for docs in frame["docs"]] if "docs" in frame else None
    for column in (
        "time_ms",
        "time_iqr_ms",
        "tflops",
        "gbytes_per_s",
        "peak_mem_bytes",
        "rel_rms_err",
        "softmax_rel_rms_err",
        "softmax_local_rel_rms_err",
    ):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else float("nan")
    return frame


def groups(frame: pd.DataFrame) -> Iterable[tuple[dict, pd.DataFrame]]:
    for key, part in frame.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        yield dict(zip(GROUP_KEYS, key)), part


def group_title(group: dict) -> str:
    """E.g. `NVIDIA H100 · H16 D128 · bfloat16 · causal · fwd` (each part only when the group fixes it; the
    head dim alone, `D128`, in a group of several head counts)."""
    grouped = f" KV{group['kv_heads']}" if group.get("kv_heads") not in (None, group.get("heads")) else ""
    shape = (
        [f"H{group['heads']}{grouped} D{group['head_dim']}"]
        if "heads" in group
        else [f"D{group['head_dim']}"]
        if "head_dim" in group
        else []
    )
    mask = [] if "causal" not in group else ["causal" if group["causal"] else "dense"]
    mode = [group["mode"]] if "mode" in group else []
    return " · ".join([str(group["gpu"]), *scope_words(group), *shape, group["dtype"], *mask, *mode])


def query_words(q_len, seq_len) -> str | None:
    """`1 query`, `16 queries` for a decoding case (fewer queries than keys); None for as many as keys."""
    if pd.isna(q_len) or int(q_len) == int(seq_len):
        return None
    return f"{int(q_len)} quer{'y' if int(q_len) == 1 else 'ies'}"


def packing_words(docs) -> str | None:
    """`docs uniform:128-2048` for a case of packed documents; None for one document per sequence."""
    if not isinstance(docs, str) or docs == "fixed":
        return None
    return f"docs {docs}"


def scope_words(group: dict) -> list[str]:
    """The group's batching, where the results mix several, its queries, for a decoding group, and its packing, for
    packed documents (else nothing): for titles and file names."""
    return [group[key] for key in ("batching", "queries", "packing") if isinstance(group.get(key), str)]


def impl_order(labels: Iterable[str]) -> list[str]:
    """Registry order, then options, so every chart lists (and colours) implementations alike."""
    registry = implementations.names()
    rank = lambda label: (  # noqa: E731
        registry.index(label.split(":")[0]) if label.split(":")[0] in registry else len(registry),
        label,
    )
    return sorted(set(labels), key=rank)


def colours(labels: Iterable[str]) -> dict[str, tuple]:
    import matplotlib

    palette = [
        *matplotlib.colormaps["tab10"].colors,
        *matplotlib.colormaps["Dark2"].colors,
        *matplotlib.colormaps["Set1"].colors,
    ]
    return {label: palette[i % len(palette)] for i, label in enumerate(impl_order(labels))}


def relative_iqr(row: pd.Series) -> float:
    """A row's interquartile range over its median (0 where it has none): its measurement's spread."""
    iqr = pd.to_numeric(row.get("time_iqr_ms"), errors="coerce")
    return float(iqr / row.time_ms) if pd.notna(iqr) and row.time_ms > 0 else 0.0


def geometric_mean(ratios: list[float]) -> float | None:
    """Of ratios (speed-ups, time or memory ratios), where 2× and 0.5× cancel; None for none."""
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None


def fmt_bytes(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def fmt_num(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits, without exponent notation for large values (1980, not 1.98e+03)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 10**digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def fmt_length(length: int) -> str:
    """1024 -> 1K, 32768 -> 32K; lengths that are not whole multiples of 1024 stay as they are."""
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def fmt_duration(ms: float) -> str:
    return f"{fmt_num(ms / 1e3)} s" if ms >= 1e3 else f"{fmt_num(ms)} ms"


def fmt_wall_time(seconds: float) -> str:
    """A stretch of a run: `42 s`, `12.5 min`."""
    return f"{fmt_num(seconds / 60)} min" if seconds >= 60 else f"{fmt_num(seconds)} s"
