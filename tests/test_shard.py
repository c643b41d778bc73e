"""One grid over the ranks of torchrun (CPU ranks, gloo): each rank measures a share of the cases, and rank 0 merges
their files into --out as one run, whose rows are those a single process measures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from suite.case import Case, key_of_row, row_key
from suite.cli import main
from suite.results import files as results
from suite.results.files import ResultsWriter
from suite.results.schema import DATA_COLUMNS, ROW_COLUMNS
from suite.run import config, shard
from suite.run.completeness import shortfall
from suite.run.in_flight import InFlight, process_start
from suite.run.merge import merge, model_path
from tests.plugin_package import write_package

ROOT = Path(__file__).resolve().parent.parent
GRID = [
    *("--seq-len", "17,33,65,129", "--heads", "1", "--batch", "1", "--head-dim", "16", "--dtype", "float32"),
    *("--mode", "fwd", "--no-causal", "--device", "cpu", "--threads", "1", "--timing", "max_repeats=7"),
]
ACCURACY = ("status", "max_abs_err", "rel_rms_err", "accuracy_ok", "softmax_rel_rms_err")

HANGS = textwrap.dedent('''
    import time
    import torch
    from implementations import Implementation

    class HangsAt33(Implementation):
        """Softmax attention that never returns at 33 tokens."""

        def __call__(self, q, k, v, *, causal=False):
            while q.shape[-2] == 33:
                time.sleep(0.05)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
''')


LOSES_DEVICE = textwrap.dedent('''
    import os, time
    import torch
    from implementations import Implementation

    class LosesDevice(Implementation):
        """Fails at 33 and 49 tokens as a kernel's illegal memory access does, leaving its process's device unusable
        (the second loss in a row stops its rank); at 129 tokens it waits for the file $RELEASE first."""

        def __call__(self, q, k, v, *, causal=False):
            if q.shape[-2] in (33, 49):
                import suite.measure.failures as failures

                failures.device_usable = lambda device: False
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            while q.shape[-2] == 129 and not os.path.exists(os.environ["RELEASE"]):
                time.sleep(0.05)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
''')


def _env(**extra: str) -> dict[str, str]:
    """One torch thread per process, no launcher variables of the test's own, and the repository importable."""
    env = {key: value for key, value in os.environ.items() if key not in (*shard.LAUNCH_VARIABLES, "MASTER_PORT")}
    paths = [extra.pop("PYTHONPATH", ""), str(ROOT)]
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths)), **extra}


