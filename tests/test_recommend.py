"""`attnbench recommend` on a small CPU run whose errors and peak memory are then set to known values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from suite.cli import main
from tests.results_files import rewrite_rows

MiB = 1 << 20
# (error, which figure, peak memory) per implementation: what each row is rewritten to hold
FIGURES = {
    "naive": (0.2, "rel_rms_err", 8 * MiB),
    "sdpa": (0.1, "rel_rms_err", 4 * MiB),
    "linear": (0.3, "softmax_local_rel_rms_err", 1 * MiB),
}
ERROR_COLUMNS = ("rel_rms_err", "softmax_rel_rms_err", "softmax_local_rel_rms_err")


def with_figures(row: dict) -> dict:
    error, column, memory = FIGURES[row["impl"]]
    return {**row, **{name: None for name in ERROR_COLUMNS}, column: error, "peak_mem_bytes": memory}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recommend") / "cpu.jsonl"
    assert (
        main(
            [
                "run",
                "--impl",
                ",".join(FIGURES),
                "--seq-len",
                "16,32",
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
                "--no-causal",
                "--device",
                "cpu",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    rewrite_rows(path, with_figures)
    return path


def recommend(capsys, results: Path, *flags) -> tuple[int, str]:
    code = main(
        [
            "recommend",
            "--seq-len",
            "16",
            "--heads",
            "1",
            "--head-dim",
            "16",
            "--dtype",
            "float32",
            "--results",
            str(results),
            *flags,
        ]
    )
    return code, capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,miss",
    [
        (["--max-error", "0.05"], "sdpa, excluded by error 0.1 (rounding) above --max-error 0.05"),
        (["--memory-budget", "512KiB"], "linear, excluded by peak memory 1.0 MiB above --memory-budget 512.0 KiB"),
        # naive 2.7x over its budget, sdpa 1.3x, linear 1.2x over its error: linear came nearest
        (
            ["--max-error", "0.25", "--memory-budget", "3MiB"],
            "linear, excluded by error 0.3 (local) above --max-error 0.25",
        ),
    ],
)
def test_when_none_qualifies_recommend_exits_1_naming_the_nearest_miss(capsys, results, flags, miss):
    code, out = recommend(capsys, results, *flags)
    assert code == 1 and f"no implementation qualifies; nearest miss: {miss}\n" in out
    code, out = recommend(capsys, results, *flags, "--format", "json")
    answer = json.loads(out)
    assert code == 1 and answer["ranked"] == []
    assert f"{answer['nearest_miss']['impl']}, excluded by {answer['nearest_miss']['why']}" == miss


def test_both_limits_a_candidate_exceeds_are_named(capsys, results):
    code, out = recommend(capsys, results, "--max-error", "0.15", "--memory-budget", "3MiB")
    assert code == 1
    assert (
        "  naive: error 0.2 (rounding) above --max-error 0.15; peak memory 8.0 MiB above --memory-budget 3.0 MiB" in out
    )


def test_with_no_limit_to_relax_recommend_exits_1_saying_so(capsys, results):
    code, out = recommend(capsys, results, "--seq-len", "64")
    assert code == 1
    assert "no implementation qualifies, and no --max-error or --memory-budget excluded one" in out
    assert "naive: not measured around seq_len 64" in out
    code, out = recommend(capsys, results, "--seq-len", "64", "--format", "json")
    assert code == 1 and json.loads(out)["nearest_miss"] is None


def test_recommend_exits_0_when_one_qualifies(capsys, results):
    code, out = recommend(capsys, results, "--max-error", "0.15")
    assert code == 0 and "nearest miss" not in out
    code, out = recommend(capsys, results, "--max-error", "0.15", "--format", "json")
    assert code == 0 and [c["impl"] for c in json.loads(out)["ranked"]] == ["sdpa"]


def test_without_results_recommend_names_the_file_it_chose_first_on_stderr(capsys, results, tmp_path, monkeypatch):
    from suite.results import naming
    from suite.results.environment import machine_name

    monkeypatch.setattr(naming, "RESULTS_DIR", tmp_path)
    for name in ("2000-01-01_this-cpu_smoke.jsonl", "2000-01-02_this-cpu_smoke.jsonl"):  # run on this machine
        (tmp_path / name).write_text(results.read_text())
    assert main(["recommend", "--seq-len", "16", "--heads", "1", "--head-dim", "16", "--dtype", "float32"]) == 0
    newest, here = tmp_path / "2000-01-02_this-cpu_smoke.jsonl", machine_name("cpu")
    assert capsys.readouterr().err.splitlines()[0] == (
        f"recommend: reading {newest} (the newest results file in {tmp_path}/ timed on {here}; --results names others)"
    )
    code, _ = recommend(capsys, results)
    assert code == 0 and "reading" not in capsys.readouterr().err  # named by the user: not repeated


@pytest.mark.parametrize("times,flagged", [(2, True), (1, True), (0.5, False)])
def test_an_error_far_from_softmax_is_flagged_in_the_ranking(capsys, results, tmp_path, times, flagged):
    """Without --max-error an approximation no better than outputting zeros is still ranked, but marked."""
    from suite.compare.recommend import FAR_OFF_ERROR, FAR_OFF_MARK

    path = tmp_path / "far.jsonl"
    path.write_text(results.read_text())
    error = FAR_OFF_ERROR * times
    rewrite_rows(path, lambda r: {**r, "softmax_local_rel_rms_err": error} if r["impl"] == "linear" else r)
    code, out = recommend(capsys, path)
    lines = {line.split()[1]: line for line in out.splitlines() if line[:1].isdigit()}
    assert code == 0 and set(lines) == set(FIGURES)
    marked = {impl for impl, line in lines.items() if re.search(rf" \(\S+\) {re.escape(FAR_OFF_MARK)} ", line)}
    assert marked == ({"linear"} if flagged else set())
    legend = f"{FAR_OFF_MARK} error at least {FAR_OFF_ERROR:g}: at least half the size of the output itself"
    assert (legend in out) == flagged
    code, out = recommend(capsys, path, "--format", "json")
    assert {c["impl"]: c["far_off"] for c in json.loads(out)["ranked"]} == {
        "naive": False,
        "sdpa": False,
        "linear": flagged,
    }
