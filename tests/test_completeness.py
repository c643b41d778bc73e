"""A run cut short or whose process died leaves a file that reads like a finished one: the header records the plan's
size, and `runs`, `report` and `compare` say when the last run fell short of it, or died, and by how many rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import implementations
from suite import api
from suite.cli import main
from suite.results import files as results
from suite.results.files import ResultsWriter
from suite.run.completeness import shortfall
from suite.run.in_flight import InFlight, process_start
from tests.conftest import ScriptedAttention
from tests.test_stop_signals import SignalledAt33, _grid

STOPPED = "stopped early by Ctrl-C, SIGTERM, --time-limit or a lost device"


def _stopped_at_33(tmp_path, monkeypatch):
    """A run of 6 rows interrupted by Ctrl-C during its 4th: 3 written."""
    monkeypatch.setitem(implementations.REGISTRY, "signalled", lambda name, **o: SignalledAt33(name, **o))
    out = tmp_path / "r.jsonl"
    assert main(["run", *_grid("signalled"), "--in-process", "--out", str(out)]) == 130
    return out


def _headers(path):
    return [json.loads(line) for line in path.read_text().splitlines() if '"record": "run"' in line]


def test_runs_report_and_compare_say_a_run_fell_short_of_its_plan(tmp_path, monkeypatch, capsys):
    out = _stopped_at_33(tmp_path, monkeypatch)
    assert [header["planned_rows"] for header in _headers(out)] == [6]
    note = f"incomplete: its last run wrote 3 of the 6 rows it planned (3 missing: {STOPPED})"
    capsys.readouterr()
    assert main(["runs", str(out)]) == 0
    assert f"  {note}; `attnbench run --resume --out {out}` measures the rest\n" in capsys.readouterr().out
    assert main(["runs", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["shortfall"].startswith(note)
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    assert f"{out}: {note}" in capsys.readouterr().err and f"{out}: {note}" in (report / "report.md").read_text()
    assert main(["compare", str(out), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"note: the baseline {out}: {note}" in printed and f"note: the current {out}: {note}" in printed
    assert any(note in line for line in api.compare(out, out).attrs["notes"])

    monkeypatch.setitem(implementations.REGISTRY, "signalled", lambda name, **o: ScriptedAttention(name, **o))
    assert main(["run", *_grid("signalled"), "--out", str(out), "--resume"]) == 0  # the 3 rows left, as planned
    assert [header["planned_rows"] for header in _headers(out)] == [6, 3]
    assert shortfall(out) is None
    capsys.readouterr()
    assert main(["runs", str(out)]) == 0 and "incomplete" not in capsys.readouterr().out


def test_runs_says_a_run_died_and_in_which_row(tmp_path, monkeypatch, capsys):
    out = _stopped_at_33(tmp_path, monkeypatch)
    InFlight(out).started({**results.read(out)[1][1], "seq_len": 33})  # as a process killed in that row leaves it
    InFlight(out).path.write_text(InFlight(out).path.read_text().replace(str(os.getpid()), "999999999"))
    capsys.readouterr()
    assert main(["runs", str(out)]) == 0
    assert (
        "  incomplete: its run died while measuring signalled on B1-H1-N33-D16-fp32-dense-fwd, after writing 3 of the "
        f"6 rows it planned (3 missing); `attnbench run --resume --out {out}` records that row and measures the rest"
    ) in capsys.readouterr().out

    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"]
    )  # a live process named in the marker: still running
    try:
        marker = json.loads(InFlight(out).path.read_text())  # as the live process itself would have written it
        marker.update(pid=other.pid, started=process_start(other.pid))
        InFlight(out).path.write_text(json.dumps(marker))
        assert shortfall(out) == f"being written: a run on this machine (pid {other.pid}) is measuring it now"
    finally:
        other.kill()
        other.wait()


ROW = {"impl": "naive", "batch": 1, "heads": 1, "seq_len": 17, "head_dim": 16, "dtype": "float32"} | {
    "causal": False,
    "mode": "fwd",
    "device": "cpu",
    "status": "ok",
    "time_ms": 1.0,
}


def test_rows_an_amendment_appends_again_do_not_count_as_the_runs(tmp_path):
    path = tmp_path / "r.jsonl"

    run = ResultsWriter(path, {}, {"planned_rows": 2})
    run.append(ROW)
    run.close()
    amending = ResultsWriter(path, {}, {"amends": "local-inputs errors"})
    amending.append({**ROW, "run_id": run.run_id, "local_errors_run_id": amending.run_id})
    amending.close()
    assert "wrote 1 of the 2 rows it planned (1 missing" in shortfall(path)
    run = ResultsWriter(path, {}, {"planned_rows": 1})
    run.append({**ROW, "seq_len": 33})
    run.close()
    assert shortfall(path) is None


def test_a_file_written_before_headers_recorded_the_plan_says_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    run = ResultsWriter(path, {}, {})
    run.append(ROW)
    run.close()
    assert len(results.read(path)[1]) == 1 and shortfall(path) is None