def _torchrun(ranks: int, *args: str, cwd: Path, **env: str) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.Popen(
        [*launcher, "-m", "suite", "run", *args],
        cwd=cwd,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finished(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=240)
    return process.returncode, output


def _figures(rows: list[dict]) -> dict[tuple, tuple]:
    return {key_of_row(row): tuple(row.get(name) for name in ACCURACY) for row in rows}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> list[dict]:
    """The rows of the grid measured by one process, without torchrun."""
    out = tmp_path_factory.mktemp("single") / "single.jsonl"
    assert main(["run", "--impl", "naive,sdpa", *GRID, "--out", str(out)]) == 0
    return results.read(out)[1]


def test_two_ranks_write_one_file_with_the_rows_of_one_process(tmp_path, single):
    sharded = tmp_path / "sharded.jsonl"
    status, output = _finished(_torchrun(2, "--impl", "naive,sdpa", *GRID, "--out", str(sharded), cwd=tmp_path))
    assert status == 0, output[-3000:]

    runs, rows = results.read(sharded)
    assert _figures(rows) == _figures(single)  # the same seed: the same inputs, on every rank
    assert _keys(rows) == _keys(single)  # in grid order
    (header,) = runs
    assert header["world_size"] == 2 and header["planned_rows"] == 8
    assert [(rank["rank"], rank["device"], rank["host"]) for rank in header["ranks"]] == [
        (0, "cpu", socket.gethostname()),
        (1, "cpu", socket.gethostname()),
    ]
    assert {row["rank"] for row in rows} == {0, 1} and {row["run_id"] for row in rows} == {header["run_id"]}
    for case_rows in _by_case(rows).values():
        assert len({row["rank"] for row in case_rows}) == 1  # a case's rows share inputs and a reference
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sharded.jsonl"]
    assert shortfall(sharded) is None
    assert output.count("measurements to run") == 1 and "[8/8]" in output  # the whole run, on rank 0 only
    assert results.load(sharded)["rank"].tolist() == [row["rank"] for row in rows]


def _by_case(rows: list[dict]) -> dict[Case, list[dict]]:
    found: dict[Case, list[dict]] = {}
    for row in rows:
        found.setdefault(Case.from_row(row), []).append(row)
    return found


def test_one_rank_under_torchrun_measures_the_rows_of_a_run_without_it(tmp_path, single):
    launched = tmp_path / "launched.jsonl"
    status, output = _finished(_torchrun(1, "--impl", "naive,sdpa", *GRID, "--out", str(launched), cwd=tmp_path))
    assert status == 0, output[-3000:]
    (header,), rows = results.read(launched)
    assert _figures(rows) == _figures(single) and _keys(rows) == _keys(single)
    assert header["world_size"] == 1 and [rank["device"] for rank in header["ranks"]] == ["cpu"]
    assert {row["rank"] for row in rows} == {0}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["launched.jsonl"]


def _wait_for_hang(out: Path, run: subprocess.Popen) -> int:
    """The pid of the rank measuring the hanging row (from its in-flight marker beside its rank file), once the
    other rank has written every row of its share."""
    deadline = time.monotonic() + 180
    while True:
        hanging = [_marker(path) for path in out.parent.glob(f"{out.stem}.*.rank*.jsonl.running")]
        hanging = [row for row in hanging if (row.get("impl"), row.get("seq_len")) == ("hangs", 33)]
        others = [path for path in out.parent.glob(f"{out.stem}.*.rank*.jsonl") if not str(path).endswith("running")]
        finished = [path for path in others if _result_lines(path) == 2 and not _marker(Path(f"{path}.running"))]
        if hanging and finished:
            return hanging[0]["pid"]
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
        time.sleep(0.2)


def _marker(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _result_lines(path: Path) -> int:
    try:
        return path.read_text().count('"record": "result"')
    except OSError:
        return 0


def test_a_killed_rank_keeps_every_finished_row_and_resume_completes_the_file(tmp_path):
    package = write_package(tmp_path / "package", "hanging_attention", HANGS, {"hangs": "hanging_attention:HangsAt33"})
    out, grid = tmp_path / "r.jsonl", ["--impl", "naive,hangs", *GRID, "--out", str(tmp_path / "r.jsonl")]
    run = _torchrun(2, *grid, cwd=tmp_path, PYTHONPATH=str(package))
    os.kill(_wait_for_hang(out, run), signal.SIGKILL)
    status, output = _finished(run)
    assert status != 0
    _, rows = results.read(out)  # torchrun stopped rank 0 too; it merged what both ranks finished
    statuses = {(row["impl"], row["seq_len"]): row["status"] for row in rows}
    assert statuses[("hangs", 33)] == "error" and ("naive", 129) in statuses and ("naive", 17) in statuses, output
    assert "incomplete" in shortfall(out)
    assert not list(tmp_path.glob("r.*.rank*")), output[-3000:]

    resume = _torchrun(1, *grid, "--resume", cwd=tmp_path, PYTHONPATH=str(package))  # another number of ranks
    status, output = _finished(resume)
    assert status == 0, output[-3000:]
    runs, rows = results.read(out)
    assert len(rows) == 8 and {key_of_row(row) for row in rows} >= set(_keys(rows))
    assert {(row["impl"], row["seq_len"]): row["status"] for row in rows} == {
        **{(impl, n): "ok" for impl in ("naive", "hangs") for n in (17, 33, 65, 129)},
        ("hangs", 33): "error",
    }
    assert "died while measuring" in next(row["reason"] for row in rows if row["status"] == "error")
    assert len(runs) == 2 and shortfall(out) is None
    assert not list(tmp_path.glob("r.*.rank*"))


def test_ctrl_c_on_the_launcher_keeps_every_finished_row_of_every_rank(tmp_path):
    package = write_package(tmp_path / "package", "hanging_attention", HANGS, {"hangs": "hanging_attention:HangsAt33"})
    out = tmp_path / "r.jsonl"
    run = _torchrun(2, "--impl", "naive,hangs", *GRID, "--out", str(out), cwd=tmp_path, PYTHONPATH=str(package))
    _wait_for_hang(out, run)
    run.send_signal(signal.SIGINT)  # torchrun passes it to every rank
    status, output = _finished(run)
    assert status != 0 and f"interrupted: every finished row is in {out}" in output, output[-3000:]
    assert [(row["impl"], row["seq_len"], row["status"]) for row in results.read(out)[1]] == [
        *((impl, n, "ok") for n in (17,) for impl in ("naive", "hangs")),
        ("naive", 33, "ok"),
        *((impl, 129, "ok") for impl in ("naive", "hangs")),
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["package", "r.jsonl"]
    assert "incomplete" in shortfall(out)


def test_a_rank_that_loses_its_device_lets_the_others_finish(tmp_path):
    """Rank 1 stops after losing its GPU twice in a row; rank 0, still measuring, finishes its share and merges."""
    package = write_package(
        tmp_path / "package", "losing_attention", LOSES_DEVICE, {"loses": "losing_attention:LosesDevice"}
    )
    out, release = tmp_path / "r.jsonl", tmp_path / "release"
    grid = ["--impl", "loses", *GRID, "--seq-len", "17,33,49,65,129", "--out", str(out)]
    run = _torchrun(2, *grid, cwd=tmp_path, PYTHONPATH=str(package), RELEASE=str(release))
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("r.*.rank1.jsonl.ended")):  # rank 1 has ended: rank 0 waits on its last case
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
        time.sleep(0.2)
    release.touch()
    status, output = _finished(run)
    assert status != 0 and "rank 1 stopped" in output and "left the device unusable" in output, output[-3000:]
    statuses = {row["seq_len"]: (row["status"], row["rank"]) for row in results.read(out)[1]}
    assert statuses == {17: ("ok", 1), 33: ("error", 1), 49: ("error", 1), 129: ("ok", 0)}, output[-3000:]
    assert "incomplete" in shortfall(out) and "1 missing" in shortfall(out)
    assert not re.search(r"rank\s*:\s*1 \(local_rank", output), output[-3000:]  # torchrun saw no failure of rank 1


def _keys(rows: list[dict]) -> list[tuple]:
    return [key_of_row(row) for row in rows]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_rank_that_cannot_reach_the_others_stops_in_one_line(tmp_path):
    env = _env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "suite", "run", "--impl", "naive", *GRID, "--out", str(tmp_path / "r.jsonl")]
        + ["--rank-timeout", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "could not reach the other ranks within --rank-timeout 1 s" in done.stderr, done.stderr[-3000:]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"}, "WORLD_SIZE: 'two' is not a whole number"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK: not set, but RANK, WORLD_SIZE is"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK: 2 with WORLD_SIZE 2"),
    ],
)
def test_bad_launcher_variables_exit_2_with_one_line(tmp_path, monkeypatch, capsys, variables, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--impl", "naive", *GRID, "--out", str(tmp_path / "r.jsonl")]) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_dry_run_under_torchrun_prints_each_ranks_share(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert main(["run", "--impl", "naive,sdpa", *GRID, "--out", str(tmp_path / "r.jsonl"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "under torchrun: 3 ranks, every row of a case on one rank, balanced by the rows' FLOPs" in printed
    shares = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [share[0] for share in shares] == ["0", "1", "2"] and sum(int(share[2]) for share in shares) == 8
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "--impl", "naive,sdpa", *GRID, "--out", str(tmp_path / "r.jsonl"), "--dry-run"]) == 0
    assert capsys.readouterr().out == ""  # rank 0 speaks for the run
    assert not list(tmp_path.iterdir())


