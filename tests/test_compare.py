"""`attnbench compare` on result files built from a real CPU run, with controlled timing changes."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import implementations
from suite.case import Case
from suite.cli import main
from suite.compare.regressions import mann_whitney_greater
from suite.measure.settings import RunSettings, TimingPolicy
from suite.results.files import ResultsWriter
from suite.run.runner import run_cases

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory) -> list[dict]:
    """A real CPU run: its rows are the cases and medians the synthetic variants start from."""
    path = tmp_path_factory.mktemp("base") / "cpu.jsonl"
    writer = ResultsWriter(path, {"device": "cpu"}, {})
    settings = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=3, budget_s=0.01)})
    cases = [Case(1, 2, n, 16, "float32", False, "fwd", "cpu") for n in (16, 32, 64)]
    run_cases(
        [implementations.get("naive"), implementations.get("sdpa")], cases, settings=settings, on_row=writer.append
    )
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # The variants' times are synthetic: whether other processes shared the CPU while these rows were measured
    # must not make their verdicts ambiguous (the tests that want a contended row set it themselves).
    return [{**record, "cpu_contended": False} if record["record"] == "result" else record for record in records]


def synthetic(
    path: Path,
    records: list[dict],
    *,
    seed: int,
    noise: float = 0.02,
    slow: dict | None = None,
    edit=None,
    gpu: str | None = None,
    cpu: str | None = None,
    edit_header=None,
) -> Path:
    """Replace each row's raw times by 40 log-normal samples around its real median (× slow[impl])."""
    rng = random.Random(seed)
    lines = []
    for record in records:
        record = json.loads(json.dumps(record))
        if record["record"] == "run" and gpu:
            record["environment"].update(device="cuda", gpu=gpu)
        if record["record"] == "run" and cpu:
            record["environment"]["cpu"] = cpu
        if record["record"] == "run" and edit_header:
            edit_header(record["environment"])
        if record["record"] == "result" and record["status"] == "ok":
            center = record["time_ms"] * (slow or {}).get((record["impl"], record["seq_len"]), 1.0)
            times = [center * rng.lognormvariate(0, noise) for _ in range(40)]
            ordered = sorted(times)
            record.update(times_ms=times, time_ms=ordered[20], time_iqr_ms=ordered[30] - ordered[10], throttled=False)
            if edit:
                edit(record)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def verdicts(capsys, base: Path, current: Path, *flags) -> tuple[int, dict]:
    code = main(["compare", str(base), str(current), "--format", "json", *flags])
    out = capsys.readouterr().out
    if code == 2:
        return code, {}
    rows = json.loads(out)["rows"]
    return code, {(r["impl"], r["seq_len"]): r["verdict"] for r in rows}


def test_identical_runs_are_the_same(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    code, found = verdicts(capsys, base, base)
    assert code == 0 and set(found.values()) == {"same"}


def test_resampled_noise_is_the_same(tmp_path, capsys, real_rows):
    for seed in range(5):
        base = synthetic(tmp_path / "a.jsonl", real_rows, seed=seed)
        current = synthetic(tmp_path / "b.jsonl", real_rows, seed=seed + 100)
        code, found = verdicts(capsys, base, current)
        assert code == 0 and set(found.values()) == {"same"}, found


def test_a_20_percent_slowdown_is_slower_and_exits_1(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow={("sdpa", 32): 1.2})
    code, found = verdicts(capsys, base, current)
    assert code == 1 and found[("sdpa", 32)] == "slower"
    assert {v for k, v in found.items() if k != ("sdpa", 32)} == {"same"}
    assert main(["compare", str(base), str(current), "--format", "md"]) == 1
    markdown = capsys.readouterr().out
    assert markdown.index("| slower | `sdpa") < markdown.index("| verdict | rows |")  # regressions first


def test_a_3_percent_change_under_10_percent_noise_is_never_slower(tmp_path, capsys, real_rows):
    for seed in range(8):
        base = synthetic(tmp_path / "a.jsonl", real_rows, seed=seed, noise=0.10)
        current = synthetic(tmp_path / "b.jsonl", real_rows, seed=seed + 50, noise=0.10, slow={("naive", 64): 1.03})
        for threshold in ("5", "1"):
            code, found = verdicts(capsys, base, current, "--threshold", threshold)
            assert "slower" not in found.values() and code == 0, (seed, threshold, found)


def test_a_throttled_row_is_ambiguous_not_slower(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)

    def throttle(record):
        if record["impl"] == "sdpa" and record["seq_len"] == 32:
            record["throttled"] = True

    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow={("sdpa", 32): 1.3}, edit=throttle)
    code, found = verdicts(capsys, base, current)
    assert found[("sdpa", 32)] == "ambiguous" and code == 0


