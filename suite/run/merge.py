"""Rank 0's end of a run under torchrun: the ranks' files merged into `--out` as one run each (shard.py).

Each run (group) becomes one run header, whose `world_size` and `ranks` record each rank's host, device and machine
model and whose `planned_rows` counts the rows of every rank, followed by the rows of all its ranks, in the grid's
order, each with the `rank` and `host` that measured it. The row a rank died in (its in-flight marker) is recorded
as an `error` row, as `--resume` records it for a run of one process; rows a rank never reached stay missing, and
`runs`, `report` and `compare` count them from `planned_rows`. Ranks of different machine models are never merged
into one comparison: each model's rows go to a file of its own, `OUT-STEM.MODEL.jsonl`. The rank files are removed
once their rows are in place.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..case import key_of_row
from ..results import naming
from ..results.files import ResultsFormatError, ResultsWriter, read, recorded_machine
from ..results.lock import WriterLock
from . import shard
from .in_flight import InFlight

_HEADER_ONLY = ("record", "format", "run_id", "environment", "shard")
_PER_RANK = ("measured_peak_tflops", "measured_peak_gbytes_per_s", "cpu_load")


@dataclass
class _RankFile:
    path: Path
    rank: int
    header: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def machine(self) -> str | None:
        return recorded_machine(self.header.get("environment") or {})


@dataclass
class Merged:
    written: list[Path] = field(default_factory=list)  # the results files the runs were merged into
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # each group's rows, as written
    left: list[str] = field(default_factory=list)  # the rank files left where they are, each with why


def merge(out: Path, files: list[Path], order: dict[tuple, int], last_group: str | None = None) -> Merged:
    """Merges the rank files `files` (their locks held by the caller) into `out`, each group as one run; the group
    `last_group` (this run's) goes last, after those that earlier runs left. A file that cannot be read as a rank's
    is left where it is, and said."""
    groups: dict[str, list[_RankFile]] = {}
    merged = Merged()
    for path in files:
        try:
            found = _read_rank_file(path)
        except ResultsFormatError as error:
            merged.left.append(f"{path}: {error}")
            continue
        if found is None:
            merged.left.append(f"{path}: no run header of a rank (not written by `attnbench run` under torchrun)")
            continue
        groups.setdefault(shard.rank_of(path)[0], []).append(found)
    for group in sorted(groups, key=lambda g: (g == last_group, _started(groups[g]), g)):
        merged.rows[group] = _merge_group(out, group, groups[group], order, merged.written)
        for rank in groups[group]:
            _remove(rank.path)
    return merged


def _read_rank_file(path: Path) -> _RankFile | None:
    runs, rows = read(path)
    if not runs or not isinstance(runs[0].get("shard"), dict):
        return None
    _, rank = shard.rank_of(path)
    died = InFlight(path, exclusive=True).died_in()
    if died is not None and key_of_row(died) not in {key_of_row(row) for row in rows}:
        rows.append(died)
    return _RankFile(path, rank, runs[0], rows)


def _started(ranks: list[_RankFile]) -> str:
    return min(str((rank.header.get("environment") or {}).get("recorded_at", "")) for rank in ranks)


def _merge_group(
    out: Path, group: str, ranks: list[_RankFile], order: dict[tuple, int], written: list[Path]
) -> list[dict[str, Any]]:
    ranks.sort(key=lambda rank: rank.rank)
    machines = list(dict.fromkeys(rank.machine for rank in ranks))
    rows_written = []
    for machine in machines:
        of_model = [rank for rank in ranks if rank.machine == machine]
        target = out if len(machines) == 1 else model_path(out, machine)
        planned = of_model[0].header["shard"]["planned_rows"] if len(machines) == 1 else None
        rows = _rows_in_order(of_model, order)
        if not rows and not planned:  # a run with nothing to measure: nothing to say
            continue
        with _locked(target, out):
            writer = ResultsWriter(target, of_model[0].header["environment"], _run_info(of_model, planned), group)
            try:
                writer.write_header()
                for row in rows:
                    writer.append(row)
            finally:
                writer.close()
        written.append(target)
        rows_written += rows
    return rows_written


def model_path(out: Path, machine: str | None) -> Path:
    """Where the rows of one machine model of a run that mixed models go: its name says which."""
    return out.with_name(f"{out.stem}.{naming.slug(machine or 'unknown')}{out.suffix}")


@contextlib.contextmanager
def _locked(target: Path, out: Path):
    """`out`'s lock is the caller's; a model's own file is locked here while it is written."""
    if target == out:
        yield
        return
    with WriterLock(target):
        yield


def _run_info(ranks: list[_RankFile], planned_rows: int | None) -> dict[str, Any]:
    first = ranks[0].header
    info = {key: value for key, value in first.items() if key not in _HEADER_ONLY}
    info["planned_rows"] = (
        planned_rows if planned_rows is not None else sum(rank.header.get("planned_rows") or 0 for rank in ranks)
    )
    info["world_size"] = first["shard"]["world_size"]
    info["ranks"] = [
        {
            "rank": rank.rank,
            "host": rank.header["shard"].get("host"),
            "device": rank.header["shard"].get("device"),
            "machine": rank.machine,
            "run_id": rank.header["run_id"],
            **{key: rank.header.get(key) for key in _PER_RANK},
        }
        for rank in ranks
    ]
    return info


def _rows_in_order(ranks: list[_RankFile], order: dict[tuple, int]) -> list[dict[str, Any]]:
    rows = []
    for rank in ranks:
        host = rank.header["shard"].get("host")
        for row in rank.rows:
            row = {key: value for key, value in row.items() if key not in ("record", "run_id")}
            rows.append({**row, "rank": row.get("rank", rank.rank), "host": row.get("host") or host})
    unknown = len(order)
    return sorted(rows, key=lambda row: order.get(key_of_row(row), unknown))


def _remove(path: Path) -> None:
    for leftover in (path, InFlight(path).path, shard.ended_path(path)):
        with contextlib.suppress(OSError):
            leftover.unlink(missing_ok=True)
