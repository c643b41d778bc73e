"""Starting and stopping torch.profiler without the routine lines its C++ side logs at every start and
stop (`... ActivityProfilerHandler.cpp:52] profiler_start`), which go to file descriptor 2 past sys.stderr
and would interleave with a run's progress. Anything else logged meanwhile (a CUPTI warning saying why
there will be no GPU times) is passed on."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from torch.autograd.profiler import profile as autograd_profile
from torch.profiler import profile

ROUTINE = re.compile(r"ActivityProfilerHandler\.cpp:\d+\] profiler_(start|stop)\s*$")


def start_quietly(profiler: profile | autograd_profile) -> None:
    with _routine_lines_dropped():
        profiler.__enter__()


def stop_quietly(profiler: profile | autograd_profile) -> None:
    with _routine_lines_dropped():
        profiler.__exit__(None, None, None)


@contextlib.contextmanager
def _routine_lines_dropped() -> Iterator[None]:
    stderr_fd = 2  # where C++ writes, whatever object sys.stderr is now
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        try:
            os.dup2(caught.fileno(), stderr_fd)
            yield
        finally:
            os.dup2(saved, stderr_fd)
            os.close(saved)
            caught.seek(0)
            kept = [
                line
                for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                if not ROUTINE.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
