"""Which cases a run was asked to measure, from the grid its results-file header records.

`compare` needs it to tell a case that vanished from a run (a regression: the run crashed, or an
implementation stopped producing a row) from one the run was never asked for (a narrower grid, e.g.
`--impl mykernel` against a full baseline).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import UsageError, build_impl


def _label(spec: str) -> str:
    """The row label an `--impl` spec produces (`sparse-window:window=256` -> `sparse-window`)."""
    try:
        return build_impl("--impl", spec).label
    except UsageError:  # an implementation this version no longer has: its rows carry the spec as written
        return spec


@dataclass(frozen=True)
class RunGrid:
    """One run header's grid: the cartesian product of its lists, as suite.case.Grid expands it."""

    impls: frozenset[str]
    grid: dict[str, Any]

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> RunGrid | None:
        grid = header.get("grid")
        if not isinstance(grid, dict) or not grid.get("impls"):
            return None
        return cls(frozenset(_label(spec) for spec in grid["impls"]), grid)

    def covers(self, key: dict[str, Any]) -> bool:
        grid = self.grid
        if key["impl"] not in self.impls:
            return False
        for field in ("seq_len", "heads", "head_dim", "dtype", "causal", "mode"):
            if key[field] not in grid.get(field, ()):
                return False
        key_value_heads = {kv or key["heads"] for kv in grid.get("kv_heads") or [None]}
        if key["kv_heads"] not in key_value_heads:
            return False
        query_lens = {q or key["seq_len"] for q in grid.get("q_len") or [None]}
        if (key.get("q_len") or key["seq_len"]) not in query_lens:
            return False
        if grid.get("batch"):
            return key["batch"] in grid["batch"]
        return key["batch"] == max(1, int(grid.get("tokens_per_batch", 16384)) // key["seq_len"])


class GridScope:
    """The union of several runs' grids. Unknown (None) when any run of the side does not record its grid
    (pytest-benchmark JSON, files written before headers had one): then every case counts as asked for."""

    def __init__(self, grids: Iterable[RunGrid] | None):
        self.grids = None if grids is None else list(grids)

    @classmethod
    def from_headers(cls, headers: Iterable[dict[str, Any]]) -> GridScope:
        grids = []
        for header in headers:
            if header.get("amends"):  # an amendment (local-errors) re-reads rows; it asks for no cases
                continue
            grid = RunGrid.from_header(header)
            if grid is None:
                return cls(None)
            grids.append(grid)
        return cls(grids or None)

    @classmethod
    def unknown(cls) -> GridScope:
        return cls(None)

    def merged(self, other: GridScope) -> GridScope:
        if self.grids is None or other.grids is None:
            return GridScope.unknown()
        return GridScope(self.grids + other.grids)

    def renamed(self, impl: str, label: str) -> GridScope:
        """The same scope with `impl`'s cases asked for under `label` too (compare's implementation pairs)."""
        if self.grids is None:
            return self
        return GridScope(
            [RunGrid(grid.impls | {label}, grid.grid) if impl in grid.impls else grid for grid in self.grids]
        )

    def asked_for(self, key: dict[str, Any]) -> bool:
        return self.grids is None or any(grid.covers(key) for grid in self.grids)
