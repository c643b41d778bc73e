"""A disk that fills up during a run: the run stops with one line naming the path and the error (exit 1), every
finished row intact and no partial file left; a run that cannot write anything of its own exits 2 with one line."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import pytest

from suite.cli import main
from suite.results import files as results
from tests.results_files import rewrite_rows

FULL = os.strerror(errno.ENOSPC)

GRID = [
    "--impl",
    "naive",
    "--seq-len",
    "17,33,65",
    "--heads",
    "1",
    "--batch",
    "1",
    "--head-dim",
    "16",
    "--dtype",
    "float32",
    "--mode",
    "fwd",
    "--causal",
    "false",
    "--device",
    "cpu",
]


def _fill_at_line(monkeypatch, line: int, *, partly: bool) -> None:
    """The disk fills on the results file's `line`-th line (1: the header): its write stops part way (`partly`),
    or all of it is written and the flush to the disk fails, as on a filesystem that allocates late."""
    real_write, real_fsync, lines = os.write, os.fsync, []

    def write(fd: int, data) -> int:
        if bytes(data[:11]) == b'{"record": ':  # a results line starts; the lock's and marker's do not
            lines.append(fd)
            if partly and len(lines) == line:
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, FULL)
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        if not partly and len(lines) == line and lines[-1] == fd:
            raise OSError(errno.ENOSPC, FULL)
        real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)


def _fill_at_marker(monkeypatch, marker: int) -> None:
    """The disk fills when the in-flight marker is written for the `marker`-th time (its staging file made, not
    moved into place)."""
    real_replace, moves = os.replace, []

    def replace(source, destination) -> None:
        if str(destination).endswith(".running"):
            moves.append(destination)
            if len(moves) == marker:
                raise OSError(errno.ENOSPC, FULL)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)


def _rows(path: Path) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn last line to skip
        return results.read(path)[1]


@pytest.mark.parametrize("partly", [True, False], ids=["write", "flush"])
def test_a_disk_full_mid_run_stops_with_one_line_and_every_finished_row_intact(tmp_path, monkeypatch, capsys, partly):
    out = tmp_path / "r.jsonl"
    _fill_at_line(monkeypatch, 4, partly=partly)  # the header, two rows, then the third row's line
    assert main(["run", *GRID, "--out", str(out)]) == 1
    stopped = [line for line in capsys.readouterr().err.splitlines() if "stopped" in line]
    assert stopped == [
        f"stopped: cannot write {str(out)!r}: {FULL}; every finished row is in {out} (continue with --resume "
        f"--out {out} once it can be written)"
    ]
    assert [row["seq_len"] for row in _rows(out)] == [17, 33] and out.read_bytes().endswith(b"\n")
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]  # no marker, staging file or lock left

    monkeypatch.undo()
    assert main(["run", *GRID, "--out", str(out), "--resume"]) == 0
    assert [row["seq_len"] for row in _rows(out)] == [17, 33, 65]


def test_a_disk_full_when_naming_the_row_in_flight_stops_the_run_and_leaves_no_staging_file(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "r.jsonl"
    _fill_at_marker(monkeypatch, 5)  # each case's row is named twice, before its inputs are made and before its call
    assert main(["run", *GRID, "--out", str(out)]) == 1
    running = f"{str(out) + '.running'!r}"
    assert f"stopped: cannot write {running}: {FULL}; every finished row is in {out}" in capsys.readouterr().err
    assert [row["seq_len"] for row in _rows(out)] == [17, 33]
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]


@pytest.mark.parametrize("where", ["header", "marker"])
def test_a_run_that_cannot_write_anything_of_its_own_exits_2_with_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, capsys, where
):
    out = tmp_path / "r.jsonl"
    if where == "header":
        _fill_at_line(monkeypatch, 1, partly=True)
    else:
        _fill_at_marker(monkeypatch, 1)
    assert main(["run", *GRID, "--out", str(out)]) == 2
    path = out if where == "header" else Path(str(out) + ".running")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"attnbench: error: --out: cannot write {str(path)!r}: {FULL}"
    )
    assert os.listdir(tmp_path) == []


def test_a_resume_that_cannot_write_its_header_leaves_the_file_as_it_was(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "17", "--out", str(out)]) == 0
    before = out.read_bytes()
    _fill_at_line(monkeypatch, 1, partly=True)
    assert main(["run", *GRID, "--out", str(out), "--resume"]) == 2
    assert f"attnbench: error: --out: cannot write {str(out)!r}: {FULL}" in capsys.readouterr().err
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["r.jsonl"]


def test_local_errors_on_a_full_disk_stops_with_one_line_and_keeps_the_rows_amended(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.jsonl"
    grid = [*GRID[:1], "linear", *GRID[2:]]
    assert main(["run", *grid, "--out", str(out)]) == 0
    rewrite_rows(out, lambda row: {k: v for k, v in row.items() if not k.startswith("softmax_local")})
    before = out.read_bytes()

    _fill_at_line(monkeypatch, 1, partly=False)  # its header
    assert main(["local-errors", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"attnbench: error: local-errors: cannot write {str(out)!r}: {FULL}"
    )
    assert out.read_bytes() == before

    monkeypatch.undo()
    _fill_at_line(monkeypatch, 3, partly=True)  # its header, one amended row, then the next
    assert main(["local-errors", str(out)]) == 1
    assert f"stopped: cannot write {str(out)!r}: {FULL}; the rows amended so far are in {out}" in (
        capsys.readouterr().err
    )
    amended = [row for row in _rows(out) if row.get("softmax_local_rel_rms_err") is not None]
    assert len(amended) == 1 and sorted(os.listdir(tmp_path)) == ["r.jsonl"]

    monkeypatch.undo()
    assert main(["local-errors", str(out)]) == 0
    assert "amended 2 rows" in capsys.readouterr().out
