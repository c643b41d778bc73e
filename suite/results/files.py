"""Results files: JSON Lines, an environment header line per run, one line per (implementation, case).

Each line is written whole and flushed as soon as its case finishes, so an interrupted run leaves
every finished row in a well-formed file. `load` reads one or many files into a DataFrame.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..case import FIXED, MODES, key_of_row
from ..measure import settings as measure_settings
from . import speed_settings
from .schema import ROW, ROW_COLUMNS, STATUSES, value_problem

FORMAT_VERSION = 1


class ResultsFormatError(ValueError):
    """A results file that cannot be read; the message names the file and line."""


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class CannotWrite(Exception):
    """A results file, or a file beside it, could not be written (a full disk, a quota, an I/O error); the message
    names the path and the error."""

    def __init__(self, path: str | Path, error: OSError):
        self.path, self.error = Path(path), error
        super().__init__(f"cannot write {str(path)!r}: {error.strerror or error}")


class ResultsWriter:
    """Appends to a results file; the header is written when the first line is. Each line reaches the file whole
    or not at all: one that cannot be written (CannotWrite) is cut off again, so the file ends with the last line
    written whole."""

    def __init__(self, path: Path, environment: dict[str, Any], run_info: dict[str, Any], run_id: str | None = None):
        self.path = Path(path)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._header = {
            "record": "run",
            "format": FORMAT_VERSION,
            "run_id": self.run_id,
            "environment": environment,
            **run_info,
        }
        self._fd: int | None = None
        self.started = False  # whether this run's header is in the file: until then, nothing of it is

    def _write(self, record: dict[str, Any]) -> None:
        self.write_header()
        self._write_line(record)

    def write_header(self) -> None:
        """Writes the header now, if it is not in the file yet: for a run that must be seen even without rows."""
        if self._fd is None:
            self._start()

    def _start(self) -> None:
        """Opens the file and writes the header; a file this created is removed again where the header fails."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            _end_last_line(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as error:
            raise CannotWrite(self.path, error) from None
        try:
            self._write_line(self._header)
        except CannotWrite:
            self.close()
            if not existed:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            raise
        self.started = True

    def _write_line(self, record: dict[str, Any]) -> None:
        line = memoryview((json.dumps(json_safe(record), allow_nan=False) + "\n").encode("utf-8"))
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(self._fd, line) :]
            os.fsync(self._fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)  # truncating takes no space: the part written goes again
            raise CannotWrite(self.path, error) from None

    def append(self, row: dict[str, Any]) -> None:
        """Writes `row` in the schema's column order; a column the schema does not declare, or a value of
        another type, is a bug in the harness, caught before it reaches a file every reader would refuse."""
        record = {"record": "result", "run_id": self.run_id, **row}
        problems = [problem for name, value in record.items() if (problem := value_problem(name, json_safe(value)))]
        if problems:
            raise ValueError(f"result row for {row.get('impl')!r}: {'; '.join(problems)}")
        self._write({column.name: record[column.name] for column in ROW if column.name in record})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _end_last_line(path: Path) -> None:
    """Before appending: a run killed mid-write leaves a last line without its newline, and the next record
    would be joined to it, making the file unreadable from there on. A complete record there gets its
    newline; a torn one (readers already skip it) is cut off."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        warnings.warn(f"{path}: cutting off an incomplete last line before appending", stacklevel=3)
        with open(path, "r+b") as file:
            file.truncate(start)
        return
    with open(path, "ab") as file:
        file.write(b"\n")


def _lines(path: Path) -> tuple[list[bytes], bool]:
    """The file's lines, undecoded, after a UTF-8 byte-order mark (an editor's, harmless) if any; and whether its
    last line has its newline."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ResultsFormatError(f"{path}: cannot read results file: {error}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    return data.splitlines(), data.endswith(b"\n")


