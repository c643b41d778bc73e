"""One writer per results file: an exclusive lock, held for as long as a process writes the file.

Two processes appending to one results file would interleave their rows, each timed under the other's load. So a
process that writes one (`run`, `local-errors`) first takes an exclusive `flock` on `RESULTS.lock` beside it, without
waiting, before it writes anything: a second process is refused, however close together the two started. The
operating system releases the lock when its process ends, however it ends (a `kill -9`, a crash, the out-of-memory
killer), so a lock left behind never blocks the next run. The file holds the holder's pid, for the refusal to name,
and is removed when the lock is released.

Where the platform has no `fcntl` (Windows), or the filesystem takes no locks, nothing is locked: the in-flight
marker's check of the pid and its start time (run/in_flight.py) is then the only guard.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

# The holder writes its pid just after taking the lock; a process refused in between waits this long for it.
HOLDER_WAIT_S = 2.0
UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}  # a filesystem without locks


class ResultsLocked(Exception):
    """Another process holds the lock on a results file; `pid` is that process's, None where it cannot be told."""

    def __init__(self, results: Path, pid: int | None):
        self.results, self.pid = results, pid
        holder = f"pid {pid}" if pid is not None else "its pid unknown"
        super().__init__(f"{str(results)!r} is being written by another process on this machine ({holder})")


class WriterLock:
    """The lock on `results` (RESULTS.lock beside it). `acquire` takes it or raises; `release` (or leaving a `with`
    block) gives it back; `held` says whether this process holds it."""

    def __init__(self, results: str | Path):
        self.results = Path(results)
        self.path = self.results.with_name(self.results.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """True once the lock is held; False, with nothing locked, where locks are not available. Raises
        ResultsLocked where another process holds it, OSError where the lock file cannot be written (a full disk,
        a folder that takes no new files)."""
        if fcntl is None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _locked_descriptor(self.path, self.results)
        if fd is None:
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            _remove_and_close(self.path, fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            _remove_and_close(self.path, self._fd)
            self._fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()


def _locked_descriptor(path: Path, results: Path) -> int | None:
    """A descriptor of `path` holding its exclusive lock; None where the filesystem takes no locks."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by programs it starts
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise ResultsLocked(results, pid) from None
        except OSError as error:
            _remove_and_close(path, fd)
            if error.errno in UNLOCKABLE:
                return None
            raise
        if _still_named(path, fd):
            return fd
        # The holder removed the file on releasing it after this process opened it: lock the one at the path now.
        os.close(fd)


def _still_named(path: Path, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, waiting a moment where it is not there yet."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
            if _alive(pid):  # a dead pid was left by a killed holder, before the new one wrote its own
                return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_and_close(path: Path, fd: int) -> None:
    """Removed while still locked, so that a process that opened it meanwhile finds it gone once it gets the lock."""
    with contextlib.suppress(OSError):
        if _still_named(path, fd):
            os.unlink(path)
    os.close(fd)
