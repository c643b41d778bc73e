"""The table printed after a run."""

from __future__ import annotations

from suite.case import Case
from suite.run.summary import format_table


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
