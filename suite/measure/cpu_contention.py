"""Whether other processes took the CPU a run measures on: before the run (how busy the machine is) and while each
row's calls were timed (how many cores' worth of CPU time other processes took), from Linux's /proc/stat.

A CPU time is the implementation's only while torch's threads have their cores to themselves: where another
process runs on them, the scheduler shares the cores out in time slices of milliseconds, and a call of microseconds
is timed at whole slices. Everything here degrades to None where /proc/stat cannot be read: a run never fails on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit (USER_HZ)
SPARE_CORES = 0.5  # other processes' load that is not yet contention: a shell, a monitor, the kernel's own work
PRE_RUN_WINDOW_S = 0.2
_IDLE_FIELDS = (3, 4)  # idle, iowait; every other of the first eight (user ... steal) is busy time


@dataclass(frozen=True)
class CpuSample:
    """The CPUs this process may run on, at one moment: their busy and total time in /proc/stat ticks (steal, the
    time a hypervisor gave another machine, counts as busy), and this process's own CPU seconds, all its threads."""

    busy_ticks: int
    total_ticks: int
    own_s: float
    cores: int


def cpu_times(proc_stat: str, cpus: Collection[int]) -> tuple[int, int]:
    """(busy, total) ticks of the CPUs `cpus` (their `cpuN` lines) in the text of /proc/stat."""
    busy = total = 0
    for line in proc_stat.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [int(field) for field in fields[:8]]  # guest time is counted in user time already
        total += sum(ticks)
        busy += sum(tick for index, tick in enumerate(ticks) if index not in _IDLE_FIELDS)
    return busy, total


def _usable_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def sample() -> CpuSample | None:
    """Now; None where /proc/stat cannot be read (not Linux)."""
    cpus = _usable_cpus()
    try:
        busy, total = cpu_times(Path("/proc/stat").read_text(), cpus)
    except (OSError, ValueError):
        return None
    return CpuSample(busy, total, time.process_time(), len(cpus)) if total else None


@dataclass(frozen=True)
class Contention:
    """What other processes took of the CPUs between two samples, in cores (1.5: one core and a half of another,
    all the window long), and how far /proc/stat's whole ticks could be off over so short a window."""

    others_busy_cores: float
    cores: int
    window_s: float
    resolution_cores: float

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> Contention | None:
        total = after.total_ticks - before.total_ticks
        if total <= 0:
            return None
        others = max(0.0, after.busy_ticks - before.busy_ticks - (after.own_s - before.own_s) * _TICKS_PER_S)
        ticks_per_core = total / after.cores
        return cls(
            others_busy_cores=others / ticks_per_core,
            cores=after.cores,
            window_s=ticks_per_core / _TICKS_PER_S,
            resolution_cores=after.cores / ticks_per_core,
        )

    def contended(self, threads: int) -> bool | None:
        """Whether other processes took cores torch's `threads` needed: more than the cores those threads leave
        idle, by more than SPARE_CORES and by more than whole ticks over the window could misread (a tick per
        core); then the scheduler shared cores between them and the measured calls. None where the window is too
        short for the ticks to show it."""
        left_idle = max(0, self.cores - threads)
        threshold = left_idle + SPARE_CORES + self.resolution_cores
        return None if threshold >= self.cores else self.others_busy_cores > threshold

    def record(self, threads: int) -> dict[str, Any]:
        return {
            "others_busy_cores": round(self.others_busy_cores, 3),
            "cores": self.cores,
            "threads": threads,
            "window_s": round(self.window_s, 3),
            "resolution_cores": round(self.resolution_cores, 3),
        }


def row_verdict(
    before: CpuSample | None, after: CpuSample | None, threads: int
) -> tuple[bool | None, dict[str, Any] | None]:
    """(cpu_contended, cpu_contention) of a row from samples around its timed calls; (None, None) without them
    (a GPU row, or no /proc/stat). Calls timed within one tick leave nothing to judge: None, and a record that
    says so (no others_busy_cores)."""
    if before is None or after is None:
        return None, None
    contention = Contention.between(before, after)
    if contention is None:
        return None, {
            "others_busy_cores": None,
            "cores": after.cores,
            "threads": threads,
            "window_s": 0.0,
            "resolution_cores": None,
        }
    return contention.contended(threads), contention.record(threads)


def _running() -> int | None:
    """Runnable tasks on the machine now (/proc/loadavg's fourth field, this process among them)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def before_run(threads: int, window_s: float = PRE_RUN_WINDOW_S) -> dict[str, Any]:
    """How busy the machine is, judged over `window_s` while this process waits: the run header's `cpu_load`
    (`busy`: the rule of Contention.contended, None where it cannot be read)."""
    first = sample()
    time.sleep(window_s)
    contention = Contention.between(first, sample()) if first else None
    if contention is None:
        return {"unavailable": "no /proc/stat on this system", "threads": threads, "busy": None}
    return {**contention.record(threads), "running": _running(), "busy": contention.contended(threads)}


def busy_warning(load: dict[str, Any]) -> str | None:
    """The one line a run on a busy machine warns with; None where it is not busy."""
    if not load.get("busy"):
        return None
    threads = load["threads"]
    return (
        f"this machine is busy: other processes kept {load['others_busy_cores']:.1f} of its {load['cores']} cores "
        f"busy while torch will use {threads} thread{'s' * (threads != 1)}; CPU times measured now are slowed by "
        "them (rows measured while they run are marked cpu_contended)"
    )
