"""A run measures in a worker process that it watches: a row that hangs, eats host memory or crashes its process
is recorded with what happened, and a new worker measures the rows after it, without `--resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import implementations
from suite import api
from suite.cli import main
from suite.results import files as results
from suite.results.schema import RETRYABLE
from suite.run.in_flight import InFlight
from suite.run.supervisor import how_a_process_ended
from tests.plugin_package import write_package

ROOT = Path(__file__).resolve().parent.parent

MODULE = textwrap.dedent('''
    import ctypes, os, time
    import torch
    from implementations import Implementation
    from implementations.linear import LinearAttention

    def _sdpa(q, k, v, causal):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    class Misbehaves(Implementation):
        """Softmax attention, but at `at` tokens (every length if None) it misbehaves as `act` does; it writes its
        pid to $WORKER_PID_FILE first."""

        at = 33

        def __call__(self, q, k, v, *, causal=False):
            if self.at is None or q.shape[-2] == self.at:
                if os.environ.get("WORKER_PID_FILE"):
                    with open(os.environ["WORKER_PID_FILE"], "w") as file:
                        file.write(str(os.getpid()))
                self.act()
            return _sdpa(q, k, v, causal)

    class Hangs(Misbehaves):
        def act(self):
            while True:
                time.sleep(0.05)

    class Hoards(Misbehaves):
        """Takes host memory without bound (up to 8 GiB, so that a failing test leaves the machine alone)."""

        def act(self):
            hoard = []
            for _ in range(128):
                hoard.append(bytearray(b"x") * (64 << 20))  # written, so resident
                time.sleep(0.01)
            raise MemoryError("8 GiB taken and not stopped")

    class Segfaults(Misbehaves):
        def act(self):
            ctypes.string_at(0)

    class Exits(Misbehaves):
        def act(self):
            raise SystemExit(0)

    class LosesDevice(Misbehaves):
        """Fails as a kernel's illegal memory access does, leaving its process's device unusable."""

        def act(self):
            import suite.measure.failures as failures

            failures.device_usable = lambda device: False  # in this worker only, as a sticky CUDA error is
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    class LosesDeviceAlways(LosesDevice):
        at = None

    class LinearMisbehaves(LinearAttention):
        """Linear attention that, where $MISBEHAVE says so, hangs at 17 tokens or crashes at 33."""

        def __call__(self, q, k, v, *, causal=False):
            act = os.environ.get("MISBEHAVE", "")
            if "hang" in act and q.shape[-2] == 17:
                Hangs.act(self)
            if "segfault" in act and q.shape[-2] == 33:
                Segfaults.act(self)
            return super().__call__(q, k, v, causal=causal)
''')

KINDS = {
    "hangs": "Hangs",
    "hoards": "Hoards",
    "segfaults": "Segfaults",
    "exits": "Exits",
    "loses-device": "LosesDevice",
    "loses-device-always": "LosesDeviceAlways",
    "linear-misbehaves": "LinearMisbehaves",
}


def _grid(impl: str) -> list[str]:
    return [
        *("--impl", f"naive,{impl}", "--seq-len", "17,33,65", "--heads", "1", "--batch", "1", "--head-dim", "16"),
        *("--dtype", "float32", "--mode", "fwd", "--no-causal", "--device", "cpu", "--timing", "max_repeats=7"),
    ]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A package declaring the misbehaving implementations, as `pip install` would leave it."""
    declared = {name: f"misbehaving_attention:{cls}" for name, cls in KINDS.items()}
    return write_package(tmp_path_factory.mktemp("package"), "misbehaving_attention", MODULE, declared)


def _start(*args: str, package: Path, **env: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(ROOT)]), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "suite", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(*args: str, package: Path) -> tuple[int, str, list[dict]]:
    process = _start(*args, package=package)
    _, stderr = process.communicate(timeout=300)
    out = Path(args[args.index("--out") + 1])
    return process.returncode, stderr, results.read(out)[1] if out.exists() else []


def _by_row(rows: list[dict]) -> dict[tuple, dict]:
    return {(row["impl"], row["seq_len"]): row for row in rows}


MISBEHAVING = ("hangs", "hoards", "segfaults", "exits", "loses-device")
# Each hang costs a test this long; a row that does not hang (the hoarder's 1.5 GiB included) must finish within it
# on a machine whose cores other processes share: 4 s was not enough with two test processes on 2 cores.
ROW_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def misbehaved(tmp_path_factory, package) -> tuple[int, str, Path, dict[tuple, dict]]:
    """One run of every misbehaving implementation, each failing at 33 tokens: (exit status, stderr, results file,
    rows by (implementation, length))."""
    out = tmp_path_factory.mktemp("misbehaved") / "r.jsonl"
    limits = ["--row-timeout", str(ROW_TIMEOUT_S), "--host-memory-limit", "1.5GiB"]
    status, stderr, rows = _run("run", *_grid(",".join(MISBEHAVING)), *limits, "--out", str(out), package=package)
    return status, stderr, out, _by_row(rows)


