"""SIGTERM ends a command as Ctrl-C does. `timeout`, `kill` and a cancelled CI job send it, and by default
it ends Python at once: the row in progress would then look like one whose process died in it (see
in_flight), and be recorded as an error on the next `--resume`, blamed on its implementation."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from ..measure.stop_signals import Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def raise_terminated(signum, frame) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_word(interrupt: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
