"""A progress line per finished row on stderr: i of n, implementation, case, elapsed and remaining."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .case import Case


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr  # looked up now, not at import: a caller may have redirected it
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._current = ""
        self._label_width = 15

    def start(self, total: int, labels: list[str] = ()) -> None:
        """`labels`: the implementations' labels, so that the case column lines up after the longest."""
        self.total, self.done, self.started = total, 0, time.monotonic()
        self._label_width = max([15, *map(len, labels)])
        print(f"attnbench: {total} measurements to run", file=self.stream, flush=True)

    def row_started(self, impl: str, case: Case) -> None:
        self._current = f"{impl} {case.label}"

    def row_done(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        remaining = elapsed / self.done * (self.total - self.done)
        if row["status"] in ("ok", "mismatch"):
            outcome = f"{row['time_ms']:.3f} ms"
            if row["status"] == "mismatch":
                outcome += " MISMATCH"
        else:
            outcome = row["status"].upper()
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {_clock(elapsed)} elapsed, ~{_clock(remaining)} left  "
              f"{row['impl']:<{self._label_width}} {Case.from_row(row).label}  {outcome}", file=self.stream, flush=True)
