"""The compact table printed after a run: one row per case, one column per implementation."""

from __future__ import annotations

from typing import Any

from ..case import Case

_SHORT = {"unsupported": "unsupp.", "mismatch": "MISMATCH"}


def _cell(row: dict[str, Any]) -> str:
    if row["status"] in ("ok", "mismatch") and row.get("time_ms") is not None:
        text = f"{row['time_ms']:.3g} ms"
        if row.get("q_len") and row.get("gbytes_per_s") is not None:  # decoding is bound by reading the cache
            text += f" {row['gbytes_per_s']:.3g} GB/s"
        elif row.get("tflops") is not None:
            text += f" {row['tflops']:.3g} TF/s"
        if row.get("graph_time_ms") is not None:
            text += f" (graph {row['graph_time_ms']:.3g} ms)"
        if row.get("energy_j") is not None:
            text += f" {row['energy_j'] * 1e3:.3g} mJ"
        if row.get("noisy"):
            text += " ~"
        return text + (" !" if row["status"] == "mismatch" else "")
    return _SHORT.get(row["status"], row["status"])


def format_table(rows: list[dict[str, Any]]) -> str:
    impls = list(dict.fromkeys(row["impl"] for row in rows))
    by_case: dict[str, dict[str, str]] = {}
    for row in rows:
        label = Case.from_row(row).label
        by_case.setdefault(label, {})[row["impl"]] = _cell(row)
    header = ["case", *impls]
    body = [[label, *(cells.get(impl, "-") for impl in impls)] for label, cells in by_case.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    render = lambda line: "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()  # noqa: E731
    lines = [render(header), render(["-" * w for w in widths]), *(render(line) for line in body)]
    lines.append("cells: median time and TFLOP/s; ! = accuracy mismatch; unsupp./oom/error: see the results file")
    if any(row.get("noisy") and row["status"] in ("ok", "mismatch") for row in rows):
        lines.append(
            "~ = noisy: its repeats' IQR is above the policy's noisy_relative_iqr of the median; compare with care"
        )
    if any(row.get("q_len") for row in rows):
        lines.append(
            "cases with fewer queries than keys (-Q): GB/s instead, the least memory traffic of the call (the "
            "whole KV cache read once, or a carried state in its place) over its time"
        )
    if any(row.get("graph_time_ms") is not None for row in rows):
        lines.append("(graph ...): the median of the call replayed from a CUDA graph (--cuda-graph)")
    if any(row.get("energy_j") is not None for row in rows):
        lines.append("mJ: the board's energy per call, from NVML's counter (--energy)")
    return "\n".join(lines)