def test_each_misbehaving_row_costs_only_itself_and_the_run_ends_well(misbehaved):
    status, stderr, out, rows = misbehaved
    assert status == 0, stderr[-2000:]
    failed = {(impl, 33) for impl in MISBEHAVING}
    assert set(rows) == {(impl, n) for impl in ("naive", *MISBEHAVING) for n in (17, 33, 65)}
    assert {key: row["status"] for key, row in rows.items() if key not in failed} == dict.fromkeys(
        set(rows) - failed, "ok"
    )
    assert results.read(out)[0][-1]["worker"] == {
        "row_timeout_s": float(ROW_TIMEOUT_S),
        "host_memory_limit_bytes": 3 << 29,
    }
    assert not InFlight(out).path.exists()


def test_a_hanging_row_is_a_timeout(misbehaved):
    hung = misbehaved[3]["hangs", 33]
    assert hung["status"] == "timeout" and f"no result after {ROW_TIMEOUT_S} s (--row-timeout)" in hung["reason"]
    assert hung["row_s"] >= ROW_TIMEOUT_S and "TIMEOUT" in misbehaved[1]  # and its progress line says so


def test_a_row_past_the_host_memory_limit_is_oom_so_that_retry_oom_redoes_it(misbehaved):
    hoarded = misbehaved[3]["hoards", 33]
    assert hoarded["status"] == "oom" and "oom" in RETRYABLE
    assert "host memory" in hoarded["reason"] and "--host-memory-limit 1.5 GiB" in hoarded["reason"]


def test_a_crash_in_native_code_or_system_exit_is_its_row(misbehaved):
    crashed, exited = misbehaved[3]["segfaults", 33], misbehaved[3]["exits", 33]
    assert crashed["status"] == "error" and "segmentation fault" in crashed["reason"], crashed["reason"]
    assert "a new worker measured the rows after it" in crashed["reason"]
    assert exited["status"] == "error" and "SystemExit" in exited["reason"]


def test_a_lost_device_is_left_to_a_new_worker(misbehaved):
    lost = misbehaved[3]["loses-device", 33]
    assert lost["status"] == "error" and "illegal memory access" in lost["reason"]
    assert "the rows after it ran in a new process" in lost["reason"]


def test_a_second_lost_device_in_a_row_stops_the_run(tmp_path, package):
    out = tmp_path / "always.jsonl"
    grid = _grid("loses-device-always")
    grid[1] = "loses-device-always"
    status, stderr, rows = _run("run", *grid, "--out", str(out), package=package)
    assert status == 1 and "left the device unusable" in stderr, stderr[-2000:]
    assert [(row["seq_len"], row["status"]) for row in rows] == [(17, "error"), (33, "error")]


def _wait_for_pid(run: subprocess.Popen, pid_file: Path) -> int:
    deadline = time.monotonic() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
        time.sleep(0.1)
    return int(pid_file.read_text())


def _wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its run"
        time.sleep(0.1)


def test_ctrl_c_stops_the_run_and_its_worker_keeping_every_finished_row(tmp_path, package):
    """SIGTERM goes the same way (stop_signals); test_stop_signals.py sends both to a run in one process."""
    out, pid_file = tmp_path / "r.jsonl", tmp_path / "worker.pid"
    run = _start("run", *_grid("hangs"), "--out", str(out), package=package, WORKER_PID_FILE=str(pid_file))
    worker = _wait_for_pid(run, pid_file)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and f"every finished row is in {out}" in stderr, stderr[-2000:]
    assert [(row["impl"], row["seq_len"]) for row in results.read(out)[1]] == [
        ("naive", 17),
        ("hangs", 17),
        ("naive", 33),
    ]
    assert not InFlight(out).path.exists()
    _wait_until_gone(worker)


def test_killing_the_run_ends_its_worker(tmp_path, package):
    """A run killed outright (kill -9) takes its worker with it: no orphan left hanging on a kernel."""
    out, pid_file = tmp_path / "r.jsonl", tmp_path / "worker.pid"
    run = _start("run", *_grid("hangs"), "--out", str(out), package=package, WORKER_PID_FILE=str(pid_file))
    worker = _wait_for_pid(run, pid_file)
    assert worker != run.pid
    run.kill()
    run.communicate()
    _wait_until_gone(worker)
    assert InFlight(out).died_in()["impl"] == "hangs"  # the run's own death is still found by --resume


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_check_that_crashes_or_hangs_names_its_case_and_the_next_implementation_is_checked(package):
    check = ["check", "--impl", "segfaults,hangs,naive", "--device", "cpu", "--dtype", "float32"]
    process = _start(*check, "--case-timeout", "5", package=package)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-2000:]
    lines = stdout.splitlines()
    crashed = next(line for line in lines if line.startswith("  ERROR") and "segmentation fault" in line)
    assert "-N33-" in crashed and "its worker process died checking it" in crashed
    hung = next(line for line in lines if line.startswith("  ERROR") and "--case-timeout" in line)
    assert "-N33-" in hung and "no result after 5 s" in hung
    verdicts = {line.split(":")[0]: line.split()[1] for line in lines if not line.startswith(" ")}
    assert [verdicts.get(impl) for impl in ("segfaults", "hangs", "naive")] == ["FAILED", "FAILED", "ok"]


