"""One grid over the ranks of `torchrun` (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK).

Each rank measures on its own device (`cuda:LOCAL_RANK`, or the CPU) a share of the plan's cases, into a results
file of its own beside `--out` (`OUT-STEM.GROUP.rankR.jsonl`, GROUP naming the run); rank 0 merges them into `--out`
once the others have ended (merge.py). Every row of a case stays on one rank, since they share its inputs and its
reference. The shares are balanced by what the rows took in earlier runs on this machine model (`row_s`), and by
their FLOPs where a row has no such time; rank 0 computes them and sends them to every rank, so that all agree.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from implementations import Implementation

from ..case import Case, row_key
from ..measure.flops import case_flops, softmax_case_flops
from .config import UsageError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_RANK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Launch | None:
        """The launch a launcher's variables describe, or None where none is set (a plain run)."""
        given = [name for name in LAUNCH_VARIABLES if name in environ]
        if not given:
            return None
        values = {}
        for name in LAUNCH_VARIABLES:
            text = environ.get(name)
            if text is None:
                raise UsageError(
                    f"{name}: not set, but {', '.join(given)} is (allowed: all of {', '.join(LAUNCH_VARIABLES)}, "
                    "as torchrun sets them, or none)"
                )
            if not text.strip().isdigit():
                raise UsageError(f"{name}: {text!r} is not a whole number (allowed: 0 or more, as torchrun sets it)")
            values[name] = int(text)
        launch = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if not 0 <= launch.rank < launch.world_size:
            raise UsageError(f"RANK: {launch.rank} with WORLD_SIZE {launch.world_size} (allowed: 0 to WORLD_SIZE - 1)")
        return launch


