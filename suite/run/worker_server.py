"""Where workers start from: a fork server that imports torch and the runner once, so that each worker starts in
milliseconds and none inherits a CUDA context (the server never makes one). This module imports neither, so that a
command can start the server first and import them itself meanwhile."""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context

PRELOADED = ["suite.run.worker", "suite.run.runner", "suite.check.conformance"]


@functools.lru_cache(maxsize=1)
def context() -> multiprocessing.context.BaseContext:
    """The fork server's context; spawn where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(PRELOADED)
    return forkserver


def start_early() -> None:
    """Starts the fork server now, its imports running beside the command's own."""
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
