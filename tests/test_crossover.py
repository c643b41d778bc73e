"""Crossover tables: where an implementation starts to beat the baseline, judged beyond noise."""

from __future__ import annotations

import pandas as pd

from suite.reporting.crossover import crossover_summary, crossover_table, crossovers


def _rows(impl: str, times: dict[int, float | str], iqr: float = 0.0) -> list[dict]:
    rows = []
    for length, time in times.items():
        failed = isinstance(time, str)
        rows.append(
            {
                "impl": impl,
                "seq_len": length,
                "status": time if failed else "ok",
                "time_ms": None if failed else time,
                "time_iqr_ms": None if failed else iqr * time,
            }
        )
    return rows


def _frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for rows in groups for row in rows])


def _one(frame: pd.DataFrame, impl: str):
    (found,) = [c for c in crossovers(frame, "base") if c.impl == impl]
    return found


def test_faster_from_needs_every_longer_length_to_win():
    frame = _frame(
        _rows("base", {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}), _rows("fast-early-then-slow", {1: 0.5, 2: 3.0, 4: 2.0, 8: 4.0})
    )
    found = _one(frame, "fast-early-then-slow")
    assert found.faster_from == 4  # the win at 1 does not count: it loses at 2
    assert found.speedups == {1: 2.0, 2: 2.0 / 3.0, 4: 2.0, 8: 2.0}


def test_never_faster_says_up_to_which_length():
    frame = _frame(_rows("base", {1: 1.0, 2: 2.0}), _rows("slow", {1: 2.0, 2: 4.0}))
    found = _one(frame, "slow")
    assert found.faster_from is None and found.describe() == "never up to 2"


def test_baseline_failure_counts_for_the_implementation_and_own_failure_compares_nothing():
    frame = _frame(
        _rows("base", {1: 1.0, 2: 2.0, 4: "oom"}),
        _rows("runs-long", {1: 2.0, 2: 1.0, 4: 5.0}),
        _rows("fails-long", {1: 0.5, 2: 1.0, 4: "oom"}),
    )
    assert _one(frame, "runs-long").faster_from == 2
    assert _one(frame, "runs-long").speedups[4] == "base oom"
    fails = _one(frame, "fails-long")
    assert fails.faster_from == 1 and fails.speedups[4] == "oom" and fails.longest == 2


def test_a_ratio_within_the_spread_is_a_tie_not_a_win():
    frame = _frame(_rows("base", {1: 1.0, 2: 2.0}, iqr=0.02), _rows("close", {1: 0.99, 2: 1.0}, iqr=0.02))
    found = _one(frame, "close")
    assert found.faster_from == 2 and found.ties == {1}
    table = crossover_table(frame, "base")
    assert table.header == ["implementation", "faster than base from", "1", "2"]
    (row,) = [r for r in table.rows if r[0] == "close"]
    assert row == ["close", "2", "≈1.01×", "2×"]


def test_an_implementation_that_never_ran_gets_no_row():
    frame = _frame(_rows("base", {1: 1.0}), _rows("cannot", {1: "unsupported"}))
    assert crossovers(frame, "base") == []
    assert crossover_table(frame, "base") is None


def _variant(rows: list[dict], *, causal: bool, mode: str, head_dim: int = 128) -> list[dict]:
    shape = {
        "device": "cuda",
        "gpu": "GPU",
        "batching": None,
        "queries": None,
        "packing": None,
        "heads": 16,
        "kv_heads": 16,
        "head_dim": head_dim,
        "dtype": "bfloat16",
    }
    return [{**row, **shape, "causal": causal, "mode": mode} for row in rows]


def test_summary_puts_each_mask_and_mode_side_by_side():
    frame = _frame(
        _variant(_rows("base", {1024: 1.0, 2048: 2.0, 4096: 4.0}), causal=False, mode="fwd"),
        _variant(_rows("fast", {1024: 2.0, 2048: 1.0, 4096: 0.5}), causal=False, mode="fwd"),
        _variant(_rows("base", {1024: 1.0, 2048: 2.0, 4096: 4.0}), causal=True, mode="fwd+bwd"),
        _variant(_rows("fast", {1024: 2.0, 2048: 4.0, 4096: 5.0}), causal=True, mode="fwd+bwd"),
    )
    ((title, table),) = crossover_summary(frame, "base")
    assert title == "GPU · H16 D128 · bfloat16"
    assert table.header == ["implementation", "dense fwd", "causal fwd+bwd"]
    assert table.rows == [["fast", "from 2K · 8× at 4K", "never · 0.8× at 4K"]]


def test_summary_has_one_table_per_shape_and_leaves_unmeasured_variants_empty():
    frame = _frame(
        _variant(_rows("base", {1000: 1.0, 3000: 3.0}), causal=False, mode="fwd", head_dim=64),
        _variant(_rows("fast", {1000: 0.5, 3000: "oom"}), causal=False, mode="fwd", head_dim=64),
        _variant(_rows("base", {1000: 1.0}), causal=False, mode="fwd", head_dim=128),
        _variant(_rows("other", {1000: 0.5}), causal=False, mode="fwd", head_dim=128),
        _variant(_rows("base", {1000: 1.0}), causal=True, mode="fwd", head_dim=128),
        _variant(_rows("fast", {1000: 0.5}), causal=True, mode="fwd", head_dim=128),
    )
    summary = dict(crossover_summary(frame, "base"))
    assert summary["GPU · H16 D64 · bfloat16"].rows == [["fast", "from 1000 · 2× at 1000"]]
    wide = summary["GPU · H16 D128 · bfloat16"]
    assert wide.header == ["implementation", "dense fwd", "causal fwd"]
    assert sorted(wide.rows) == [["fast", "", "from 1000 · 2× at 1000"], ["other", "from 1000 · 2× at 1000", ""]]


def test_a_ratio_resting_on_an_accuracy_mismatch_is_marked():
    """The speed of a wrong result: in the table at that length, in the summary wherever it happened."""
    wrong = _rows("wrong-at-2K", {1024: 0.5, 2048: 1.0, 4096: 2.0})
    wrong[1]["status"] = "mismatch"
    frame = _frame(
        _variant(_rows("base", {1024: 1.0, 2048: 2.0, 4096: 4.0}), causal=False, mode="fwd"),
        _variant(wrong, causal=False, mode="fwd"),
        _variant(_rows("right", {1024: 0.5, 2048: 1.0, 4096: 2.0}), causal=False, mode="fwd"),
    )
    rows = {row[0]: row for row in crossover_table(frame, "base").rows}
    assert rows["wrong-at-2K"][2:] == ["2×", "2×!", "2×"] and rows["right"][2:] == ["2×", "2×", "2×"]
    ((_, table),) = crossover_summary(frame, "base")
    assert sorted(table.rows) == [["right", "from 1K · 2× at 4K"], ["wrong-at-2K", "from 1K · 2× at 4K!"]]


def test_summary_has_a_column_for_the_backward_alone():
    frame = _frame(
        _variant(_rows("base", {1024: 1.0, 2048: 2.0}), causal=True, mode="bwd"),
        _variant(_rows("fast", {1024: 0.5, 2048: 1.0}), causal=True, mode="bwd"),
    )
    ((_, table),) = crossover_summary(frame, "base")
    assert table.header == ["implementation", "causal bwd"] and table.rows == [["fast", "from 1K · 2× at 2K"]]
