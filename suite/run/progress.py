"""A progress line per finished row on stderr: i of n, implementation, case, elapsed and remaining."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, TextIO

from ..case import Case, key_of_row


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """`earlier`: what rows took in earlier runs on this machine model (`row_s` by row key). Where every row still
    to run has such a time, the time left is their sum, scaled by how this run's rows compare with their earlier
    times so far; otherwise it is the mean row time so far times the rows left."""

    def __init__(self, stream: TextIO | None = None, earlier: Mapping[tuple, float] | None = None):
        self.stream = stream or sys.stderr  # looked up now, not at import: a caller may have redirected it
        self.earlier = dict(earlier or {})
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._current = ""
        self._label_width = 15
        self._pending: Counter = Counter()  # row keys still to run
        self._earlier_left = 0.0  # what the pending rows with an earlier time took then, summed
        self._unknown_left = 0  # pending rows without one: each row costs O(1), whatever the run's size
        self._taken = self._expected = 0.0  # this run's and the earlier runs' times of the rows done that had both

    def start(self, total: int, labels: list[str] = (), keys: list[tuple] = ()) -> None:
        """`labels`: the implementations' labels, so that the case column lines up after the longest; `keys`: the
        rows to run, for the time left from earlier runs."""
        self.total, self.done, self.started = total, 0, time.monotonic()
        self._label_width = max([15, *map(len, labels)])
        self._pending = Counter(keys)
        self._earlier_left = sum(self.earlier[key] for key in keys if key in self.earlier)
        self._unknown_left = sum(key not in self.earlier for key in keys)
        by_earlier = bool(keys) and not self._unknown_left
        print(
            f"attnbench: {total} measurements to run"
            + ("; time left from what these rows took in earlier runs on this machine model" if by_earlier else ""),
            file=self.stream,
            flush=True,
        )

    def _left(self, elapsed: float) -> float:
        if self._pending and not self._unknown_left:
            scale = self._taken / self._expected if self._expected > 0 else 1.0
            return scale * max(self._earlier_left, 0.0)
        return elapsed / self.done * (self.total - self.done)

    def row_started(self, impl: str, case: Case) -> None:
        self._current = f"{impl} {case.label}"

    def row_done(self, row: dict[str, Any]) -> None:
        self.done += 1
        key = key_of_row(row)
        if self._pending.get(key):
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]
            if key in self.earlier:
                self._earlier_left -= self.earlier[key]
            else:
                self._unknown_left -= 1
        if key in self.earlier and isinstance(row.get("row_s"), (int, float)):
            self._taken += row["row_s"]
            self._expected += self.earlier[key]
        elapsed = time.monotonic() - self.started
        remaining = self._left(elapsed)
        if row["status"] in ("ok", "mismatch"):
            outcome = f"{row['time_ms']:.3f} ms"
            if row["status"] == "mismatch":
                outcome += " MISMATCH"
        else:
            outcome = row["status"].upper()
        width = len(str(self.total))
        print(
            f"[{self.done:>{width}}/{self.total}] {_clock(elapsed)} elapsed, ~{_clock(remaining)} left  "
            f"{row['impl']:<{self._label_width}} {Case.from_row(row).label}  {outcome}",
            file=self.stream,
            flush=True,
        )
