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
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from implementations import Implementation

from ..case import Case
from ..measure.settings import RunSettings

Send = Callable[[tuple], None]


@dataclass
class Job:
    """A run's rows: ("start", row) and ("row", row) messages; its outcome is done, time-limit or device-lost."""

    impls: list[Implementation]
    cases: list[Case]
    settings: RunSettings
    threads: int  # torch's intra-op threads, as the run's own (they name the machine its rows are timed on)
    deadline: float | None = None  # time.monotonic(), the same clock in every process of a Linux machine
    skip: set[tuple] = field(default_factory=set)

    def run(self, send: Send) -> tuple[str, Any]:
        import torch

        from .runner import DeviceLost, TimeLimitReached, run_cases

        torch.set_num_threads(self.threads)
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

    def run(self, send: Send) -> tuple[str, Any]:
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


def work(connection: Connection, job_bytes: bytes) -> None:
    """The worker's main: unpickles its job here, with the run's sys.path, so that implementations registered from
    the run's path import in the worker too."""
    os.setsid()
    _exit_with_the_run(connection)
    send = connection.send
    try:
        job: Job | CheckJob = pickle.loads(job_bytes)
        outcome, detail = job.run(send)
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