def _not_utf8(path: Path, number: int, error: UnicodeDecodeError) -> str:
    """Where a line is not UTF-8, and how to keep the rows before it (attnbench writes ASCII: another tool or a
    damaged disk wrote this)."""
    kept = number - 1
    return (
        f"{path}:{number}: not valid UTF-8 (byte {error.start + 1} of the line: {error.reason}); the {kept} "
        f"line{'s' * (kept != 1)} before it are intact: keep them (head -n {kept} {path} > KEPT.jsonl) and "
        "`attnbench run --resume --out KEPT.jsonl` measures the rest"
    )


def _read_records(path: Path) -> Iterable[dict[str, Any]]:
    lines, last_ended = _lines(path)
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        # A run killed mid-write leaves at most one torn last line, without its newline (each record is written
        # whole with it); an ended line that is not JSON is not ours, wherever it stands.
        torn = number == len(lines) and not last_ended
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            if torn:
                warnings.warn(f"{path}:{number}: ignoring incomplete last line", stacklevel=2)
                continue
            raise ResultsFormatError(_not_utf8(path, number, error)) from None
        except json.JSONDecodeError as error:
            if torn:
                warnings.warn(f"{path}:{number}: ignoring incomplete last line", stacklevel=2)
                continue
            raise ResultsFormatError(f"{path}:{number}: not valid JSON: {error}") from None
        if not isinstance(record, dict) or record.get("record") not in ("run", "result"):
            raise ResultsFormatError(f"{path}:{number}: not an attnbench record (expected a 'run' or 'result' object)")
        problem = _header_problem(record) if record["record"] == "run" else _row_problem(record)
        if problem:  # a line edited by hand or by another tool: every reader would trip over it somewhere else
            raise ResultsFormatError(f"{path}:{number}: {record['record']} record: {problem}")
        yield record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _header_problem(record: dict[str, Any]) -> str | None:
    if not isinstance(record.get("run_id"), str):
        return f"run_id is {record.get('run_id')!r} (allowed: a string naming the run)"
    return None


