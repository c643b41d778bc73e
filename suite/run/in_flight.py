"""A row whose process died while measuring it: recorded, not run again and again.

A failing case becomes a row and the run goes on, but some failures end the process itself: the
operating system's out-of-memory killer (host memory, which raises nothing), a segmentation fault or an
abort in native code. The row is lost with the process, and `--resume` would start the same case
again and die there every time. So before each row the runner names it in a small file beside the
results (`RESULTS.running`), and any exit Python sees removes that file; one that is still there when
the run is resumed names the row its process died in, which is then written as an `error` row.
`local-errors` keeps its own (`RESULTS.amending`) and notes such a row instead of measuring it again.

Whether the process that left a marker is still measuring is told by the results file's lock (results/lock.py):
a process holding it knows that no other is writing, so any marker it finds is a dead process's. Without locks,
by the marker's pid and that process's start time, so that a pid the system gave to another process since does not
pass for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from ..case import CASE_FIELDS
from ..results.files import CannotWrite

DIED_REASON = (
    "the process died while measuring this row (no exception: killed by the operating system, e.g. "
    "out of host memory, or a crash in native code); recorded when the run was resumed "
    "(--retry error runs it again)"
)


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None where that cannot be read (no such process,
    or no /proc): with its pid, it names one process, as a pid alone does not once the system reuses it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22; the name before it may hold spaces
    except (OSError, ValueError, IndexError):
        return None


class InFlight:
    """`suffix` tells the commands apart: `run` (.running) and `local-errors` (.amending) each find their own.
    `exclusive`: this process holds the results file's lock, so no marker found is a live process's."""

    def __init__(self, results_path: Path, suffix: str = ".running", *, exclusive: bool = False):
        self.path = Path(results_path).with_name(Path(results_path).name + suffix)
        self.exclusive = exclusive

    def started(self, row: dict[str, Any]) -> None:
        """Name the row about to be measured (its implementation and case), replacing the last one. Raises
        CannotWrite where the marker cannot be written (a full disk), leaving no partial file behind."""
        record = {key: row[key] for key in ("impl", "family", *CASE_FIELDS, "density") if key in row}
        record = {**record, "pid": os.getpid(), "started": process_start(os.getpid()), "host": socket.gethostname()}
        staging = self.path.with_name(self.path.name + ".tmp")
        try:
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.write_text(json.dumps(record), encoding="utf-8")
            os.replace(staging, self.path)  # whole or not at all: a death mid-write leaves the previous name
        except OSError as error:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            raise CannotWrite(self.path, error) from None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not all(key in record for key in ("impl", *CASE_FIELDS)):
            return None
        return record

    def running_elsewhere(self) -> int | None:
        """The pid of a live process on this host that is measuring a row of these results now, if any: the one
        that wrote the marker, unless it ended and its pid went to another process."""
        record = self._read()
        if self.exclusive or record is None or record.get("host") != socket.gethostname():
            return None
        try:
            pid = int(record["pid"])
            os.kill(pid, 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return None
        except PermissionError:  # alive, another user's
            pass
        started = record.get("started")
        if pid == os.getpid() or (started is not None and process_start(pid) not in (started, None)):
            return None
        return pid

    def died_in(self) -> dict[str, Any] | None:
        """The row a previous process died in (its implementation and case), as an `error` row; None if that
        process ended in a way Python saw, or is still running."""
        record = self._read()
        if record is None or self.running_elsewhere() is not None:
            return None
        for key in ("pid", "started", "host"):
            record.pop(key, None)
        return {**record, "status": "error", "reason": DIED_REASON}