def _cases(count: int) -> list[Case]:
    return [Case(1, 1 + i % 3, 16 * (1 + i), 16, "float32", bool(i % 2), "fwd", "cpu") for i in range(count)]


def test_shares_are_balanced_by_earlier_times_within_one_case(tmp_path):
    impls = [config.build_impl("--impl", name) for name in ("naive", "sdpa")]
    cases = _cases(23)
    earlier = {
        row_key(impl.label, case): 0.1 + (7 * i + len(impl.label)) % 11
        for i, case in enumerate(cases)
        for impl in impls
    }
    for ranks in (2, 3, 5):
        plan = shard.make_plan(impls, cases, set(), earlier, ranks)
        assert sorted(i for share in plan.shares for i in share) == list(range(len(cases)))
        loads = [sum(earlier[row_key(impl.label, cases[i])] for i in share for impl in impls) for share in plan.shares]
        costliest_case = max(sum(earlier[row_key(impl.label, case)] for impl in impls) for case in cases)
        assert max(loads) - min(loads) <= costliest_case, loads
        assert plan.expected_s == pytest.approx(loads) and "earlier runs" in plan.basis
        assert shard.make_plan(impls, cases, set(), earlier, ranks).shares == plan.shares  # every rank agrees


def test_shares_fall_back_to_flops_and_leave_out_what_is_done():
    impls = [config.build_impl("--impl", "naive")]
    cases = _cases(6)
    done = {row_key("naive", cases[-1])}
    plan = shard.make_plan(impls, cases, done, {}, 2)
    assert "FLOPs" in plan.basis and plan.planned_rows == [len(share) - (5 in share) for share in plan.shares]
    assert 4 in plan.shares[0]  # the costliest case left goes to rank 0
    assert plan.todo == [row_key("naive", case) for case in cases[:-1]]