def test_bad_worker_flags_exit_2_with_one_line(tmp_path, capsys):
    check = ["check", "--impl", "naive", "--device", "cpu"]
    for argv, expected in (
        ([*_grid("sdpa"), "--row-timeout", "0"], "--row-timeout: '0' is not a positive number"),
        ([*_grid("sdpa"), "--host-memory-limit", "lots"], "--host-memory-limit: 'lots' is not a size"),
        ([*_grid("sdpa"), "--in-process", "--row-timeout", "5"], "--row-timeout: '5' needs a worker process"),
        ([*check, "--case-timeout", "-1"], "--case-timeout: '-1' is not a positive number"),
        ([*check, "--in-process", "--host-memory-limit", "1GiB"], "--host-memory-limit: '1GiB' needs a worker"),
    ):
        command = ["check"] if argv[0] == "check" else ["run", "--out", str(tmp_path / "r.jsonl")]
        assert main([*command, *argv[argv[0] == "check" :]]) == 2
        stderr = capsys.readouterr().err
        assert expected in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    ("exitcode", "words"),
    [(-signal.SIGKILL, "out-of-memory killer"), (-signal.SIGSEGV, "segmentation fault"), (3, "status 3"), (None, "")],
)
def test_how_a_worker_ended_is_said_in_words(exitcode, words):
    assert words in how_a_process_ended(exitcode)


def test_the_api_measures_in_a_worker_where_asked(tmp_path):
    out = tmp_path / "r.jsonl"
    rows = api.benchmark(
        ["naive", "sdpa"],
        seq_len=33,
        heads=1,
        head_dim=16,
        batch=1,
        device="cpu",
        out=out,
        worker=True,
        row_timeout=60,
        host_memory_limit="8GiB",
        timing="max_repeats=9",
        progress=False,
    )
    assert list(rows.status) == ["ok", "ok"]
    assert results.read(out)[0][-1]["worker"] == {"row_timeout_s": 60.0, "host_memory_limit_bytes": 8 << 30}


def test_the_api_refuses_a_worker_for_what_it_cannot_send(tmp_path):
    def attention(q, k, v, *, causal=False):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    local = api.as_implementation(attention, name="local")
    with pytest.raises(ValueError, match="^worker: local cannot be sent to a worker process"):
        api.benchmark([local], seq_len=33, heads=1, head_dim=16, batch=1, device="cpu", worker=True)


def test_a_script_without_a_main_guard_is_not_run_again_by_its_worker(tmp_path):
    """multiprocessing would import the script again in each worker, running its benchmark there too."""
    script = tmp_path / "bench.py"
    script.write_text(
        textwrap.dedent("""
            import sys
            from suite import api
            print("script ran", file=sys.stderr)
            frame = api.benchmark("naive", seq_len=9, heads=1, head_dim=8, batch=1, device="cpu", worker=True,
                                  progress=False)
            print(list(frame.status))
        """)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['ok']" and done.stderr.count("script ran") == 1


def test_local_errors_note_a_row_whose_worker_hung_or_crashed_and_amend_the_rest(tmp_path, package, monkeypatch):
    """An approximation that hangs or crashes on local inputs costs its own figure, noted, and no other row's."""
    out = tmp_path / "r.jsonl"
    grid = _grid("linear-misbehaves")
    grid[1] = "linear-misbehaves"
    monkeypatch.syspath_prepend(str(package))  # installed here too, for a run in this process
    monkeypatch.setattr(implementations, "_declared", None)
    assert main(["run", *grid, "--out", str(out)]) == 0
    amend = _start(
        "local-errors",
        str(out),
        "--redo",
        "--row-timeout",
        str(ROW_TIMEOUT_S),
        package=package,
        MISBEHAVE="hang,segfault",
    )
    _, stderr = amend.communicate(timeout=300)
    assert amend.returncode == 0, stderr[-2000:]
    rows = {row["seq_len"]: row for row in results.load(out).to_dict("records")}
    assert f"no result after {ROW_TIMEOUT_S} s (--row-timeout)" in rows[17]["softmax_local_note"]
    assert "segmentation fault" in rows[33]["softmax_local_note"]
    assert rows[65]["softmax_local_rel_rms_err"] > 0
