"""Which exact implementation is fastest where: over the whole grid of lengths and head counts at once.

The speed-up tables compare each implementation with one baseline; a reader who has to pick a kernel
for a model's shape asks a different question: of the implementations that compute softmax attention
exactly, which one wins at my length and head count, and by how much? Approximate families are left
out (they trade accuracy for speed; the speed-up tables weigh them), and so are rows that failed their
accuracy check, since the speed of a wrong result decides nothing.

Several implementations may share the lead: those whose median lies within the two rows' summed
relative IQRs of the fastest one (the rule `compare` and the speed-up tables use for "same"), and those
that ran the same kernel as one of them (`sdpa` dispatching to cuDNN and `sdpa-cudnn`), are all named,
and the margin is over the fastest implementation outside that set.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .blocks import Table
from .data import GROUP_KEYS, fmt_length, fmt_num, group_title, impl_order, relative_iqr
from .shape_tables import SUMMARY_COLUMNS

# Rows of one table: a length and a head count; columns: mask × mode. The other keys name the table.
TABLE_KEYS = tuple(key for key in GROUP_KEYS if key not in ("heads", "kv_heads", "causal", "mode"))


@dataclass
class Lead:
    leaders: list[str]  # the fastest implementation, then those within the measurements' spread of it
    margin: float | None  # the next implementation's median over the fastest one's; None if nothing is behind
    runner_up: str | None
    contenders: int  # how many exact implementations were measured here
    kernels: list[str]  # the leaders' kernels, the fastest's first (`sdpa` and the backend it chose count once)

    def describe(self) -> str:
        """E.g. `sdpa-cudnn ≈ sdpa · 1.9× over sdpa-flash`; `naive (alone)` where nothing else ran."""
        text = " ≈ ".join(self.leaders)
        if self.contenders == 1:
            return f"{text} (alone)"
        return text if self.margin is None else f"{text} · {fmt_num(self.margin, 3)}× over {self.runner_up}"


def _chosen_backend(row: pd.Series) -> str | None:
    """The backend `sdpa` (PyTorch's own dispatch) chose in this row; None for every other implementation."""
    backend = row.get("backend")
    return backend if row.impl == "sdpa" and isinstance(backend, str) and backend else None


def _label(row: pd.Series) -> str:
    """`sdpa` names the backend PyTorch dispatched to, since that is the kernel that ran."""
    backend = _chosen_backend(row)
    return f"sdpa ({backend})" if backend else str(row.impl)


def kernel(row: pd.Series) -> str:
    """The kernel a row ran: `sdpa` dispatching to cuDNN ran `sdpa-cudnn`'s, and the two share a lead."""
    backend = _chosen_backend(row)
    return f"sdpa-{backend}" if backend else str(row.impl)


def lead(rows: pd.DataFrame) -> Lead | None:
    """The lead among one case's rows (one per implementation); None if no exact implementation ran correctly."""
    ran = rows[(rows.status == "ok") & (rows.family == "exact") & (rows.time_ms > 0)].sort_values("time_ms")
    if ran.empty:
        return None
    fastest = ran.iloc[0]
    leaders, kernels = [_label(fastest)], [kernel(fastest)]
    for _, row in ran.iloc[1:].iterrows():
        if kernel(row) in kernels or row.time_ms / fastest.time_ms - 1 <= relative_iqr(fastest) + relative_iqr(row):
            leaders.append(_label(row))
            kernels += [kernel(row)] if kernel(row) not in kernels else []
            continue
        return Lead(leaders, float(row.time_ms / fastest.time_ms), _label(row), len(ran), kernels)
    return Lead(leaders, None, None, len(ran), kernels)


def _row_name(seq_len: int, batch: int, heads: int, kv_heads: int) -> str:
    grouped = f" KV{kv_heads}" if kv_heads != heads else ""
    return f"{fmt_length(seq_len)} (B{batch}) · H{heads}{grouped}"


# A case's place in a lead grid: (seq_len, batch, heads, kv_heads) -> (mask, mode) -> Lead.
LeadGrid = dict[tuple[int, int, int, int], dict[tuple[str, str], Lead]]


def lead_grids(frame: pd.DataFrame) -> list[tuple[dict, LeadGrid, pd.DataFrame]]:
    """Per (machine, batching, head dim, dtype): the group, the lead of every case and the group's rows, where
    some case had two exact implementations to compare."""
    exact = frame[frame.family == "exact"]
    grids = []
    for key, part in exact.groupby(list(TABLE_KEYS), sort=True, dropna=False):
        grid: LeadGrid = {}
        case_keys = ["seq_len", "batch", "heads", "kv_heads", "causal", "mode"]
        for (seq_len, batch, heads, kv_heads, causal, mode), rows in part.groupby(case_keys, sort=True):
            found = lead(rows)
            if found is not None:
                column = ("causal" if causal else "dense", mode)
                grid.setdefault((int(seq_len), int(batch), int(heads), int(kv_heads)), {})[column] = found
        if any(found.contenders > 1 for row in grid.values() for found in row.values()):
            grids.append((dict(zip(TABLE_KEYS, key)), grid, part))
    return grids


def grid_columns(grid: LeadGrid) -> list[tuple[str, str]]:
    return [c for c in SUMMARY_COLUMNS if any(c in row for row in grid.values())]


def fastest_table(grid: LeadGrid) -> Table:
    """One row per (length, batch, heads), one column per mask × mode, each cell the lead there."""
    columns = grid_columns(grid)
    rows = [
        [_row_name(*name), *(grid[name][c].describe() if c in grid[name] else "" for c in columns)]
        for name in sorted(grid)
    ]
    return Table(["length (batch) · heads", *(" ".join(c) for c in columns)], rows)


def fastest_tables(frame: pd.DataFrame) -> list[tuple[str, Table]]:
    """Per (machine, batching, head dim, dtype), titled: the table of leads. Groups where no case had two exact
    implementations to compare are left out."""
    return [(group_title(group), fastest_table(grid)) for group, grid, _ in lead_grids(frame)]


def win_counts(frame: pd.DataFrame) -> dict[str, int]:
    """How many compared cases each kernel led alone (a tie between two kernels counts for neither): a
    one-line summary above the tables."""
    counts: dict[str, int] = {}
    for _, grid, _ in lead_grids(frame):
        for found in (found for by_column in grid.values() for found in by_column.values()):
            if found.contenders > 1 and len(found.kernels) == 1:
                counts[found.kernels[0]] = counts.get(found.kernels[0], 0) + 1
    order = impl_order(counts)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], order.index(item[0]))))
