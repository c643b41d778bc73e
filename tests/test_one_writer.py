"""One process writes a results file at a time: a second run, resume or amendment is refused, however close together
they start, with one line naming the file and the process holding it; a lock or marker left by a dead process never
blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from suite.cli import main
from suite.results import files as results
from suite.results.lock import ResultsLocked, WriterLock
from suite.run.in_flight import DIED_REASON, InFlight

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300  # a bound on a stuck subprocess, far above the seconds these take

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

MODULE = textwrap.dedent('''
    import os, time
    import torch
    from implementations import Implementation

    class WaitsForRelease(Implementation):
        """Softmax attention whose calls wait for the file ATTNBENCH_TEST_RELEASE names to appear: the run that
        holds the results file stays in its first row until the test lets it go."""

        def __call__(self, q, k, v, *, causal=False):
            while not os.path.exists(os.environ["ATTNBENCH_TEST_RELEASE"]):
                time.sleep(0.01)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
''')

# Imports what a run needs first, says so, then starts when the test writes a line: both runs start at once.
AT_ONCE = textwrap.dedent("""
    import sys
    import suite.run.session, suite.run.runner
    from suite.cli import main
    print("ready", flush=True)
    sys.stdin.readline()
    sys.exit(main(sys.argv[1:]))
""")

# Holds the lock on a results file and names a row in its marker, as a run measuring it would, until told to stop.
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from suite.results import files
    from suite.results.lock import WriterLock
    from suite.run.in_flight import InFlight

    out = Path(sys.argv[1])
    assert WriterLock(out).acquire()
    InFlight(out).started(files.read(out)[1][0])
    print("locked", flush=True)
    sys.stdin.readline()
""")


def _package(where: Path) -> Path:
    where.mkdir()
    (where / "waiting_attention.py").write_text(MODULE)
    info = where / "waiting_attention-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: waiting-attention\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[attnbench.implementations]\nwaits-for-release = waiting_attention:WaitsForRelease\n"
    )
    return where


def _python(script: str, *args: str, package: Path | None = None, release: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (package, ROOT) if p)}
    if release is not None:
        env["ATTNBENCH_TEST_RELEASE"] = str(release)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_to_end(processes: list[subprocess.Popen]) -> subprocess.Popen:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        ended = [process for process in processes if process.poll() is not None]
        if ended:
            return ended[0]
        time.sleep(0.05)
    raise AssertionError("neither process ended")


def _two_at_once(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, subprocess.Popen, str]:
    """Starts `attnbench *argv` twice at once, on a grid whose first row waits for a release; returns (the refused
    one, the one that ran, its stderr): whichever took the lock holds it until released, so the other cannot slip
    in after it."""
    package, release = _package(tmp_path / "package"), tmp_path / "release"
    processes = [_python(AT_ONCE, *argv, package=package, release=release) for _ in range(2)]
    try:
        for process in processes:
            assert process.stdout.readline() == "ready\n", process.stderr.read()[-2000:]
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        refused = _first_to_end(processes)
        running = next(process for process in processes if process is not refused)
        release.touch()
        _, err = running.communicate(timeout=WAIT_S)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    return refused, running, err


def _refusal(out: Path, holder: int) -> str:
    return (
        f"attnbench: error: --out: {str(out)!r} is being written by another process on this machine (pid {holder}); "
        "two processes appending to one file would interleave their rows"
    )


def test_two_runs_started_at_once_on_one_file_one_proceeds_the_other_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    grid = [*ONE_ROW[:1], "waits-for-release,naive", *ONE_ROW[2:], "--out", str(out)]
    refused, running, err = _two_at_once(tmp_path, "run", *grid)
    assert refused.returncode == 2
    assert refused.stderr.read().strip().splitlines()[-1] == _refusal(out, running.pid)
    assert running.returncode == 0, err[-2000:]
    runs, rows = results.read(out)
    assert len(runs) == 1 and [row["impl"] for row in rows] == ["waits-for-release", "naive"]
    assert sorted(os.listdir(tmp_path)) == ["package", "r.jsonl", "release"]  # no lock or marker left


