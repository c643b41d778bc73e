"""A run whose process dies outright (no exception: the out-of-memory killer, a crash in native code) leaves
the row it died in named beside its results; resuming records that row as an error instead of dying there
again and again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from suite.cli import main
from suite.results import files as results
from suite.run.in_flight import InFlight
from tests.plugin_package import write_package

ROOT = Path(__file__).resolve().parent.parent

MODULE = textwrap.dedent('''
    import os, signal
    import torch
    from implementations import Implementation

    class DiesAt33(Implementation):
        """Softmax attention that kills its own process at 33 tokens, as the kernel's OOM killer would."""

        def __call__(self, q, k, v, *, causal=False):
            if q.shape[-2] == 33:
                os.kill(os.getpid(), signal.SIGKILL)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    class SegfaultsAt33(DiesAt33):
        """Reads address 0 at 33 tokens, as a kernel with a bad pointer would."""

        def __call__(self, q, k, v, *, causal=False):
            if q.shape[-2] == 33:
                import ctypes
                ctypes.string_at(0)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    class ExitsAt33(DiesAt33):
        """Raises SystemExit(0) at 33 tokens, as a library that calls sys.exit on a bad state would."""

        def __call__(self, q, k, v, *, causal=False):
            if q.shape[-2] == 33:
                raise SystemExit(0)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    class TerminatedAt33(DiesAt33):
        """Sent SIGTERM at 33 tokens, as by `timeout` or a cancelled CI job."""

        def __call__(self, q, k, v, *, causal=False):
            if q.shape[-2] == 33:
                os.kill(os.getpid(), signal.SIGTERM)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
