"""The process that measures a run's rows, watched by the run (supervisor.py), and what it tells the run.

It runs `runner.run_cases` on the rows its job names and sends, over its connection, ("start", row) before each
row (its implementation and case), ("row", row) after it, and ("end", outcome, detail) last: `done`, `time-limit`,
`device-lost` (its last row left the GPU unusable in this process) or `failed` (the harness raised; detail is the
traceback). It leads its own process group, so that Ctrl-C reaches the run, which stops it, and never a kernel.
"""

from __future__ import annotations

import os
import pickle
import threading
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from implementations import Implementation

from ..case import Case
from ..measure.settings import RunSettings


@dataclass
class Job:
    impls: list[Implementation]
    cases: list[Case]
    settings: RunSettings
    threads: int  # torch's intra-op threads, as the run's own (they name the machine its rows are timed on)
    deadline: float | None = None  # time.monotonic(), the same clock in every process of a Linux machine
    skip: set[tuple] = field(default_factory=set)


def work(connection: Connection, job_bytes: bytes) -> None:
    """The worker's main: unpickles its job here, with the run's sys.path, so that implementations registered from
    the run's path import in the worker too."""
    os.setsid()
    _exit_with_the_run(connection)
    send = connection.send
    try:
        job: Job = pickle.loads(job_bytes)
        outcome = _measure(job, on_row=lambda row: send(("row", row)), on_start=lambda row: send(("start", row)))
        send(("end", outcome, None))
    except BaseException:  # noqa: BLE001 - the run records it; a worker has no one else to tell
        send(("end", "failed", traceback.format_exc()))
    finally:
        connection.close()


def _measure(job: Job, on_row, on_start) -> str:
    import torch

    from .runner import DeviceLost, TimeLimitReached, run_cases
    from .shard import pin_device

    torch.set_num_threads(job.threads)
    if job.cases:
        pin_device(job.cases[0].device)  # under torchrun, the run's own GPU: cuda:LOCAL_RANK
    try:
        run_cases(
            job.impls,
            job.cases,
            settings=job.settings,
            on_row=on_row,
            skip=job.skip,
            deadline=job.deadline,
            on_start=on_start,
        )
    except TimeLimitReached:
        return "time-limit"
    except DeviceLost:
        return "device-lost"
    return "done"


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