def _row_problem(row: dict[str, Any]) -> str | None:
    """What makes a result row unreadable, or None: its key (implementation and case) and status must be what
    `run` writes, since readers group, sort and compare by them."""
    checks = [
        ("impl", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        *((name, _is_count, "a positive integer") for name in ("batch", "heads", "seq_len", "head_dim")),
        ("kv_heads", lambda v: v is None or _is_count(v), "a positive integer, or null for = heads"),
        ("q_len", lambda v: v is None or _is_count(v), "a positive integer, or null for = seq_len"),
        ("dtype", lambda v: isinstance(v, str) and v != "", "a dtype name"),
        ("causal", lambda v: isinstance(v, bool), "true or false"),
        ("mode", lambda v: v in MODES, ", ".join(MODES)),
        ("device", lambda v: isinstance(v, str) and v != "", "a device name"),
        ("status", lambda v: v in STATUSES, ", ".join(STATUSES)),
        (
            "time_ms",
            lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
            "a number, or null",
        ),
    ]
    for name, valid, allowed in checks:
        if not valid(row.get(name)):
            return f"{name} is {row.get(name)!r} (allowed: {allowed})"
    return next((problem for name, value in row.items() if (problem := value_problem(name, value))), None)


def cpu_machine(model: str, threads: int | None) -> str:
    """'Intel(R) Xeon(R) Processor (2 threads)'; the model alone where the thread count was not recorded."""
    return f"{model} ({threads} thread{'s' * (threads != 1)})" if threads else model


def recorded_machine(environment: dict[str, Any]) -> str | None:
    """The model whose speed a run measured, as its header's environment records it: the GPU's on cuda,
    the CPU's with its thread count otherwise (environment.machine_name on the machine itself); None for
    records that lack it."""
    if environment.get("device") == "cuda":
        return environment.get("gpu")
    model = environment.get("cpu")
    return cpu_machine(model, environment.get("cpu_threads")) if model else None


def software_of(environment: dict[str, Any]) -> str | None:
    """'torch 2.11.0+cu130, CUDA 13.0': what a chart of the run's times was measured with."""
    parts = [
        f"{name} {environment[key]}" for key, name in (("torch", "torch"), ("cuda", "CUDA")) if environment.get(key)
    ]
    return ", ".join(parts) or None


def batching(run: dict[str, Any], row: dict[str, Any]) -> str | None:
    """How the run that measured `row` chose its batch: `16384 tokens per batch` (batch = tokens // seq_len),
    `batch 4` (one batch for every length), or None where its header does not say. Rows of different
    batchings measure different work at the same length, so they are never compared or drawn as one series."""
    grid = run.get("grid") or {}
    if grid.get("batch"):
        return f"batch {row.get('batch')}"
    tokens = grid.get("tokens_per_batch")
    return f"{tokens} tokens per batch" if tokens else None


def read(path: Path, written: Counter | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(run headers, result rows) of one file. A case run again (`run --resume --retry`) appears twice
    in the file; its later row replaces the earlier one, in the earlier one's place. `written`, if given, counts
    the rows each run wrote, by run_id, replaced ones too (not rows an amendment appended again under it)."""
    runs, latest = [], {}
    for record in _read_records(path):
        if record["record"] == "run":
            runs.append(record)
            continue
        latest[key_of_row(record)] = record  # a dict keeps the first insertion's position
        if written is not None and record.get("local_errors_run_id") is None:
            written[record["run_id"]] += 1
    return runs, list(latest.values())


def load(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """All result rows of one or many files, with each row's GPU name (`gpu`), the model that timed it
    (`machine`: its GPU, or its CPU), how its run chose the batch (`batching`) and source file."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for path in paths:
        runs, rows = read(Path(path))
        by_id = {run["run_id"]: run for run in runs}
        for row in rows:
            run = by_id.get(row.get("run_id"), {})
            env = run.get("environment", {})
            row.setdefault("gpu", env.get("gpu"))
            row["machine"] = recorded_machine(env)
            row["software"], row["attnbench_commit"] = software_of(env), env.get("git_commit")
            row["settings"] = speed_settings.summary(env.get("speed_settings"))
            row["distorted_by"] = ", ".join(speed_settings.distorting(env.get("speed_settings"))) or None
            row["timing"] = measure_settings.describe(run.get("timing_policy"))
            row["batching"] = batching(run, row)
            row["source"] = str(path)
        frames.append(pd.DataFrame(rows))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in ROW_COLUMNS:
        if column not in frame:
            frame[column] = None
    return with_explicit_shape(frame.drop(columns=["record"], errors="ignore"))


def with_explicit_shape(frame: pd.DataFrame) -> pd.DataFrame:
    """kv_heads None means as many key/value heads as query heads, q_len None as many queries as keys, docs None one
    document per sequence: say so, so rows match and group (pandas leaves rows with a missing group key out of
    every group)."""
    if not frame.empty:
        for column, default in (("kv_heads", "heads"), ("q_len", "seq_len")):
            given = frame[column] if column in frame else pd.Series(None, index=frame.index)
            frame[column] = given.where(given.notna(), frame[default]).astype("int64")
        docs = frame["docs"] if "docs" in frame else pd.Series(None, index=frame.index, dtype=object)
        frame["docs"] = docs.where(docs.notna(), FIXED)  # rows written before packed documents: one per sequence
    return frame


def timed_by_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The environments of the runs (a file's headers) that wrote timings, not those that only amended rows."""
    return [run.get("environment", {}) for run in runs if not run.get("amends")]


def finished_keys(rows: list[dict[str, Any]], retry: Iterable[str] = ()) -> set[tuple]:
    """(impl, *case fields) of every row (a file's, as `read` gives them), except those whose status is in
    `retry`; used by --resume."""
    retry = set(retry)
    return {key_of_row(row) for row in rows if row.get("status") not in retry}
