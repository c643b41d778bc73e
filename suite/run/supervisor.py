"""A run's rows measured in a worker process (worker.py) that the run watches, so that no implementation can end
or stall the run.

A row that takes longer than the row timeout (compilation and autotuning included) is stopped and recorded as
`timeout`; a worker whose resident memory passes the host memory limit is stopped and its row recorded as `oom`
(host), so that `--retry oom` redoes it on a bigger machine; a worker that dies (a crash in native code, the
system's out-of-memory killer) has its row recorded as `error` with how it died. Each time, a new worker goes on
with the rows after it. Memory is watched by the worker's resident set rather than limited by an address-space
limit, which CUDA's large virtual reservations would break.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import spawn
from typing import Any

from implementations import Implementation

from ..case import Case, key_of_row, row_key
from ..check.conformance import CheckResult, CheckSummary
from ..measure import stop_signals
from ..measure.host_memory import gib, resident_bytes
from ..measure.settings import RunSettings
from . import worker as worker_module
from . import worker_server
from .runner import DeviceLost, TimeLimitReached

POLL_S = 0.1  # how often the run looks at its worker: at a few GB/s of allocation, under 1 GB past the limit
DEFAULT_ROW_TIMEOUT_S = 600.0
SILENT_START_S = 120.0  # a worker may take this long to start (its first one imports torch), whatever the row timeout
_GONE = object()  # the worker's end of the connection closed


@dataclass(frozen=True)
class Limits:
    row_timeout_s: float = DEFAULT_ROW_TIMEOUT_S
    host_memory_bytes: int | None = None  # None: not watched (no /proc to read it from)
    timeout_flag: str = "--row-timeout"  # the flag that set row_timeout_s, for the reasons that name it

    def record(self) -> dict[str, Any]:
        return {"row_timeout_s": self.row_timeout_s, "host_memory_limit_bytes": self.host_memory_bytes}


class WorkerFailed(RuntimeError):
    """The worker failed outside any row (it could not start, or the harness itself raised between rows)."""


def unsendable(impls: list[Implementation]) -> str | None:
    """Why these implementations cannot be sent to a worker (one defined in a script's __main__, a closure), or
    None: a run measures them in its own process then."""
    for impl in impls:
        try:
            sent = pickle.dumps(impl)
        except Exception as error:  # noqa: BLE001 - pickling raises many kinds
            return f"{impl.label} cannot be sent to a worker process ({type(error).__name__}: {error})"
        if b"__main__" in sent:
            return f"{impl.label} is defined in the program's __main__, which a worker process cannot import"
    return None


@contextlib.contextmanager
def _main_module_left_out() -> Iterator[None]:
    """A worker that multiprocessing starts imports the program's main module again (as __mp_main__), running a
    script's unguarded top level, the benchmark that started it included. A job names only importable modules
    (unsendable() refuses __main__), so the worker needs none of it: the main module is left out of what a worker
    is told to prepare."""
    original = spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = original(name)
        for key in ("init_main_from_path", "init_main_from_name"):
            data.pop(key, None)
        return data

    spawn.get_preparation_data = without_main
    try:
        yield
    finally:
        spawn.get_preparation_data = original


class _Worker:
    def __init__(self, job: worker_module.Job | worker_module.CheckJob | worker_module.LocalErrorsJob):
        context = worker_server.context()
        self.connection, child_end = context.Pipe()
        self.process = context.Process(
            target=worker_module.work, args=(child_end, pickle.dumps(job), os.getpid()), name="attnbench-worker"
        )
        with _main_module_left_out():
            self.process.start()
        child_end.close()

    def receive(self, timeout: float) -> Any:
        """The next message, None if none came within `timeout`, or _GONE once the worker's end closed."""
        if not self.connection.poll(timeout):
            return None
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            return _GONE

    def resident_bytes(self) -> int | None:
        return resident_bytes(self.process.pid)

    def stop(self) -> None:
        """Kills the worker and whatever it started (its process group), and waits for it."""
        if self.process.is_alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:  # not yet the leader of its group
                self.process.kill()
        self.process.join()
        self.connection.close()

    def how_it_ended(self) -> str:
        self.process.join(timeout=10)
        return how_a_process_ended(self.process.exitcode)


_SIGNALS = {
    signal.SIGKILL: "killed (SIGKILL), e.g. by the operating system's out-of-memory killer",
    signal.SIGSEGV: "a segmentation fault (SIGSEGV), a crash in native code",
    signal.SIGABRT: "aborted (SIGABRT), e.g. an assertion that failed in native code",
    signal.SIGBUS: "a bus error (SIGBUS), a crash in native code",
}


def how_a_process_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        number = -exitcode
        try:
            return _SIGNALS.get(number) or f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"it exited with status {exitcode}"


AFTER = "; a new worker measured the rows after it"


class _Rows:
    """The rows the run has recorded, written and shown as they come; their keys are kept (for a new worker to
    skip), not the rows."""

    def __init__(self, on_row: Callable[[dict], None], on_start: Callable[[dict], None] | None, progress) -> None:
        self.on_row, self.on_start, self.progress = on_row, on_start, progress
        self.keys: set[tuple] = set()
        self.last: dict[str, Any] | None = None
        self.healthy = True  # a row measured since the device was last lost

    def started(self, row: dict[str, Any]) -> None:
        if self.on_start:
            self.on_start(row)
        if self.progress:
            self.progress.row_started(row["impl"], Case.from_row(row))

    def record(self, row: dict[str, Any]) -> None:
        self.last = row
        self.keys.add(key_of_row(row))
        self.healthy = self.healthy or row["status"] in ("ok", "mismatch")
        self.on_row(row)
        if self.progress:
            self.progress.row_done(row)


def run_supervised(
    impls: list[Implementation],
    cases: list[Case],
    *,
    settings: RunSettings,
    on_row: Callable[[dict[str, Any]], None],
    limits: Limits,
    threads: int,
    skip: set[tuple] = frozenset(),
    progress=None,
    deadline: float | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """runner.run_cases in workers, with the same rows, stops and exceptions, and a new worker after each one
    stopped or lost (see the module's docstring). A worker that lost the GPU is replaced, since a new process gets
    a new CUDA context; a second loss before any row was measured stops the run with DeviceLost."""
    todo = [row_key(impl.label, case) for case in cases for impl in impls if row_key(impl.label, case) not in skip]
    recorded = _Rows(on_row, on_start, progress)
    if progress:
        progress.start(len(todo), [impl.label for impl in impls], todo)
    with stop_signals.stop_signals_recorded():
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeLimitReached(len(recorded.keys), len(todo))
            job = worker_module.Job(impls, cases, settings, threads, deadline, {*skip, *recorded.keys})
            outcome = _one_worker(job, recorded, limits)
            if outcome == "done":
                return
            if outcome == "time-limit":
                raise TimeLimitReached(len(recorded.keys), len(todo))
            if outcome == "device-lost":
                if not recorded.healthy:
                    raise DeviceLost(recorded.last)
                recorded.healthy = False


def _one_worker(job: worker_module.Job, recorded: _Rows, limits: Limits) -> str:
    worker = _Worker(job)
    try:
        return _watch(worker, recorded, limits)
    finally:
        worker.stop()


def _watch(worker: _Worker, recorded: _Rows, limits: Limits) -> str:
    """Relays the worker's rows until it ends (its outcome), or stops it at a limit or finds it dead ("restart")."""
    current: dict[str, Any] | None = None  # the row being measured
    since = time.monotonic()  # when it started (or the worker, or its last row)
    while True:
        message = worker.receive(POLL_S)
        if message is _GONE or (message and message[0] == "end" and message[1] == "failed"):
            failure = worker.how_it_ended() if message is _GONE else _last_line(message[2])
            if current is None:
                raise WorkerFailed(f"the worker process failed outside any row: {failure}")
            recorded.record(_failed(current, since, "error", f"the worker process died measuring it: {failure}"))
            return "restart"
        if message and message[0] == "end":
            return message[1]
        if message and message[0] == "start":
            if current is None or key_of_row(message[1]) != key_of_row(current):  # a case's inputs count as its first
                since = time.monotonic()
            current = message[1]
            recorded.started(current)
        elif message and message[0] == "row":
            recorded.record(message[1])
            current, since = None, time.monotonic()
        elif message is None:
            over = _over_a_limit(worker, current, since, limits)
            if over:
                worker.stop()
                recorded.record(_failed(current, since, *over))
                return "restart"


def _over_a_limit(
    worker: _Worker, current: dict[str, Any] | None, since: float, limits: Limits
) -> tuple[str, str] | None:
    """(status, reason) for a row past a limit, None within them; raises WorkerFailed for a worker silent past the
    row timeout between rows."""
    waited = time.monotonic() - since
    if current is None and waited > max(limits.row_timeout_s, SILENT_START_S):
        raise WorkerFailed(f"the worker process sent nothing for {waited:.0f} s outside any row")
    if current is not None and waited > limits.row_timeout_s:
        return "timeout", f"no result after {limits.row_timeout_s:g} s ({limits.timeout_flag}): its worker was stopped"
    if current is None or limits.host_memory_bytes is None:
        return None
    resident = worker.resident_bytes()
    if resident is not None and resident > limits.host_memory_bytes:
        return "oom", (
            f"host memory: its worker held {gib(resident)}, past --host-memory-limit {gib(limits.host_memory_bytes)}, "
            "and was stopped"
        )
    return None


def _failed(current: dict[str, Any], since: float, status: str, reason: str) -> dict[str, Any]:
    row_s = round(time.monotonic() - since, 3)
    return {**current, "status": status, "reason": reason + AFTER, "row_s": row_s}


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no detail"


def check_in_worker(job: worker_module.CheckJob, limits: Limits) -> tuple[CheckSummary, bool]:
    """conformance.checked in a worker: a case past a limit, or one its worker died in, is an `error` result naming
    what happened, after the results before it; the implementation's check ends there, and the next implementation's
    starts in a new worker. Whether the device was lost counts only where the worker said so itself."""
    worker = _Worker(job)
    results: list[CheckResult] = []
    current: tuple[Case, int] | None = None  # the case being checked, and its seed
    started = since = time.monotonic()
    try:
        while True:
            message = worker.receive(POLL_S)
            kind = message[0] if isinstance(message, tuple) else None
            if kind == "end" and message[1] == "done":
                return message[2]
            if kind == "start":
                current, since = message[1], time.monotonic()
            elif kind == "result":
                results.append(message[1])
                current = None
            elif message is _GONE or kind == "end":
                failure = worker.how_it_ended() if message is _GONE else _last_line(message[2])
                return _cut_short(job, results, current, started, f"its worker process died checking it: {failure}")
            elif over := _over_a_limit(worker, current, since, limits):
                return _cut_short(job, results, current, started, over[1])
    finally:
        worker.stop()


def _cut_short(
    job: worker_module.CheckJob, results: list[CheckResult], current: tuple | None, started: float, why: str
) -> tuple[CheckSummary, bool]:
    if current is None:
        raise WorkerFailed(f"the worker process failed outside any case: {why}")
    results = [*results, CheckResult(*current, status="error", detail=why)]
    return CheckSummary(job.impl.label, results, time.monotonic() - started, job.impl.family), False


class LocalErrorsInWorker:
    """check.expected.LocalErrors.of, served by a worker: a row past a limit, or one its worker died on, gets a note
    saying so instead of its figures, and the next row a new worker. close() when done."""

    def __init__(self, settings: RunSettings, limits: Limits):
        self.job, self.limits = worker_module.LocalErrorsJob(settings), limits
        self.worker: _Worker | None = None

    def __call__(self, impl: Implementation, case: Case) -> dict[str, Any]:
        self.worker = self.worker or _Worker(self.job)
        self.worker.connection.send((impl, case))
        since = time.monotonic()
        while True:
            message = self.worker.receive(POLL_S)
            kind = message[0] if isinstance(message, tuple) else None
            if kind == "result":
                if message[2]:  # it lost the device, and ended: the next row needs a new worker
                    self.close()
                return message[1]
            if message is _GONE or kind == "end":
                failure = self.worker.how_it_ended() if message is _GONE else _last_line(message[2])
                why = f"its worker process died measuring it: {failure}"
            elif over := _over_a_limit(self.worker, (impl, case), since, self.limits):
                why = over[1]
            else:
                continue
            self.close()
            return {"softmax_local_note": f"not measured: {why}"}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