def test_two_resumes_started_at_once_one_proceeds_and_no_row_is_written_twice(tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    grid = [*ONE_ROW[:1], "naive,waits-for-release", *ONE_ROW[2:-4], "--causal", "both", *ONE_ROW[-2:]]
    refused, running, err = _two_at_once(tmp_path, "run", *grid, "--out", str(out), "--resume")
    assert refused.returncode == 2
    assert refused.stderr.read().strip().splitlines()[-1] == _refusal(out, running.pid)
    assert running.returncode == 0, err[-2000:]
    with open(out, encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    keys = [(r["impl"], r["causal"]) for r in records if r["record"] == "result"]
    assert sum(r["record"] == "run" for r in records) == 2 and len(keys) == len(set(keys)) == 4


def test_a_file_a_live_process_holds_is_refused_to_run_and_local_errors_and_a_dry_run_reads_it(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    before = out.read_bytes()
    holder = _python(HOLDER, str(out))
    try:
        assert holder.stdout.readline() == "locked\n", holder.stderr.read()[-2000:]
        capsys.readouterr()
        assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume"]) == 2
        assert f"is being written by another process on this machine (pid {holder.pid})" in capsys.readouterr().err
        assert main(["local-errors", str(out)]) == 2
        assert f"local-errors: {str(out)!r} is being written by another process" in capsys.readouterr().err
        assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume", "--dry-run"]) == 0
        assert "died" not in capsys.readouterr().err  # it is alive: nothing died
    finally:
        holder.kill()
        holder.wait()
    assert out.read_bytes() == before


def test_a_lock_and_marker_left_by_a_killed_process_never_block(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    holder = _python(HOLDER, str(out))
    assert holder.stdout.readline() == "locked\n", holder.stderr.read()[-2000:]
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert WriterLock(out).path.exists() and InFlight(out).path.exists()  # as a kill -9 leaves them
    assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]


@pytest.mark.parametrize("reused_by", ["pid 1", "this process"])
def test_a_stale_marker_whose_pid_went_to_another_process_does_not_block(tmp_path, capsys, reused_by):
    out = tmp_path / "r.jsonl"
    assert main(["run", *ONE_ROW, "--out", str(out)]) == 0
    marker = InFlight(out)
    marker.started({**results.read(out)[1][0], "causal": True})  # a process died measuring the causal row
    record = json.loads(marker.path.read_text())
    pid = 1 if reused_by == "pid 1" else os.getpid()
    marker.path.write_text(json.dumps({**record, "pid": pid, "started": -1}))  # the process it named started then
    capsys.readouterr()
    assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume", "--dry-run"]) == 0
    assert "died while measuring naive on B1-H1-N17-D16-fp32-causal-fwd" in capsys.readouterr().err
    assert main(["run", *ONE_ROW, "--causal", "both", "--out", str(out), "--resume"]) == 0
    died = {row["causal"]: row for row in results.read(out)[1]}[True]
    assert died["status"] == "error" and died["reason"] == DIED_REASON


def test_a_second_lock_on_one_file_is_refused_naming_the_holder_and_released_with_its_file(tmp_path):
    out = tmp_path / "r.jsonl"
    with WriterLock(out) as held:
        assert held
        with pytest.raises(ResultsLocked) as refused:
            WriterLock(out).acquire()
        assert refused.value.pid == os.getpid() and str(out) in str(refused.value)
    assert not WriterLock(out).path.exists()
    with WriterLock(out) as held:  # released: the next one takes it
        assert held


def test_the_api_takes_the_lock_on_its_out_file(tmp_path):
    from suite import api

    out = tmp_path / "r.jsonl"
    with WriterLock(out):
        with pytest.raises(ValueError, match=r"^out: .*r\.jsonl.* two processes appending to one file"):
            api.benchmark("naive", seq_len=9, heads=1, head_dim=8, batch=1, device="cpu", out=out, progress=False)
    assert not out.exists()
    frame = api.benchmark("naive", seq_len=9, heads=1, head_dim=8, batch=1, device="cpu", out=out, progress=False)
    assert list(frame.status) == ["ok"] and not WriterLock(out).path.exists()
