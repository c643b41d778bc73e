"""The process that measures a run's rows, watched by the run (supervisor.py), and what it tells the run.

It runs its job (a run's rows through `runner.run_cases`, or one implementation's conformance check) and sends,
over its connection, ("start", what) before each row or case, its result after it, and ("end", outcome, detail)
last: `done`, `time-limit`, `device-lost` (its last row left the GPU unusable in this process) or `failed` (the
harness raised; detail is the traceback). It leads its own process group, so that Ctrl-C reaches the run, which stops
it, and never a kernel.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from implementations import Implementation

from ..case import Case
from ..measure.settings import RunSettings

Send = Callable[[tuple], None]
Receive = Callable[[], Any]


@dataclass
class Job:
    """A run's rows: ("start", row) and ("row", row) messages; its outcome is done, time-limit or device-lost."""

    impls: list[Implementation]
    cases: list[Case]
    settings: RunSettings
    threads: int  # torch's intra-op threads, as the run's own (they name the machine its rows are timed on)
    deadline: float | None = None  # time.monotonic(), the same clock in every process of a Linux machine
    skip: set[tuple] = field(default_factory=set)

    def run(self, send: Send, receive: Receive) -> tuple[str, Any]:
        import torch

        from .runner import DeviceLost, TimeLimitReached, run_cases
        from .shard import pin_device

        torch.set_num_threads(self.threads)
        if self.cases:
            pin_device(self.cases[0].device)  # under torchrun, the run's own GPU: cuda:LOCAL_RANK
        try:
            run_cases(
                self.impls,
                self.cases,
                settings=self.settings,
                on_row=lambda row: send(("row", row)),
                skip=self.skip,
                deadline=self.deadline,
                on_start=lambda row: send(("start", row)),
            )
        except TimeLimitReached:
            return "time-limit", None
        except DeviceLost:
            return "device-lost", None
        return "done", None


@dataclass
class CheckJob:
    """One implementation's conformance check: ("start", (case, seed)) and ("result", CheckResult) messages; its
    outcome is done, with (summary, device_lost) as conformance.checked returns them."""

    impl: Implementation
    device: str
    dtypes: tuple[str, ...]
    seed: int
    own: list[tuple]
    starting: Callable[[Case, int], None] | None = None
    moving: Callable[[str, int, float], None] | None = None

    def run(self, send: Send, receive: Receive) -> tuple[str, Any]:
        from ..check import conformance

        def starting(case: Case, seed: int) -> None:
            send(("start", (case, seed)))
            if self.starting:
                self.starting(case, seed)

        checked = conformance.checked(
            self.impl,
            self.device,
            self.dtypes,
            self.seed,
            self.own,
            starting,
            self.moving,
            on_result=lambda result: send(("result", result)),
        )
        return "done", checked


@dataclass
class LocalErrorsJob:
    """Local-inputs errors (check.expected.LocalErrors) served a row at a time: each request (impl, case) is
    answered ("result", figures, device_lost); None ends it. After a failure that left the device unusable it
    ends, for a new worker to take the next request."""

    settings: RunSettings
    serves = True  # it reads its connection: the run's end closing ends the read

    def run(self, send: Send, receive: Receive) -> tuple[str, Any]:
        from ..check.expected import LocalErrors
        from ..measure import failures

        errors = LocalErrors(self.settings)
        while (request := receive()) is not None:
            impl, case = request
            figures = errors.of(impl, case)
            lost = "softmax_local_note" in figures and not failures.device_usable(case.device)
            send(("result", figures, lost))
            if lost:
                return "device-lost", None
        return "done", None


def work(connection: Connection, job_bytes: bytes, run_pid: int) -> None:
    """The worker's main: unpickles its job here, with the run's sys.path, so that implementations registered from
    the run's path import in the worker too."""
    os.setsid()
    send = connection.send
    try:
        job: Job | CheckJob | LocalErrorsJob = pickle.loads(job_bytes)
        if getattr(job, "serves", False):
            _exit_when_gone(run_pid)
        else:
            _exit_with_the_run(connection)
        outcome, detail = job.run(send, connection.recv)
        send(("end", outcome, detail))
    except BaseException:  # noqa: BLE001 - the run records it; a worker has no one else to tell
        send(("end", "failed", traceback.format_exc()))
    finally:
        connection.close()


def _exit_with_the_run(connection: Connection) -> None:
    """Ends this process when the run's end of the connection closes (the run ended or was killed): the run sends
    nothing after the job, so a read returns only then."""

    def watch() -> None:
        try:
            connection.recv()
        except BaseException:  # noqa: BLE001 - EOFError, or anything else: the run is gone either way
            pass
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-the-run", daemon=True).start()


def _exit_when_gone(run_pid: int) -> None:
    """Ends this process once the run's process is gone, for a job that reads its connection itself: checked every
    second, by the run's pid and start time (a pid the system gave to another process since does not pass)."""
    from .in_flight import process_start

    started = process_start(run_pid)

    def watch() -> None:
        while process_start(run_pid) == started and started is not None:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-the-run-is-gone", daemon=True).start()