''')

GRID = [
    "--impl",
    "naive,dies-at-33",
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

ONE_ROW = [
    "--impl",
    "naive",
    "--seq-len",
    "17",
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


def _package(where: Path) -> Path:
    """A package declaring `dies-at-33` and its kin as implementations, as `pip install` would leave it."""
    declared = {
        name: f"dying_attention:{cls}"
        for name, cls in (
            ("dies-at-33", "DiesAt33"),
            ("terminated-at-33", "TerminatedAt33"),
            ("segfaults-at-33", "SegfaultsAt33"),
            ("exits-at-33", "ExitsAt33"),
        )
    }
    return write_package(where, "dying_attention", MODULE, declared)


def _attnbench(*args: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "suite", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_row_whose_process_died_is_recorded_on_resume_and_the_run_goes_on(tmp_path):
    package = _package(tmp_path / "package")
    out = tmp_path / "r.jsonl"
    died = _attnbench("run", *GRID, "--in-process", "--out", str(out), path=package)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert [(r["impl"], r["seq_len"]) for r in results.read(out)[1]] == [
        ("naive", 17),
        ("dies-at-33", 17),
        ("naive", 33),
    ]
    assert json.loads(InFlight(out).path.read_text())["impl"] == "dies-at-33"

    resumed = _attnbench("run", *GRID, "--in-process", "--out", str(out), "--resume", path=package)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "died while measuring dies-at-33 on B1-H1-N33-D16-fp32-dense-fwd: recorded as an error row" in resumed.stderr
    rows = {(r["impl"], r["seq_len"]): r for r in results.read(out)[1]}
    assert len(rows) == 6 and rows[("dies-at-33", 33)]["status"] == "error"
    assert "the process died while measuring this row" in rows[("dies-at-33", 33)]["reason"]
    assert rows[("dies-at-33", 65)]["status"] == "ok" and rows[("naive", 65)]["status"] == "ok"
    assert not InFlight(out).path.exists()  # the resumed run ended normally


def test_a_segfault_names_the_python_line_it_happened_in_and_its_row(tmp_path):
    package = _package(tmp_path / "package")
    out = tmp_path / "r.jsonl"
    crashed = _attnbench(
        "run", *GRID[:1], "naive,segfaults-at-33", *GRID[2:], "--in-process", "--out", str(out), path=package
    )
    assert crashed.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in crashed.stderr
    assert re.search(r'File ".*dying_attention\.py", line \d+ in __call__', crashed.stderr)
    assert json.loads(InFlight(out).path.read_text())["impl"] == "segfaults-at-33"


def test_check_verbose_names_the_case_a_crash_ended_the_process_in(tmp_path):
    package = _package(tmp_path / "package")
    crashed = _attnbench(
        *("check", "--impl", "segfaults-at-33", "--device", "cpu", "--dtype", "float32", "--verbose", "--in-process"),
        path=package,
    )
    assert crashed.returncode == -signal.SIGSEGV
    before_the_crash = crashed.stderr[: crashed.stderr.index("Fatal Python error")].strip().splitlines()[-1]
    assert before_the_crash == "  segfaults-at-33: B2-H4-KV2-N33-D16-fp32-dense-fwd+bwd seed 247 ..."


def test_sigterm_ends_a_run_as_ctrl_c_does_and_blames_no_row(tmp_path):
    package = _package(tmp_path / "package")
    out = tmp_path / "r.jsonl"
    grid = [*GRID[:1], "naive,terminated-at-33", *GRID[2:]]
    stopped = _attnbench("run", *grid, "--in-process", "--out", str(out), path=package)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert f"terminated (SIGTERM): every finished row is in {out}" in stopped.stderr
    assert len(results.read(out)[1]) == 3 and not InFlight(out).path.exists()  # resuming measures N33 again


def test_a_kernels_system_exit_is_its_row_and_the_process_goes_on(tmp_path):
    """SystemExit(0) inside a kernel once ended the run with exit status 0 after one row of six: a CI job passed."""
    package = _package(tmp_path / "package")
    out = tmp_path / "r.jsonl"
    done = _attnbench("run", *GRID[:1], "naive,exits-at-33", *GRID[2:], "--out", str(out), path=package)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {(r["impl"], r["seq_len"]): r for r in results.read(out)[1]}
    assert len(rows) == 6 and rows.pop(("exits-at-33", 33))["reason"].startswith("SystemExit: 0 (raised by")
    assert {row["status"] for row in rows.values()} == {"ok"} and f"results: {out}" in done.stdout


def test_runs_that_end_in_a_way_python_sees_leave_nothing_behind(tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    assert not InFlight(out).path.exists()
    assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume", "--time-limit", "0.001"]) == 3
    assert not InFlight(out).path.exists()


def test_a_marker_whose_row_was_written_after_all_records_nothing(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    InFlight(out).started(results.read(out)[1][0])  # died between writing its row and naming the next one
    InFlight(out).path.write_text(InFlight(out).path.read_text().replace(str(os.getpid()), "999999999"))
    assert main(["run", *ONE_ROW, "--out", str(out), "--resume"]) == 0
    assert "nothing to run" in capsys.readouterr().out and len(results.read(out)[1]) == 1


def test_without_locks_a_marker_of_a_live_process_refuses_the_run(tmp_path, capsys, monkeypatch):
    """Where the platform has no flock (results/lock.py), the marker's pid and that process's start time tell a
    run still going from a pid the system reused."""
    from suite.results import lock
    from suite.run.in_flight import process_start

    monkeypatch.setattr(lock, "fcntl", None)
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        InFlight(out).started(results.read(out)[1][0])
        marker = json.loads(InFlight(out).path.read_text())
        InFlight(out).path.write_text(json.dumps({**marker, "pid": other.pid, "started": process_start(other.pid)}))
        assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume"]) == 2
        assert f"is being written by another process on this machine (pid {other.pid})" in capsys.readouterr().err
        assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume", "--dry-run"]) == 0
        assert "died" not in capsys.readouterr().err  # it is alive: nothing died
    finally:
        other.kill()
        other.wait()
    assert len(results.read(out)[1]) == 1 and not lock.WriterLock(out).path.exists()
