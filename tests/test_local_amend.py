"""`attnbench local-errors`: adds the local-inputs figure to rows that lack it, timings untouched."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from suite.cli import main
from suite.measure import failures
from suite.results import files as results
from tests.results_files import rewrite_rows

LOCAL = ["softmax_local_max_abs_err", "softmax_local_rel_rms_err"]
GRID = [
    "--impl",
    "naive,linear,sparse-window:window=8,performer:features=32",
    "--seq-len",
    "33,64",
    "--batch",
    "1",
    "--heads",
    "2",
    "--head-dim",
    "16",
    "--dtype",
    "float32",
    "--mode",
    "fwd,fwd+bwd",
    "--causal",
    "both",
    "--device",
    "cpu",
]


def without_local_figures(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in LOCAL}


def test_amending_restores_the_runs_own_figures_and_leaves_the_timings(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--out", str(path)]) == 0
    measured = results.load(path)
    approximate = measured.family != "exact"
    assert measured.loc[approximate, LOCAL].notna().all().all()
    rewrite_rows(path, without_local_figures)

    capsys.readouterr()
    assert main(["local-errors", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "amended 24 rows" in out
    # one progress line per row, the case column lined up after the longest label (performer:features=32)
    progress = [line for line in err.splitlines() if "local-inputs error" in line]
    assert len(progress) == 24 and len({line.index(" B1-H2-") for line in progress}) == 1
    amended = results.load(path)
    assert len(amended) == len(measured) and list(amended.impl) == list(measured.impl)
    # Same seed, same local inputs: the very figures the run measured; everything else as it was.
    pd.testing.assert_frame_equal(amended[LOCAL].astype(float), measured[LOCAL].astype(float))
    for column in ("time_ms", "times_ms", "run_id", "rel_rms_err", "softmax_rel_rms_err"):
        assert amended[column].equals(measured[column]), column
    headers = [json.loads(line) for line in path.read_text().splitlines() if '"record": "run"' in line]
    assert len(headers) == 2 and headers[1]["amends"] == "local-inputs errors"
    assert set(amended.loc[approximate, "local_errors_run_id"]) == {headers[1]["run_id"]}
    assert amended.loc[~approximate, "local_errors_run_id"].isna().all()  # exact rows are not rewritten

    before = path.read_bytes()
    assert main(["local-errors", str(path)]) == 0
    assert "nothing to amend" in capsys.readouterr().out and path.read_bytes() == before

    report = tmp_path / "report"
    assert main(["report", str(path), "--out", str(report)]) == 0
    assert "amendment: local-inputs errors" in (report / "report.md").read_text()


def test_only_rows_without_the_figure_are_measured_unless_redo(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "33", "--causal", "false", "--out", str(path)]) == 0
    noted = {"softmax_local_note": "accuracy not checked: over the budget"}  # why it is missing: not retried
    rewrite_rows(
        path,
        lambda r: (
            without_local_figures(r)
            if r["impl"] == "linear"
            else {**without_local_figures(r), **noted}
            if r["impl"].startswith("performer")
            else r
        ),
    )
    capsys.readouterr()
    assert main(["local-errors", str(path)]) == 0
    assert "amended 2 rows" in capsys.readouterr().out  # linear's fwd and fwd+bwd
    assert main(["local-errors", str(path), "--redo"]) == 0
    assert "amended 6 rows" in capsys.readouterr().out


def test_impl_limits_the_amendment_to_the_named_implementations(tmp_path, capsys):
    """A name covers every option set of it (performer:features=32 by `performer`); an unknown one exits 2."""
    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "33", "--causal", "false", "--out", str(path)]) == 0
    rewrite_rows(path, without_local_figures)
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["local-errors", str(path), "--impl", "linear,naive"]) == 2
    assert "--impl: 'naive' has no approximate row that ran" in capsys.readouterr().err
    assert path.read_bytes() == before

    assert main(["local-errors", str(path), "--impl", "performer,linear"]) == 0
    assert "amended 4 rows" in capsys.readouterr().out
    amended = results.load(path)
    has_figure = amended.softmax_local_rel_rms_err.notna()
    assert set(amended[has_figure].impl) == {"linear", "performer:features=32"}
    assert main(["local-errors", str(path), "--impl", "sparse-window:window=8"]) == 0
    assert "amended 2 rows" in capsys.readouterr().out
    assert main(["local-errors", str(path), "--impl", "linear"]) == 0
    assert "nothing to amend: every approximate row of linear" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_rows_from_a_gpu_are_refused_without_one_and_the_file_is_left_alone(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--impl", "linear", "--seq-len", "33", "--out", str(path)]) == 0
    rewrite_rows(path, lambda r: {**without_local_figures(r), "device": "cuda"})
    before = path.read_bytes()
    assert main(["local-errors", str(path)]) == 2
    assert "has rows measured on cuda, and no CUDA device is available here" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["local-errors", str(tmp_path / "none.jsonl")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_each_implementation_is_built_once_and_a_forward_case_is_measured_in_one_group(tmp_path):
    """One instance per label keeps its per-shape state; a case's rows come together, so the local
    inputs and their softmax reference are made once per forward case."""
    from suite.results.files import ResultsWriter
    from suite.run import config
    from suite.run.local_amend import amend_local_errors

    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--out", str(path)]) == 0
    rewrite_rows(path, without_local_figures)
    records = [json.loads(line) for line in path.read_text().splitlines()]  # all fwd rows first: cases apart
    records.sort(key=lambda r: (r["record"] == "result", r.get("mode") == "fwd+bwd"))
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    built, measured = [], []

    def build(label):
        built.append(label)
        return config.build_impl("test", label)

    def measure(impl, case):
        measured.append((impl.label, case.seq_len, case.causal))
        return {"softmax_local_max_abs_err": 1.0, "softmax_local_rel_rms_err": 0.5}

    writer = ResultsWriter(path, {}, {"amends": "test"})
    done = amend_local_errors(results.read(path)[1], writer, measure, build)
    writer.close()
    assert done.amended == 24 and sorted(built) == sorted(set(built)) and len(built) == 3
    forward_cases = [(seq_len, causal) for _, seq_len, causal in measured]
    assert all(
        forward_cases[i] == forward_cases[i - 1] or forward_cases[i] not in forward_cases[:i]
        for i in range(1, len(forward_cases))
    )  # each forward case's rows are contiguous


def test_rows_this_machine_cannot_run_are_counted_with_the_reason_and_left_alone(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--impl", "linear", "--seq-len", "33", "--causal", "true", "--out", str(path)]) == 0
    rewrite_rows(path, lambda r: {**without_local_figures(r), "impl": "linear-fla"})  # as if from a GPU with fla
    before = len(results.read(path)[1])
    capsys.readouterr()
    assert main(["local-errors", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "amended 0 rows" in printed and "2 rows cannot run here: device=cpu (supported: cuda)" in printed
    assert len(results.read(path)[1]) == before and results.load(path)[LOCAL].isna().all().all()


def test_an_unusable_device_stops_amending_after_writing_the_row_that_broke_it(tmp_path, capsys, monkeypatch):
    import implementations.linear

    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "33", "--causal", "false", "--out", str(path)]) == 0
    rewrite_rows(path, without_local_figures)

    def crash(self, q, k, v, *, causal=False):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(implementations.linear.LinearAttention, "__call__", crash)
    monkeypatch.setattr(failures, "device_usable", lambda device: False)  # asked only after a failed figure
    capsys.readouterr()
    assert main(["local-errors", str(path), "--in-process"]) == 1  # where the device is replaced
    assert "stopped: linear on B1-H2-N33-D16-fp32-dense-fwd left the device unusable" in capsys.readouterr().err
    broken = results.load(path).set_index(["impl", "mode"])
    assert "amending stopped here" in broken.loc[("linear", "fwd"), "softmax_local_note"]
    assert broken[LOCAL].isna().all().all()  # nothing after it was measured

    monkeypatch.undo()  # a new process, a working device: the rest is amended, the failed row is not retried
    assert main(["local-errors", str(path)]) == 0
    assert "amended 5 rows" in capsys.readouterr().out
    amended = results.load(path).set_index(["impl", "mode"])
    assert amended.loc[("linear", "fwd"), "softmax_local_note"] == broken.loc[("linear", "fwd"), "softmax_local_note"]
    assert amended.drop(index=[("linear", "fwd")]).query("family != 'exact'")[LOCAL].notna().all().all()


def test_a_kernels_system_exit_is_noted_in_its_rows_and_amending_goes_on(tmp_path, capsys, monkeypatch):
    import implementations.linear
    from suite.measure.stop_signals import NOT_A_STOP

    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "33", "--causal", "false", "--out", str(path)]) == 0
    rewrite_rows(path, without_local_figures)

    def exits(self, q, k, v, *, causal=False):
        raise SystemExit(0)

    monkeypatch.setattr(implementations.linear.LinearAttention, "__call__", exits)
    capsys.readouterr()
    assert main(["local-errors", str(path), "--in-process"]) == 0  # where the call is replaced
    assert "amended 6 rows" in capsys.readouterr().out
    amended = results.load(path).query("family != 'exact'").set_index("impl")
    assert set(amended.loc["linear", "softmax_local_note"]) == {f"not measured: SystemExit: 0{NOT_A_STOP}"}
    assert amended.drop(index="linear")[LOCAL].notna().all().all()


def test_a_row_the_previous_amending_process_died_in_is_noted_not_measured_again(tmp_path, capsys):
    from suite.run.in_flight import InFlight
    from suite.run.local_amend import DIED_NOTE

    path = tmp_path / "r.jsonl"
    assert main(["run", *GRID, "--seq-len", "33", "--causal", "false", "--mode", "fwd", "--out", str(path)]) == 0
    rewrite_rows(path, without_local_figures)
    _, rows = results.read(path)
    fatal = next(row for row in rows if row["impl"] == "linear")
    marker = InFlight(path, ".amending")
    marker.started(fatal)  # as the process that was measuring it left it when it was killed
    marker.path.write_text(json.dumps({**json.loads(marker.path.read_text()), "pid": 999_999_999}))
    assert InFlight(path).died_in() is None  # `run`'s own marker is another file

    capsys.readouterr()
    assert main(["local-errors", str(path)]) == 0
    captured = capsys.readouterr()
    assert "died while measuring linear on B1-H2-N33-D16-fp32-dense-fwd: noted in its row" in captured.err
    assert "amended 2 rows" in captured.out  # sparse-window and performer; linear was not measured again
    amended = results.load(path).set_index("impl")
    assert amended.loc["linear", "softmax_local_note"] == DIED_NOTE and pd.isna(amended.loc["linear", LOCAL[1]])
    assert amended.loc["performer:features=32", LOCAL].notna().all()
    assert not marker.path.exists()
    assert main(["local-errors", str(path)]) == 0 and "nothing to amend" in capsys.readouterr().out
