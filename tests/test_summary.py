"""What a run says before and after it: a large plan announced, and the table printed at its end."""

from __future__ import annotations

from suite.case import Case
from suite.cli import main
from suite.run.plan import LARGE_PLAN_ROWS, LONG_PLAN_S, size_warning
from suite.run.summary import MAX_CELLS, SummaryTable, format_table


def _row(**fields) -> dict:
    return {
        "impl": "sdpa",
        **vars(Case(1, 2, 64, 16, "float32", False, "fwd", "cpu")),
        "status": "ok",
        "time_ms": 0.05,
        "tflops": 0.5,
        **fields,
    }


def test_the_run_table_marks_noisy_rows_as_reports_do():
    table = format_table([_row(noisy=True), _row(impl="naive", noisy=False)])
    cells = table.splitlines()[2]
    assert "0.05 ms 0.5 TF/s ~" in cells and cells.count("~") == 1
    assert "~ = noisy" in table


def test_a_run_without_noisy_rows_has_no_noisy_legend():
    assert "~" not in format_table([_row(noisy=False)])


def test_a_large_or_long_plan_is_announced_before_it_starts():
    keys = [("naive", n) for n in range(LARGE_PLAN_ROWS + 1)]
    assert f"this run plans {LARGE_PLAN_ROWS + 1} rows:" in size_warning(keys, {})
    assert size_warning(keys[:-1], {}) is None
    hundred = keys[:100]
    day = {key: LONG_PLAN_S / 50 for key in hundred[:10]}  # 10 of 100 rows known, each a fiftieth of a day
    assert "about 48h00m by what 10 of them took" in size_warning(hundred, day)
    assert size_warning(hundred, {key: 1.0 for key in hundred}) is None


def test_the_table_keeps_cells_not_rows_and_says_what_it_left_out():
    table = SummaryTable()
    for seq_len in range(MAX_CELLS + 3):
        table.add(_row(seq_len=seq_len, times_ms=[1.0] * 1000))
    assert table.cells == MAX_CELLS and "... and 3 more rows, not shown here" in table.render()
    assert not any(isinstance(cell, dict) for cells in table.by_case.values() for cell in cells.values())


def test_run_announces_a_large_plan_before_its_first_row(tmp_path, capsys):
    lengths = ",".join(str(n) for n in range(8, 109))  # 101 lengths x 50 head counts x 2 implementations
    heads = ",".join(str(h) for h in range(1, 51))
    argv = ["run", "--impl", "naive,sdpa", "--seq-len", lengths, "--heads", heads, "--head-dim", "8", "--batch", "1"]
    argv += ["--dtype", "float32", "--no-causal", "--mode", "fwd", "--device", "cpu", "--time-limit", "0.001"]
    assert main([*argv, "--out", str(tmp_path / "r.jsonl")]) == 3  # stopped before its first row
    assert "attnbench: warning: this run plans 10100 rows: --dry-run shows the plan" in capsys.readouterr().err