@pytest.mark.parametrize("side", ["baseline", "current"])
def test_a_row_measured_on_a_shared_cpu_is_ambiguous_not_slower(tmp_path, capsys, real_rows, side):
    """`cpu_contended` True on either side is treated as a throttled row; false, null or absent is not."""

    def contended(value):
        def edit(record):
            record["cpu_contended"] = value if (record["impl"], record["seq_len"]) == ("sdpa", 32) else None

        return edit

    slow = {("sdpa", 32): 1.3}
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit=contended(side == "baseline"))
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow=slow, edit=contended(side == "current"))
    assert main(["compare", str(base), str(current), "--format", "json"]) == 0
    rows = {(r["impl"], r["seq_len"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    shared = rows.pop(("sdpa", 32))
    assert shared["verdict"] == "ambiguous"
    assert f"the CPU was shared with other processes while the {side} run measured this case" in shared["detail"]
    assert {row["verdict"] for row in rows.values()} == {"same"}  # null: not contended

    calm_base = synthetic(tmp_path / "c.jsonl", real_rows, seed=1, edit=contended(False))
    calm_current = synthetic(tmp_path / "d.jsonl", real_rows, seed=2, slow=slow, edit=contended(False))
    code, found = verdicts(capsys, calm_base, calm_current)
    assert code == 1 and found[("sdpa", 32)] == "slower"


@pytest.mark.parametrize("new_status", ["oom", "mismatch", "error"])
def test_a_new_failure_is_a_regression(tmp_path, capsys, real_rows, new_status):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)

    def fail(record):
        if record["impl"] == "naive" and record["seq_len"] == 64:
            record.update(status=new_status, reason="injected", accuracy_ok=False if new_status == "mismatch" else None)

    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=1, edit=fail)
    code, found = verdicts(capsys, base, current)
    assert code == 1 and found[("naive", 64)] == "regression"


def test_a_disappeared_case_is_a_regression(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    kept = [r for r in real_rows if not (r.get("impl") == "naive" and r.get("seq_len") == 16)]
    current = synthetic(tmp_path / "b.jsonl", kept, seed=1)
    code, found = verdicts(capsys, base, current)
    assert code == 1 and found[("naive", 16)] == "regression"


def test_a_case_that_never_ran_may_leave_the_grid(tmp_path, capsys, real_rows):
    """Unsupported in the baseline and absent now (a narrower grid): reported as dropped, not a regression."""

    def unsupported(record):
        if record["impl"] == "naive" and record["seq_len"] == 16:
            record.update(status="unsupported", reason="injected", time_ms=None, times_ms=None)

    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit=unsupported)
    kept = [r for r in real_rows if not (r.get("impl") == "naive" and r.get("seq_len") == 16)]
    current = synthetic(tmp_path / "b.jsonl", kept, seed=1)
    code, found = verdicts(capsys, base, current)
    assert code == 0 and found[("naive", 16)] == "dropped"
    assert set(found.values()) == {"same", "dropped"}
    assert main(["compare", str(base), str(current)]) == 0
    assert "not in the current results (was unsupported: injected)" in capsys.readouterr().out


FIXTURE_GRID = {
    "impls": ["naive", "sdpa"],
    "seq_len": [16, 32, 64],
    "heads": [2],
    "head_dim": [16],
    "dtype": ["float32"],
    "causal": [False],
    "mode": ["fwd"],
    "batch": [1],
    "tokens_per_batch": 16384,
    "kv_heads": [None],
}


def with_grid(records: list[dict], **grid) -> list[dict]:
    """The fixture's records, their run header recording the grid `run` would have been given."""
    return [{**r, "grid": {**FIXTURE_GRID, **grid}} if r["record"] == "run" else r for r in records]


def test_a_case_outside_the_current_grid_is_not_run_not_a_regression(tmp_path, capsys, real_rows):
    """`run --impl sdpa` compared with a baseline of naive and sdpa: naive was not asked for."""
    base = synthetic(tmp_path / "a.jsonl", with_grid(real_rows), seed=1)
    narrow = [r for r in with_grid(real_rows, impls=["sdpa"]) if r.get("impl") != "naive"]
    current = synthetic(tmp_path / "b.jsonl", narrow, seed=1)
    code, found = verdicts(capsys, base, current)
    assert code == 0 and {k: v for k, v in found.items() if k[0] == "naive"} == {
        ("naive", n): "not-run" for n in (16, 32, 64)
    }
    assert main(["compare", str(base), str(current)]) == 0
    text = capsys.readouterr().out
    assert "naive: 3 baseline cases not in the current run's grid" in text and "3 not-run" in text
    # a narrower list of lengths, by the same rule
    shorter = [r for r in with_grid(real_rows, seq_len=[16, 32]) if r.get("seq_len") != 64]
    code, found = verdicts(capsys, base, synthetic(tmp_path / "c.jsonl", shorter, seed=1))
    assert code == 0 and found[("naive", 64)] == found[("sdpa", 64)] == "not-run"


def test_a_case_inside_the_current_grid_that_vanished_is_still_a_regression(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", with_grid(real_rows), seed=1)
    crashed = [r for r in with_grid(real_rows) if not (r.get("impl") == "naive" and r.get("seq_len") == 64)]
    code, found = verdicts(capsys, base, synthetic(tmp_path / "b.jsonl", crashed, seed=1))
    assert code == 1 and found[("naive", 64)] == "regression"


def test_grid_coverage_follows_how_the_run_chose_the_batch_and_labels_implementations():
    from suite.run.grid_scope import GridScope

    header = {
        "grid": {
            **FIXTURE_GRID,
            "impls": ["sparse-window:window=256", "performer:features=64"],
            "batch": None,
            "tokens_per_batch": 64,
            "kv_heads": [None, 1],
        }
    }
    scope = GridScope.from_headers([header, {"amends": "local-inputs errors"}])
    key = {
        "impl": "sparse-window",
        "batch": 4,
        "heads": 2,
        "kv_heads": 2,
        "seq_len": 16,
        "head_dim": 16,
        "dtype": "float32",
        "causal": False,
        "mode": "fwd",
    }
    assert scope.asked_for(key)  # the default window is left out of the row's label
    assert scope.asked_for({**key, "impl": "performer:features=64", "kv_heads": 1})
    assert not scope.asked_for({**key, "batch": 1})  # 64 tokens per batch at 16 tokens: batch 4
    assert scope.asked_for({**key, "seq_len": 64, "batch": 1})
    assert not scope.asked_for({**key, "impl": "performer"})
    assert not scope.asked_for({**key, "causal": True})
    assert not scope.asked_for({**key, "kv_heads": 1 + 2})
    # a side whose runs do not all record a grid (pytest-benchmark JSON, old files) asks for everything
    assert GridScope.from_headers([header, {"record": "run"}]).asked_for({**key, "impl": "naive"})
    assert GridScope.from_headers([header]).merged(GridScope.unknown()).asked_for({**key, "impl": "naive"})


def test_different_gpu_models_exit_2(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, gpu="NVIDIA H100 80GB HBM3")
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=1, gpu="NVIDIA A100-SXM4-80GB")
    assert main(["compare", str(base), str(current)]) == 2
    assert "different machines" in capsys.readouterr().err


def test_different_cpu_models_exit_2(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, cpu="Intel(R) Xeon(R) Platinum 8480+")
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=1, cpu="AMD EPYC 9654 96-Core Processor")
    assert main(["compare", str(base), str(current)]) == 2
    assert "AMD EPYC 9654" in capsys.readouterr().err
    same_model = synthetic(tmp_path / "c.jsonl", real_rows, seed=2, cpu="Intel(R) Xeon(R) Platinum 8480+")
    assert main(["compare", str(base), str(same_model)]) == 0
    capsys.readouterr()
    threads = [
        synthetic(
            tmp_path / f"{count}.jsonl",
            real_rows,
            seed=count,
            cpu="Intel(R) Xeon(R) Platinum 8480+",
            edit_header=lambda environment, count=count: environment.update(cpu_threads=count),
        )
        for count in (2, 1)
    ]
    assert main(["compare", *map(str, threads)]) == 2  # OMP_NUM_THREADS=1 in one CI job, say
    assert "Intel(R) Xeon(R) Platinum 8480+ (1 thread)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json at all\n{}\n", "not valid JSON"),
        ("", "no result rows"),
        ('{"benchmarks": [{"name": "x", "stats": {}}]}', "lacks the attnbench case"),
    ],
)
def test_malformed_files_exit_2(tmp_path, capsys, real_rows, content, message):
    good = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["compare", str(good), str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_no_common_case_exits_2(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", [r for r in real_rows if r.get("impl") != "sdpa"], seed=1)
    current = synthetic(tmp_path / "b.jsonl", [r for r in real_rows if r.get("impl") != "naive"], seed=1)
    assert main(["compare", str(base), str(current)]) == 2
    assert "no (implementation, case) in common: impl: naive (baseline) vs sdpa (current)" in capsys.readouterr().err


def test_no_common_case_names_the_fields_that_differ_and_their_values(tmp_path, capsys, real_rows):
    """Batch 2 against a run whose batch followed 16384 // N: the batch is what differs, not the grid at large."""

    def batch(choose):
        return [{**r, "batch": choose(r["seq_len"])} if r["record"] == "result" else r for r in real_rows]

    base = synthetic(tmp_path / "a.jsonl", batch(lambda n: 2), seed=1)
    current = synthetic(tmp_path / "b.jsonl", batch(lambda n: 8 if n < 64 else 16), seed=1)
    assert main(["compare", str(base), str(current)]) == 2
    err = capsys.readouterr().err
    assert "no (implementation, case) in common: batch: 2 (baseline) vs 8, 16 (current)" in err
    assert "seq_len" not in err and "impl" not in err.split("in common:")[1]  # equal on both sides: not named

    crossed = synthetic(tmp_path / "c.jsonl", batch(lambda n: 2 if n < 64 else 8), seed=1)
    other = [{**r, "batch": 8 if r["seq_len"] < 64 else 2} if r["record"] == "result" else r for r in real_rows]
    assert main(["compare", str(crossed), str(synthetic(tmp_path / "d.jsonl", other, seed=1))]) == 2
    assert "every field's values occur on both sides, but in no combination both have" in capsys.readouterr().err


def test_rank_test_detects_a_shift_and_not_its_absence():
    rng = random.Random(0)
    a = [rng.gauss(1.0, 0.05) for _ in range(30)]
    assert mann_whitney_greater([x * 1.2 for x in a], a) < 1e-6
    assert mann_whitney_greater(a, [x * 1.2 for x in a]) > 0.99
    assert mann_whitney_greater([1.0] * 10, [1.0] * 10) >= 0.5


def test_pytest_benchmark_json_is_read_by_compare(tmp_path, capsys):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "naive or sdpa-math",
        f"--benchmark-json={out}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["machine_info"]["gpu"] == "cpu" and data["benchmarks"]
    first = data["benchmarks"][0]
    assert first["extra_info"]["tflops"] > 0 and len(first["stats"]["data"]) >= 3
    assert first["extra_info"]["peak_mem_bytes"] > 0
    assert main(["compare", str(out), str(out)]) == 0
    assert f"peak memory: {len(data['benchmarks'])} same" in capsys.readouterr().out
    # without a GPU, the CPU pytest-benchmark names is the machine
    assert data["machine_info"]["cpu"]["brand_raw"]
    data["machine_info"]["cpu"]["brand_raw"] = "Another CPU 9000"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(data))
    assert main(["compare", str(out), str(elsewhere)]) == 2
    assert "Another CPU 9000" in capsys.readouterr().err
    # nor between two thread counts of one CPU, as for attnbench's own files
    data["machine_info"]["cpu"]["brand_raw"] = json.loads(out.read_text())["machine_info"]["cpu"]["brand_raw"]
    data["machine_info"]["attnbench"]["cpu_threads"] += 1
    elsewhere.write_text(json.dumps(data))
    assert main(["compare", str(out), str(elsewhere)]) == 2
    assert f"({data['machine_info']['attnbench']['cpu_threads']} threads)" in capsys.readouterr().err


def test_each_implementation_gets_the_geometric_mean_of_its_time_ratios(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow={("sdpa", 32): 1.2, ("sdpa", 64): 1.2})
    assert main(["compare", str(base), str(current), "--format", "json"]) == 1
    summaries = {s["impl"]: s for s in json.loads(capsys.readouterr().out)["implementations"]}
    assert summaries["sdpa"]["timed"] == summaries["naive"]["timed"] == 3
    assert summaries["sdpa"]["geomean_ratio"] == pytest.approx(1.2 ** (2 / 3), rel=0.02)  # two of three cases
    assert summaries["naive"]["geomean_ratio"] == pytest.approx(1.0, rel=0.02)
    assert summaries["sdpa"]["verdicts"] == {"slower": 2, "same": 1}
    assert main(["compare", str(base), str(current), "--format", "md"]) == 1
    assert re.search(
        r"^\| `sdpa` \| ×1\.1\d\d \| 3 \| 2 slower, 1 same \| ×1\.000: 3 same \|$", capsys.readouterr().out, re.M
    )


def _peak_memory(scale: dict[tuple[str, int], float], base_bytes: int = 8 << 20):
    """An edit for `synthetic`: every row holds `base_bytes`, times scale[(impl, seq_len)]."""

    def edit(record: dict) -> None:
        record["peak_mem_bytes"] = int(base_bytes * scale.get((record["impl"], record["seq_len"]), 1.0))

    return edit


def memory_verdicts(capsys, base: Path, current: Path, *flags) -> tuple[int, dict]:
    code = main(["compare", str(base), str(current), "--format", "json", *flags])
    return code, {(r["impl"], r["seq_len"]): r["memory_verdict"] for r in json.loads(capsys.readouterr().out)["rows"]}


def test_real_runs_measure_the_same_peak_memory_twice(tmp_path, capsys, real_rows):
    assert all(r["peak_mem_bytes"] > 0 for r in real_rows if r["record"] == "result")  # CPU rows measure it too
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    code, found = memory_verdicts(capsys, base, synthetic(tmp_path / "b.jsonl", real_rows, seed=2))
    assert code == 0 and set(found.values()) == {"same"}


def test_more_peak_memory_is_a_regression_even_at_the_same_speed(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit=_peak_memory({}))
    current = synthetic(
        tmp_path / "b.jsonl", real_rows, seed=1, edit=_peak_memory({("sdpa", 32): 1.5, ("naive", 16): 0.5})
    )
    code, found = memory_verdicts(capsys, base, current)
    assert code == 1 and found.pop(("sdpa", 32)) == "more" and found.pop(("naive", 16)) == "less"
    assert set(found.values()) == {"same"}
    assert main(["compare", str(base), str(current)]) == 1
    text = capsys.readouterr().out
    assert re.search(r"^more memory\s+1\.500\s+sdpa B1 H2 N32 .*8\.0 MiB -> 12\.0 MiB \(\+50\.0%\)$", text, re.M)
    assert re.search(r"^less memory\s+0\.500\s+naive B1 H2 N16 ", text, re.M)
    assert "peak memory: 1 more, 1 less, 4 same" in text
    assert main(["compare", str(base), str(current), "--format", "md"]) == 1
    markdown = capsys.readouterr().out
    assert "## attnbench: **regression**" in markdown
    assert re.search(r"^\| more memory \| `sdpa B1 H2 N32 .*\| 1\.500 \|", markdown, re.M)
    assert main(["compare", str(base), str(current), "--memory-threshold", "60"]) == 0  # 50% is within 60%
    capsys.readouterr()
    code, found = memory_verdicts(capsys, base, current, "--memory-threshold", "off")
    assert code == 0 and set(found.values()) == {None}


def test_a_regression_by_memory_alone_is_named_as_such_where_every_time_is_faster(tmp_path, capsys, real_rows):
    """Exit 1 with every timing verdict `faster`: the verdict line and the API's detail say it was the memory."""
    from suite.api import compare

    quicker = {(impl, n): 0.7 for impl in ("naive", "sdpa") for n in (16, 32, 64)}
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit=_peak_memory({}))
    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow=quicker, edit=_peak_memory({("sdpa", 32): 1.5}))
    grown = "sdpa B1 H2 N32 D16 float32 dense fwd (8.0 MiB -> 12.0 MiB (+50.0%))"
    code, found = verdicts(capsys, base, current)
    assert code == 1 and set(found.values()) == {"faster"}
    assert main(["compare", str(base), str(current)]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    alone = "verdict: regressed by peak memory alone (no case slower or failing): peak memory grew in 1 case: "
    assert last == alone + grown
    assert main(["compare", str(base), str(current), "--format", "md"]) == 1
    assert f"peak memory grew in 1 case: {grown}" in capsys.readouterr().out
    assert main(["compare", str(base), str(current), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"].startswith("regressed by peak memory alone")

    frame = compare(base, current)
    assert frame.attrs["regressed"] and frame.attrs["verdict"].endswith(grown)
    row = frame[(frame.impl == "sdpa") & (frame.seq_len == 32)].iloc[0]
    assert row.verdict == "faster"
    assert row.detail.endswith("; more peak memory, a regression: peak memory 8.0 MiB -> 12.0 MiB (+50.0%)")
    assert not frame[frame.memory_verdict == "same"].detail.str.contains("memory").any()

    slower = synthetic(
        tmp_path / "c.jsonl", real_rows, seed=2, slow={("naive", 64): 1.5}, edit=_peak_memory({("sdpa", 32): 1.5})
    )
    assert main(["compare", str(base), str(slower)]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"verdict: regressed: 1 slower; peak memory grew in 1 case: {grown}"
    assert main(["compare", str(base), str(base)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: no regression"


def test_small_absolute_changes_in_peak_memory_do_not_count(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit=_peak_memory({}, base_bytes=4096))
    current = synthetic(
        tmp_path / "b.jsonl", real_rows, seed=1, edit=_peak_memory({("sdpa", 32): 3.0}, base_bytes=4096)
    )
    code, found = memory_verdicts(capsys, base, current)
    assert code == 0 and found[("sdpa", 32)] == "same"  # 4 KiB -> 12 KiB: below the 64 KiB floor


@pytest.mark.parametrize("value", ["-5", "0", "lots"])
def test_a_bad_memory_threshold_exits_2(tmp_path, capsys, real_rows, value):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    assert main(["compare", str(base), str(base), "--memory-threshold", value]) == 2
    assert f"--memory-threshold: {value!r} is not a positive number" in capsys.readouterr().err


def test_runs_under_other_software_or_speed_settings_are_noted(tmp_path, capsys, real_rows):
    """A verdict between runs that differ besides the code may be that difference's: compare says so, and says
    which side's timings a distorting setting (CUDA_LAUNCH_BLOCKING) inflated."""

    def recorded(**environment):
        return lambda env: env.update(
            torch="2.11.0",
            speed_settings={
                "environment": environment,
                "float32_matmul_precision": "highest",
                "deterministic_algorithms": False,
            },
        )

    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1, edit_header=recorded())
    same = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, edit_header=recorded())
    assert main(["compare", str(base), str(same)]) == 0
    assert "note:" not in capsys.readouterr().out

    blocking = synthetic(tmp_path / "c.jsonl", real_rows, seed=2, edit_header=recorded(CUDA_LAUNCH_BLOCKING="1"))
    assert main(["compare", str(base), str(blocking)]) == 0
    out = capsys.readouterr().out
    assert "note: the runs differ in speed settings: baseline default, current CUDA_LAUNCH_BLOCKING=1" in out
    assert "note: the current ran with CUDA_LAUNCH_BLOCKING set" in out and "the baseline ran with" not in out
    assert main(["compare", str(base), str(blocking), "--format", "md"]) == 0
    assert "> note: the runs differ in speed settings" in capsys.readouterr().out
    assert main(["compare", str(base), str(blocking), "--format", "json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert len(notes) == 2 and notes[1].startswith("the current ran with CUDA_LAUNCH_BLOCKING")

    not_blocking = synthetic(tmp_path / "d.jsonl", real_rows, seed=2, edit_header=recorded(CUDA_LAUNCH_BLOCKING="0"))
    newer = synthetic(
        tmp_path / "e.jsonl",
        real_rows,
        seed=2,
        edit_header=lambda env: (recorded(CUDA_LAUNCH_BLOCKING="0")(env), env.update(torch="2.12.0")),
    )
    assert main(["compare", str(not_blocking), str(newer)]) == 0
    out = capsys.readouterr().out
    assert "note: the runs differ in software: baseline torch 2.11.0, current torch 2.12.0" in out
    assert "speed settings" not in out and "ran with" not in out  # set to 0: launches do not block


def test_the_ratio_chart_draws_every_timed_case_in_its_verdicts_colour(tmp_path, capsys, real_rows):
    from matplotlib.colors import to_rgba

    from suite.compare.chart import VERDICT_COLOURS, ratio_chart
    from suite.compare.regressions import compare, read_side

    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)

    def fail(record):
        if record["impl"] == "naive" and record["seq_len"] == 64:
            record.update(status="oom", reason="injected")

    current = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow={("sdpa", 32): 1.3}, edit=fail)
    chart = tmp_path / "ratios.svg"
    assert main(["compare", str(base), str(current), "--chart", str(chart)]) == 1
    assert chart.read_bytes().startswith(b"<?xml") and "slower" in capsys.readouterr().out
    first = chart.read_bytes()
    assert main(["compare", str(base), str(current), "--chart", str(chart)]) == 1
    assert chart.read_bytes() == first  # the same bytes when drawn again, for a diff of a stored chart

    result = compare(read_side([base])[0], read_side([current])[0])
    fig = ratio_chart(result, 0.05)
    ax = fig.axes[0]
    points = [(tuple(c.get_offsets()[0]), tuple(c.get_facecolors()[0])) for c in ax.collections if len(c.get_offsets())]
    timed = [row for row in result.rows if row.ratio is not None]
    assert len(points) == len(timed) == 5  # 2 implementations x 3 lengths, less the case that failed
    slowed = [colour for (x, _), colour in points if x > 1.2]
    assert slowed == [to_rgba(VERDICT_COLOURS["slower"])]
    assert sum(colour == to_rgba(VERDICT_COLOURS["same"]) for _, colour in points) == 4
    assert [label.get_text() for label in ax.get_yticklabels()] == ["sdpa", "naive"]
    assert "not drawn: 1 cases whose status changed" in ax.get_title()


@pytest.mark.parametrize("ratios", [(0.3, 1.01, 4.0), (0.97, 1.0, 1.02), (0.05, 1.0, 30.0)])
def test_the_ratio_charts_tick_labels_do_not_run_into_each_other(ratios):
    """0.9, 0.95, 1, 1.05 and 1.1 lie close together on an axis that reaches 0.3 and 4."""
    import matplotlib.pyplot as plt

    from suite.compare.chart import ratio_chart
    from suite.compare.regressions import Comparison, RowVerdict
    from tests.chart_labels import overlapping_tick_labels, shown_tick_labels

    rows = [RowVerdict(key={"impl": impl}, verdict="same", ratio=ratio) for impl, ratio in zip(("a", "b", "c"), ratios)]
    fig = ratio_chart(Comparison(rows=rows), 0.05)
    assert overlapping_tick_labels(fig) == []
    shown = [label.get_text() for label in shown_tick_labels(fig.axes[0].xaxis)]
    assert "1" in shown and len(shown) >= 3
    plt.close(fig)


@pytest.mark.parametrize(
    "chart,message",
    [
        ("ratios.txt", "does not end in a chart format (allowed: .png, .svg, .pdf)"),
        ("a-file/ratios.png", "is a file, not a directory"),
    ],
)
def test_a_chart_path_that_cannot_be_drawn_exits_2_before_comparing(tmp_path, capsys, real_rows, chart, message):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    (tmp_path / "a-file").write_text("")
    assert main(["compare", str(base), str(base), "--chart", str(tmp_path / chart)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "ratios.txt").exists()


def _timed(records: list[dict], centers: dict, seed: int = 0) -> list[dict]:
    """`records` with each ok row's raw times drawn around centers[(impl, seq_len)] ms (1.0 where not named)."""
    rng = random.Random(seed)
    out = []
    for record in json.loads(json.dumps(records)):
        if record["record"] == "result" and record["status"] == "ok":
            times = [
                centers.get((record["impl"], record["seq_len"]), 1.0) * rng.lognormvariate(0, 0.02) for _ in range(40)
            ]
            ordered = sorted(times)
            record.update(times_ms=times, time_ms=ordered[20], time_iqr_ms=ordered[30] - ordered[10], throttled=False)
        out.append(record)
    return out


def test_two_implementations_are_compared_case_by_case(tmp_path, capsys, real_rows):
    """`--baseline-impl sdpa --current-impl naive`: each case's verdict says whether naive is slower than sdpa
    there, with the statistics and exit status of a comparison of two runs."""
    records = _timed(real_rows, {("naive", 64): 1.3})
    path = tmp_path / "one-run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, found = verdicts(capsys, path, path, "--baseline-impl", "sdpa", "--current-impl", "naive")
    assert code == 1 and found == {
        ("naive vs sdpa", 16): "same",
        ("naive vs sdpa", 32): "same",
        ("naive vs sdpa", 64): "slower",
    }
    code, found = verdicts(capsys, path, path, "--baseline-impl", "naive", "--current-impl", "sdpa")
    assert code == 0 and found[("sdpa vs naive", 64)] == "faster"

    assert main(["compare", str(path), str(path), "--baseline-impl", "sdpa", "--current-impl", "mine"]) == 2
    assert "the current results have no row of 'mine' (they have: naive, sdpa)" in capsys.readouterr().err
    assert main(["compare", str(path), str(path), "--current-impl", "naive"]) == 2
    assert "--current-impl: only with --baseline-impl" in capsys.readouterr().err


def test_an_implementation_pair_reads_the_current_grid_for_its_implementation(tmp_path, capsys, real_rows):
    """A case the current implementation was asked for and has no row of (a crash) is a regression, as in a
    comparison of two runs: the grid's cases of `--current-impl` count under the pair's label."""
    grid = {
        "impls": ["naive", "sdpa"],
        "seq_len": [16, 32, 64],
        "heads": [2],
        "head_dim": [16],
        "dtype": ["float32"],
        "causal": [False],
        "mode": ["fwd"],
        "batch": [1],
        "kv_heads": [None],
    }
    records = [{**r, "grid": grid} if r["record"] == "run" else r for r in _timed(real_rows, {})]
    base, current = tmp_path / "base.jsonl", tmp_path / "current.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in records))
    current.write_text(
        "".join(json.dumps(r) + "\n" for r in records if not (r.get("impl") == "naive" and r.get("seq_len") == 32))
    )
    code, found = verdicts(capsys, base, current, "--baseline-impl", "sdpa", "--current-impl", "naive")
    assert code == 1 and found[("naive vs sdpa", 32)] == "regression"
    narrower = {**grid, "seq_len": [16, 64]}
    current.write_text(
        "".join(
            json.dumps({**r, "grid": narrower} if r["record"] == "run" else r) + "\n"
            for r in records
            if not (r.get("impl") == "naive" and r.get("seq_len") == 32)
        )
    )
    code, found = verdicts(capsys, base, current, "--baseline-impl", "sdpa", "--current-impl", "naive")
    assert code == 0 and found[("naive vs sdpa", 32)] == "not-run"


def test_compare_impl_keeps_the_rows_of_the_implementations_it_names(tmp_path, capsys, real_rows):
    base = synthetic(tmp_path / "a.jsonl", real_rows, seed=1)
    slower = synthetic(tmp_path / "b.jsonl", real_rows, seed=2, slow={("naive", 64): 1.5})
    code, found = verdicts(capsys, base, slower)
    assert code == 1 and found[("naive", 64)] == "slower"
    code, found = verdicts(capsys, base, slower, "--impl", "sd*")  # the gate on sdpa alone passes
    assert code == 0 and {impl for impl, _ in found} == {"sdpa"}
    assert main(["compare", str(base), str(slower), "--impl", "flash"]) == 2
    assert (
        "--impl: 'flash' matches no implementation of either side (they have: naive, sdpa)" in capsys.readouterr().err
    )
    assert (
        main(["compare", str(base), str(base), "--impl", "sdpa", "--baseline-impl", "naive", "--current-impl", "sdpa"])
        == 2
    )
    assert "--impl: not with --baseline-impl and --current-impl" in capsys.readouterr().err