def _rank_file(out: Path, group: str, rank: int, threads: int, seq_len: int) -> Path:
    path = shard.rank_path(out, group, rank)
    environment = {"device": "cpu", "cpu": "Test CPU", "cpu_threads": threads, "recorded_at": "2026-01-01"}
    info = {
        "planned_rows": 1,
        "shard": {
            "run": group,
            "rank": rank,
            "world_size": 2,
            "host": f"node{rank}",
            "device": "cpu",
            "planned_rows": 2,
        },
    }
    writer = ResultsWriter(path, environment, info)
    case = Case(1, 1, seq_len, 16, "float32", False, "fwd", "cpu")
    writer.append({"impl": "naive", "family": "exact", **case.__dict__, "status": "ok", "time_ms": 1.0})
    writer.close()
    return path


def test_ranks_of_two_machine_models_are_merged_into_a_file_per_model(tmp_path):
    out, group = tmp_path / "r.jsonl", "0123456789ab"
    files = [_rank_file(out, group, 0, threads=1, seq_len=16), _rank_file(out, group, 1, threads=2, seq_len=32)]
    merged = merge(out, files, {}, group)
    one, two = model_path(out, "Test CPU (1 thread)"), model_path(out, "Test CPU (2 threads)")
    assert merged.written == [one, two] and not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([one.name, two.name])
    for path, rank in ((one, 0), (two, 1)):
        (header,), (row,) = results.read(path)
        assert header["run_id"] == group and header["planned_rows"] == 1 and header["world_size"] == 2
        assert [entry["rank"] for entry in header["ranks"]] == [rank] and (row["rank"], row["host"]) == (
            rank,
            f"node{rank}",
        )


