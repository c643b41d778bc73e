"""Telling a stop the user asked for from an exception a kernel raised.

A row catches whatever its implementation raises, `BaseException`s included: a kernel's `SystemExit(0)`,
`GeneratorExit` or `KeyboardInterrupt` is a failure of that row, and must not end the run (silently, with
exit status 0, for `SystemExit(0)`). Ctrl-C (SIGINT) and SIGTERM must still stop it, and both arrive as a
KeyboardInterrupt raised wherever the program is, in a kernel too. So while a run, a check or an amendment
goes on, their handlers note that the signal arrived before raising: an interrupt after a signal stops the
run, one without is the row's.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised where the program is when SIGTERM arrives; handled wherever Ctrl-C is."""


_arrived: list[int] = []  # the stop signals received while recording, oldest first
_recording = 0  # how many stop_signals_recorded() are entered (nested ones add nothing)


@contextlib.contextmanager
def stop_signals_recorded() -> Iterator[None]:
    """SIGINT and SIGTERM noted as they arrive, where a Python handler turns them into exceptions (Python's own
    raises KeyboardInterrupt on SIGINT; `attnbench` raises Terminated on SIGTERM): each such handler is wrapped, and
    one that returns (a program's that chose not to stop) leaves no note. Nested uses share the outermost's."""
    global _recording
    if _recording or threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    wrapped = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if callable(handler):  # not SIG_DFL, SIG_IGN or a handler set outside Python: those raise nothing
            wrapped[number] = handler
            signal.signal(number, _noting(handler))
    _recording += 1
    try:
        yield
    finally:
        _recording -= 1
        _arrived.clear()
        for number, handler in wrapped.items():
            signal.signal(number, handler)


def _noting(handler):
    def noted(signum, frame) -> None:
        _arrived.append(signum)  # before the handler: what it raises, wherever the program is, is a stop
        handler(signum, frame)
        _arrived.pop()

    return noted


def stop_asked() -> KeyboardInterrupt | None:
    """The interrupt to stop with where SIGINT or SIGTERM arrived while recording, else None."""
    if not _arrived:
        return None
    return Terminated() if _arrived[0] == signal.SIGTERM else KeyboardInterrupt()


def is_stop(error: BaseException) -> bool:
    """Whether `error`, caught around an implementation's call, stops the run rather than failing its row: any
    exception once a stop signal arrived (a kernel may have turned the interrupt into another); a KeyboardInterrupt
    where signals are not recorded, in the main thread (it cannot be told from Ctrl-C there)."""
    if _arrived:
        return True
    recorded = _recording or threading.current_thread() is not threading.main_thread()
    return isinstance(error, KeyboardInterrupt) and not recorded


def raise_if_stop(error: BaseException) -> None:
    """In an `except BaseException` around an implementation's call: re-raises a stop (see is_stop), as the
    signal's interrupt where the kernel turned it into another exception."""
    if not is_stop(error):
        return
    if isinstance(error, KeyboardInterrupt):
        raise error
    raise stop_asked() or KeyboardInterrupt() from error


NOT_A_STOP = " (raised by the implementation, not by a signal: recorded as its failure, and the rest went on)"


def not_a_stop_note(error: BaseException) -> str:
    """What a failure's description adds for a BaseException that is no Exception (SystemExit, GeneratorExit, a
    KeyboardInterrupt of the kernel's own): why it did not end the program."""
    return "" if isinstance(error, Exception) else NOT_A_STOP
