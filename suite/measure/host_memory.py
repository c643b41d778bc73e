"""Host memory of a process, and how much the machine has free, from /proc (Linux); None where it cannot be read."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SHARE = 0.9  # of the memory available when a run starts: the rest is left to the system and the run itself
GIB = 2**30


def resident_bytes(pid: int) -> int | None:
    """The resident set of process `pid` (the memory it holds in RAM), or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text(encoding="ascii").split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int | None:
    """What the kernel estimates can be allocated without swapping (MemAvailable), or None without /proc."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_limit() -> int | None:
    """Most of the memory available now: a worker past it is stopped before the system's out-of-memory killer
    picks a process, which may be another program's."""
    available = available_bytes()
    return None if available is None else int(available * DEFAULT_SHARE)


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"