def test_a_resume_without_torchrun_merges_the_rank_files_a_run_left(tmp_path, monkeypatch):
    """Rank 0 of a run died before merging: its ranks' files stay beside --out, and any --resume merges them."""
    monkeypatch.chdir(tmp_path)
    out, group = tmp_path / "r.jsonl", "0123456789ab"
    left = _rank_file(out, group, 1, threads=1, seq_len=17)
    died_in = Case(1, 1, 33, 16, "float32", False, "fwd", "cpu")
    InFlight(left).started({"impl": "naive", "family": "exact", **died_in.__dict__})
    assert main(["run", "--impl", "naive", *GRID, "--in-process", "--out", str(out), "--resume"]) == 0
    runs, rows = results.read(out)
    assert [run["run_id"] for run in runs][0] == group and len(runs) == 2
    assert [(row["seq_len"], row["status"]) for row in rows] == [(17, "ok"), (33, "error"), (65, "ok"), (129, "ok")]
    assert "died while measuring" in rows[1]["reason"] and rows[1]["rank"] == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.jsonl"]
    assert shortfall(out) is None


def test_a_rank_on_another_host_ends_by_its_marker_not_by_a_free_lock(tmp_path):
    """A network filesystem may not pass a lock to other hosts: a free lock there is no proof that the rank ended."""
    here, there = (_rank_file(tmp_path / "r.jsonl", "0123456789ab", rank, 1, 16) for rank in (1, 2))
    _set_host(there, "another-host")
    _set_host(here, socket.gethostname())
    assert shard._ended(there, out_of_patience=False) is None
    assert _held_then_released(shard._ended(here, out_of_patience=False))  # on its own host, a free lock is proof
    assert _held_then_released(shard._ended(there, out_of_patience=True))  # the run was stopped: no more waiting
    shard.ended_path(there).touch()
    assert _held_then_released(shard._ended(there, out_of_patience=False))


def _held_then_released(lock) -> bool:
    held = lock is not None and lock.held
    if lock is not None:
        lock.release()
    return held


def _set_host(path: Path, host: str) -> None:
    header, *rest = path.read_text().splitlines()
    record = json.loads(header)
    record["shard"]["host"] = host
    path.write_text("\n".join([json.dumps(record), *rest]) + "\n")


def test_dry_run_under_torchrun_takes_a_live_runs_row_for_its_own(tmp_path, monkeypatch, capsys):
    """A dry run holds no lock: the row another live process is measuring is not a row a dead one left."""
    monkeypatch.chdir(tmp_path)
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "r.jsonl"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"impl": "naive", "family": "exact", **Case(1, 1, 33, 16, "float32", False, "fwd", "cpu").__dict__}
        record.update(pid=live.pid, started=process_start(live.pid), host=socket.gethostname())
        InFlight(out).path.write_text(json.dumps(record))
        assert main(["run", "--impl", "naive", *GRID, "--out", str(out), "--dry-run"]) == 0
    finally:
        live.kill()
        live.wait()
    captured = capsys.readouterr()
    assert "died while measuring" not in captured.out + captured.err
    shares = [line.split() for line in captured.out.splitlines() if line.strip()[:1].isdigit()]
    assert sum(int(share[2]) for share in shares) == 4  # its row is to measure, not skipped as a dead run's


def test_rank_and_host_stay_out_of_data_csv():
    """Empty for every run without torchrun: the report's spreadsheet keeps to what every row has."""
    assert not {"rank", "host"} & set(DATA_COLUMNS) and {"rank", "host"} <= set(ROW_COLUMNS)


def test_a_file_named_as_a_rank_file_but_not_one_is_left_where_it_is(tmp_path):
    out, group = tmp_path / "r.jsonl", "0123456789ab"
    rank_0 = _rank_file(out, group, 0, threads=1, seq_len=16)
    stranger = shard.rank_path(out, "ba9876543210", 1)
    writer = ResultsWriter(stranger, {"device": "cpu"}, {})
    writer.write_header()
    writer.close()
    merged = merge(out, [rank_0, stranger], {}, group)
    assert [line.split(":")[0] for line in merged.left] == [str(stranger)] and stranger.exists()
    assert merged.written == [out] and not rank_0.exists()
