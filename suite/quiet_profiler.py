"""Starting and stopping torch.profiler without its C++ side's log lines (one at each start and stop),
which go to file descriptor 2 past sys.stderr and would interleave with a run's progress."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from torch.profiler import profile


def start_quietly(profiler: profile) -> None:
    with _native_stderr_silenced():
        profiler.start()


def stop_quietly(profiler: profile) -> None:
    with _native_stderr_silenced():
        profiler.stop()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    stderr_fd = 2  # where C++ writes, whatever object sys.stderr is now
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), stderr_fd)
        yield
    finally:
        os.dup2(saved, stderr_fd)
        os.close(saved)
