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


MAX_CELLS = 5000  # the table shows the first rows' cells: past a few screens a table is read in the results file


class SummaryTable:
    """The table printed after a run, folded row by row: it keeps each row's cell, not the row (a row holds every
    repeat's time), and only the first MAX_CELLS, so a run of a million rows does not grow with them."""

    def __init__(self) -> None:
        self.impls: dict[str, None] = {}
        self.by_case: dict[str, dict[str, str]] = {}
        self.cells = self.rows_not_shown = 0
        self.seen: set[str] = set()  # which notes the table needs

    def add(self, row: dict[str, Any]) -> None:
        measured = row["status"] in ("ok", "mismatch")
        for note, present in (
            ("noisy", measured and bool(row.get("noisy"))),
            ("q_len", bool(row.get("q_len"))),
            ("graph", row.get("graph_time_ms") is not None),
            ("energy", row.get("energy_j") is not None),
        ):
            if present:
                self.seen.add(note)
        if self.cells >= MAX_CELLS:
            self.rows_not_shown += 1
            return
        self.cells += 1
        self.impls.setdefault(row["impl"])
        self.by_case.setdefault(Case.from_row(row).label, {})[row["impl"]] = _cell(row)

    def render(self) -> str:
        header = ["case", *self.impls]
        body = [[label, *(cells.get(impl, "-") for impl in self.impls)] for label, cells in self.by_case.items()]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        render = lambda line: "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()  # noqa: E731
        lines = [render(header), render(["-" * w for w in widths]), *(render(line) for line in body)]
        if self.rows_not_shown:
            lines.append(f"... and {self.rows_not_shown} more rows, not shown here: they are in the results file")
        return "\n".join(lines + self._notes())

    def _notes(self) -> list[str]:
        notes = [
            "cells: median time and TFLOP/s; ! = accuracy mismatch; unsupp./oom/timeout/error: see the results file"
        ]
        if "noisy" in self.seen:
            notes.append(
                "~ = noisy: its repeats' IQR is above the policy's noisy_relative_iqr of the median; compare with care"
            )
        if "q_len" in self.seen:
            notes.append(
                "cases with fewer queries than keys (-Q): GB/s instead, the least memory traffic of the call (the "
                "whole KV cache read once, or a carried state in its place) over its time"
            )
        if "graph" in self.seen:
            notes.append("(graph ...): the median of the call replayed from a CUDA graph (--cuda-graph)")
        if "energy" in self.seen:
            notes.append("mJ: the board's energy per call, from NVML's counter (--energy)")
        return notes


def format_table(rows: list[dict[str, Any]]) -> str:
    table = SummaryTable()
    for row in rows:
        table.add(row)
    return table.render()