def pin_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """Makes `cuda` mean this rank's own GPU, cuda:LOCAL_RANK, in this process (one rank per GPU: two benchmarks on
    one GPU would time each other); the device as the run records it, e.g. `cuda:3` or `cpu`."""
    if device != "cuda" or "LOCAL_RANK" not in environ:
        return device
    import torch

    local_rank, count = int(environ["LOCAL_RANK"]), torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(
            f"LOCAL_RANK: {local_rank}, and this host has {count} GPU{'s' * (count != 1)} (allowed: 0 to {count - 1}; "
            "one rank per GPU: --nproc-per-node at most the GPUs of a node)"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


@dataclass
class Plan:
    """What every rank measures: rank r the cases `shares[r]` (indices into the grid's cases), skipping `skip`."""

    group: str  # names this run's rank files, and the merged run in --out
    shares: list[list[int]]
    skip: set[tuple]
    planned_rows: list[int]  # each rank's
    expected_s: list[float | None]  # each rank's time from earlier rows, where every row of its share has one
    basis: str  # what balanced the shares
    died: dict[str, Any] | None = None  # the row a single-process run on --out died in: rank 0 records it
    todo: list[tuple] = field(default_factory=list)  # every row key to measure, in plan order
    leftovers: int = 0  # rank files an earlier run left beside --out, merged at the end
    out: Path | None = None  # rank 0's --out: a default name depends on the machine model and the date

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo and self.died is None and not self.leftovers

    @property
    def total_rows(self) -> int:
        return sum(self.planned_rows)


def rows_to_measure(impls: list[Implementation], case: Case, skip: set[tuple]) -> list[Implementation]:
    return [impl for impl in impls if row_key(impl.label, case) not in skip]


def case_costs(
    impls: list[Implementation], cases: list[Case], skip: set[tuple], earlier: Mapping[tuple, float]
) -> tuple[list[float], str]:
    """Each case's expected cost and what it rests on: the earlier times of its rows to measure; for a row without
    one, its FLOPs (a case's float64 reference counted once), in seconds at the rate the rows with times ran."""
    flops = {}  # of each row to measure, by case
    for case in cases:
        chosen = rows_to_measure(impls, case, skip)
        reference = softmax_case_flops(case) / max(len(chosen), 1)
        flops[case] = {row_key(impl.label, case): _row_flops(impl, case) + reference for impl in chosen}
    rows = {key: value for of_case in flops.values() for key, value in of_case.items()}
    timed = [key for key in rows if key in earlier]
    timed_flops = sum(rows[key] for key in timed)
    rate = sum(earlier[key] for key in timed) / timed_flops if timed_flops > 0 else 1.0
    costs = [sum(earlier.get(key, value * rate) for key, value in flops[case].items()) for case in cases]
    if timed and len(timed) == len(rows):
        return costs, "the rows' times in earlier runs on this machine model"
    if timed:
        return costs, f"earlier times where rows have them ({len(timed)} of {len(rows)}), FLOPs for the others"
    return costs, "the rows' FLOPs (no earlier run on this machine model timed them)"


def _row_flops(impl: Implementation, case: Case) -> float:
    try:
        return 0.0 if impl.supports(case) else case_flops(impl, case)
    except Exception:  # noqa: BLE001 - the run records this as the row; it costs next to nothing
        return 0.0


def assign(costs: list[float], world_size: int) -> list[list[int]]:
    """Case indices per rank, each in plan order: the costliest case first, each to the rank with the least so far
    (ties to the lower rank, then the earlier case), so that no rank ends more than one case's cost after another."""
    loads, shares = [0.0] * world_size, [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[index]
        shares[rank].append(index)
    return [sorted(share) for share in shares]


def make_plan(
    impls: list[Implementation],
    cases: list[Case],
    skip: set[tuple],
    earlier: Mapping[tuple, float],
    world_size: int,
    died: dict[str, Any] | None = None,
) -> Plan:
    costs, basis = case_costs(impls, cases, skip, earlier)
    shares = assign(costs, world_size)
    todo = [row_key(impl.label, case) for case in cases for impl in rows_to_measure(impls, case, skip)]
    planned, expected = [], []
    for rank, share in enumerate(shares):
        keys = [row_key(impl.label, cases[i]) for i in share for impl in rows_to_measure(impls, cases[i], skip)]
        planned.append(len(keys) + (rank == 0 and died is not None))
        expected.append(sum(earlier[key] for key in keys) if all(key in earlier for key in keys) else None)
    return Plan(os.urandom(6).hex(), shares, skip, planned, expected, basis, died, todo)


def format_shares(plan: Plan, cases: list[Case], world_size: int) -> str:
    lines = [f"under torchrun: {world_size} ranks, every row of a case on one rank, balanced by {plan.basis}"]
    lines.append(f"{'rank':>4}  {'cases':>5}  {'rows':>5}  expected")
    for rank, share in enumerate(plan.shares):
        seconds = plan.expected_s[rank]
        expected = "–" if seconds is None or not plan.planned_rows[rank] else _duration(seconds)
        lines.append(f"{rank:>4}  {len(share):>5}  {plan.planned_rows[rank]:>5}  {expected}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# Rank files: OUT-STEM.GROUP.rankR.jsonl beside --out, GROUP twelve hex digits.
_RANK_FILE = re.compile(r"^(?P<stem>.+)\.(?P<group>[0-9a-f]{12})\.rank(?P<rank>\d+)\.jsonl$")


def rank_path(out: Path, group: str, rank: int) -> Path:
    return out.with_name(f"{out.stem}.{group}.rank{rank}.jsonl")


def rank_files(out: Path) -> list[Path]:
    """The rank files beside `out`, this run's and those a run that ended before merging left, by group and rank."""
    found = []
    for path in out.parent.glob(f"{out.stem}.*.rank*.jsonl"):
        match = _RANK_FILE.match(path.name)
        if match and match["stem"] == out.stem:
            found.append((match["group"], int(match["rank"]), path))
    return [path for _, _, path in sorted(found)]


def rank_of(path: Path) -> tuple[str, int]:
    match = _RANK_FILE.match(path.name)
    return match["group"], int(match["rank"])


def ended_path(path: Path) -> Path:
    """Written by a rank once it has ended: where files take no locks, how rank 0 knows."""
    return path.with_name(path.name + ".ended")


class RanksUnreachable(RuntimeError):
    """The ranks could not all reach each other within the timeout."""


class ProcessGroup:
    """The ranks' gloo process group, for the start only: rank 0's plan sent to all, and the ranks' readiness."""

    def __init__(self, launch: Launch, timeout_s: float):
        import torch.distributed as dist

        self.launch, self.timeout_s, self._dist = launch, timeout_s, dist
        if launch.world_size == 1:  # no other rank to meet
            return
        try:
            dist.init_process_group(
                "gloo", rank=launch.rank, world_size=launch.world_size, timeout=timedelta(seconds=timeout_s)
            )
        except (RuntimeError, ValueError) as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: BaseException) -> RanksUnreachable:
        detail = " ".join(str(error).split())[:300]
        return RanksUnreachable(
            f"rank {self.launch.rank} of {self.launch.world_size} could not reach the other ranks within "
            f"--rank-timeout {self.timeout_s:g} s ({type(error).__name__}: {detail}); nothing was measured"
        )

    def from_rank_0(self, value: Any) -> Any:
        if self.launch.world_size == 1:
            return value
        box = [value]
        try:
            self._dist.broadcast_object_list(box, src=0)
        except (RuntimeError, ValueError) as error:
            raise self._unreachable(error) from None
        return box[0]

    def everyone(self, value: Any) -> list[Any]:
        if self.launch.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.launch.world_size
        try:
            self._dist.all_gather_object(gathered, value)
        except (RuntimeError, ValueError) as error:
            raise self._unreachable(error) from None
        return gathered

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


class WholeRunProgress:
    """Rank 0's progress over the whole run: its own rows as they finish, and the other ranks' as their files show
    them (read when one of its own finishes, and while it waits for them at the end)."""

    def __init__(self, progress, others: Iterable[Path], total: int, todo: list[tuple]):
        self.inner, self.total, self.todo = progress, total, todo
        self.offsets = dict.fromkeys(others, 0)

    def start(self, total: int, labels: list[str] = (), keys: list[tuple] = ()) -> None:
        self.inner.start(self.total, labels, self.todo)

    def row_started(self, impl: str, case: Case) -> None:
        self.inner.row_started(impl, case)

    def row_done(self, row: dict[str, Any]) -> None:
        self.poll()
        self.inner.row_done(row)

    def poll(self) -> None:
        for path, offset in self.offsets.items():
            rows, self.offsets[path] = _new_rows(path, offset)
            for row in rows:
                self.inner.row_done(row)


def _new_rows(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The result rows written whole to `path` after byte `offset`, and the offset after them."""
    import json

    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return [], offset
    whole = data[: data.rfind(b"\n") + 1]
    rows = []
    for line in whole.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("record") == "result":
            rows.append(record)
    return rows, offset + len(whole)


def wait_for_ranks(paths: list[Path], patience_s: float | None, poll=None, stream: TextIO | None = None) -> list:
    """Waits until the rank of each rank file has ended, at most `patience_s` (None: for as long as they run);
    returns the locks taken on the files of those that ended (the caller releases them), and leaves out the ranks
    still running when patience ran out. `poll` is called between looks (the progress display)."""
    waiting, locks = list(paths), []
    deadline = None if patience_s is None else time.monotonic() + patience_s
    said = False
    while waiting:
        out_of_patience = deadline is not None and time.monotonic() >= deadline
        for path in list(waiting):
            lock = _ended(path, out_of_patience)
            if lock is not None:
                locks.append(lock)
                waiting.remove(path)
        if poll:
            poll()
        if not waiting or out_of_patience:
            break
        if not said and stream is not None:
            ranks = ", ".join(str(rank_of(path)[1]) for path in waiting)
            print(f"attnbench: waiting for rank {ranks} to finish", file=stream, flush=True)
            said = True
        time.sleep(0.2)
    return locks


def _ended(path: Path, out_of_patience: bool):
    """The lock on a rank's file once the rank has ended, else None. A rank ends by writing its ended marker; one
    killed outright writes none, and is known dead where the lock is free, on its own host (where a lock is
    reliable: a network filesystem may not pass it to other hosts), or on any once patience ran out."""
    from ..results.lock import ResultsLocked, WriterLock

    if not (ended_path(path).exists() or out_of_patience or _rank_host(path) == socket.gethostname()):
        return None
    lock = WriterLock(path)
    try:
        held = lock.acquire()
    except (ResultsLocked, OSError):
        return None
    if held or ended_path(path).exists() or out_of_patience:
        return lock
    return None  # no locks here, and no marker: it may still be running


def _rank_host(path: Path) -> str | None:
    """The host its header names (a rank writes its header as it starts), or None before it is there."""
    import json

    try:
        with open(path, encoding="utf-8") as file:
            header = json.loads(file.readline())
    except (OSError, ValueError):
        return None
    return (header.get("shard") or {}).get("host") if isinstance(header, dict) else None
