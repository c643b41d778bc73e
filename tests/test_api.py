"""suite.api: a function of one's own checked and timed from Python, as the command line does it."""

from __future__ import annotations

import re

import pytest
import torch

from suite.api import as_implementation, benchmark, check, compare
from suite.cli import main
from suite.measure import failures
from suite.results import files as results
from tests.conftest import sdpa


def attention(q, k, v, *, causal=False):
    return sdpa(q, k, v, causal=causal)


def unscaled(q, k, v, *, causal=False):
    """Forgets the 1/√D scale: a bug every check must catch."""
    return sdpa(q, k, v, causal=causal, scale=1.0)


def without_grouped_heads(case) -> list[str]:
    return [f"kv_heads={case.kv_heads} (not written yet)"] if case.kv_heads not in (None, case.heads) else []


def wrong_at_head_dim_80(q, k, v, *, causal=False):
    """Right everywhere but at head dim 80, which none of the built-in shapes has."""
    out = sdpa(q, k, v, causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    return out * (1.01 if q.shape[-1] == 80 else 1.0)


def one_head_count(q, k, v, *, causal=False):
    """Softmax attention written for as many key/value heads as query heads: its einsums fail on grouped ones."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / q.shape[-1] ** 0.5
    if causal:  # the queries are the last positions
        visible = torch.ones(scores.shape[-2:], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2])
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)


def linear_style(q, k, v, *, causal=False):
    """Linear attention in its quadratic form (features elu + 1): an approximation of softmax attention, in the
    inputs' dtype; called with float64 inputs, it is its own exact twin."""
    from implementations.base import expand_kv

    features = lambda x: torch.exp(x.clamp(max=0)) + x.clamp(min=0)  # noqa: E731 - elu(x) + 1 without cancelling
    k, v = expand_kv(q, k, v)
    weights = features(q) @ features(k).transpose(-2, -1)
    if causal:
        weights = weights.tril(k.shape[-2] - q.shape[-2])
    return (weights @ v) / weights.sum(-1, keepdim=True)


def unscaled_a_little(q, k, v, *, causal=False):
    """A bug, not an approximation: 1% off everywhere."""
    return sdpa(q, k, v, causal=causal, enable_gqa=q.shape[1] != k.shape[1]) * 1.01


def test_check_passes_a_correct_function_and_fails_a_wrong_one():
    good = check(as_implementation(attention, "mine", supports=without_grouped_heads), dtypes="float32")
    assert good.ok and good.count("fail") == good.count("error") == 0 and good.count("unsupported") > 0
    assert good.format().startswith("mine: ok")
    bad = check(as_implementation(unscaled, "mine"), dtypes="float32")
    assert not bad.ok and bad.count("fail") > 0 and bad.format().startswith("mine: FAILED")


def test_check_takes_shapes_of_ones_own_as_the_command_line_does():
    """As `check --head-dim 80 --seq-len 100 --q-len 7`: a function wrong only at head dim 80 fails there alone."""
    summary = check(
        as_implementation(wrong_at_head_dim_80, "mine"), dtypes="float32", head_dim=80, seq_len=[100], q_len=7
    )
    failed = {result.case.label for result in summary.results if result.status == "fail"}
    assert (
        not summary.ok
        and summary.count("error") == 0
        and {label.split("-fp32")[0] for label in failed}
        == {
            "B3-H2-N17-D80",
            "B1-H2-N257-D80",
            "B2-H4-KV2-N33-D80",
            "B1-H2-N100-D80",
            "B1-H4-KV2-N100-D80",
            "B1-H2-N100-Q7-D80",
            "B1-H4-KV2-N100-Q7-D80",
        }
    )
    assert len(failed) == 7 * 2 * 2  # causal and not, with and without autograd


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"head_dim": 0}, r"head_dim: '0' is not a positive integer \(allowed: integers >= 1\)"),
        ({"seq_len": "12x"}, r"seq_len: '12x' is not a positive integer"),
        ({"q_len": [1, 1.5]}, r"q_len: '1.5' is not a positive integer"),
        ({"seq_len": 64, "q_len": 65}, r"q_len: 65 exceeds the length 64 \(allowed: at most every seq_len value"),
        ({"q_len": 300}, r"q_len: 300 exceeds the length 257 \(allowed: at most every seq_len value, 257 without one"),
    ],
)
def test_check_refuses_bad_shapes_before_checking(arguments, message):
    def never_called(q, k, v, *, causal=False):
        raise AssertionError("checked")

    with pytest.raises(ValueError, match=message):
        check(as_implementation(never_called, "mine"), dtypes="float32", **arguments)


def test_an_approximation_is_checked_against_its_own_twin():
    """A family and an exact twin, without a subclass; undeclared, its errors are an approximation's, and the
    summary says how to declare it."""
    declared = check(
        as_implementation(linear_style, "mine", family="linear", exact_twin=linear_style), dtypes="float32"
    )
    assert declared.ok and declared.count("unsupported") == 0, declared.format()
    undeclared = check(as_implementation(linear_style, "mine"), dtypes="float32").format()
    assert undeclared.startswith("mine: FAILED")
    assert re.search(
        r"^  note: errors this large \(up to \d+% relative RMS\) are no rounding: an approximation of "
        r"softmax attention must declare its family and its exact twin, .*"
        r"\(as_implementation\(\.\.\., family=\.\.\., exact_twin=\.\.\.\)",
        undeclared,
        re.M,
    )
    slightly_off = check(as_implementation(unscaled_a_little, "mine"), dtypes="float32").format()
    assert slightly_off.startswith("mine: FAILED") and "note: errors this large" not in slightly_off


def test_a_declared_approximation_runs_as_its_family(tmp_path):
    frame = benchmark(
        [as_implementation(linear_style, "mine", family="linear", exact_twin=linear_style)],
        seq_len=33,
        heads=2,
        head_dim=16,
        batch=1,
        dtype="float32",
        device="cpu",
        progress=False,
    )
    (row,) = frame.to_dict("records")
    assert row["family"] == "linear" and row["status"] == "ok" and row["accuracy_ok"]
    assert row["softmax_rel_rms_err"] > 0.01  # its distance from softmax attention, beside the check against its twin


@pytest.mark.parametrize(
    "arguments,message",
    [
        (
            {"family": "approximate"},
            r"family: 'approximate' is not a family \(allowed: exact, or for an approximation of softmax attention "
            r"one of sparse, linear, performer, low-rank\)",
        ),
        ({"family": "linear"}, r"exact_twin: none given for family 'linear' \(allowed: the approximation's own maths"),
        (
            {"exact_twin": linear_style},
            r"exact_twin: given for family 'exact' \(allowed: only with an approximate family",
        ),
        ({"family": "performer", "exact_twin": 3}, r"exact_twin: 3 is not callable"),
        (
            {"family": "performer", "exact_twin": lambda q, k, v: q},
            r"exact_twin: <lambda> takes \(q, k, v\), which \(q, k, v, causal=\.\.\.\) does not fit",
        ),
    ],
)
def test_as_implementation_refuses_a_family_without_its_twin(arguments, message):
    with pytest.raises(ValueError, match=message):
        as_implementation(linear_style, "mine", **arguments)


def test_a_function_without_grouped_query_heads_is_told_why_it_failed():
    summary = check(as_implementation(one_head_count, "mine"), dtypes="float32")
    errors = [result for result in summary.results if result.status == "error"]
    assert errors and all(result.case.kv_heads not in (None, result.case.heads) for result in errors)
    assert summary.count("fail") == 0 and summary.count("pass") > 0
    told = re.compile(
        r"GroupedQueryError: mine failed on a case with (\d) key/value heads for (\d) query heads "
        r"\(grouped-query attention.*RuntimeError: einsum\(\).*as_implementation\(\.\.\., supports="
    )
    for result in errors:
        assert (match := told.search(result.detail)), result.detail
        assert match.groups() == (str(result.case.kv_heads), str(result.case.heads))
    declared = check(as_implementation(one_head_count, "mine", supports=without_grouped_heads), dtypes="float32")
    assert declared.ok and {r.case for r in errors} <= {r.case for r in declared.results if r.status == "unsupported"}
    twin = as_implementation(linear_style, "mine", family="linear", exact_twin=one_head_count)
    q, k = torch.zeros(1, 4, 3, 8, dtype=torch.float64), torch.zeros(1, 2, 3, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"mine's exact_twin failed on a case with 2 key/value heads for 4 query"):
        twin.exact_twin(q, k, k)


def test_benchmark_writes_rows_the_command_line_reads(tmp_path, capsys):
    out = tmp_path / "mine.jsonl"
    frame = benchmark(
        [
            as_implementation(attention, "mine", supports=without_grouped_heads),
            "naive",
            as_implementation(unscaled, "unscaled"),
        ],
        seq_len=[17, 64],
        heads=4,
        kv_heads=[4, 2],
        head_dim=16,
        batch=2,
        causal=[False, True],
        mode="fwd",
        dtype="float32",
        device="cpu",
        out=out,
        progress=False,
    )
    assert len(frame) == 3 * 2 * 2 * 2 and set(frame.impl) == {"mine", "naive", "unscaled"}
    mine = frame[frame.impl == "mine"]
    assert set(mine[mine.kv_heads == 4].status) == {"ok"} and mine[mine.kv_heads == 4].accuracy_ok.all()
    assert (mine[mine.kv_heads == 2].reason == "kv_heads=2 (not written yet)").all()
    unscaled_rows = frame[frame.impl == "unscaled"]
    assert set(unscaled_rows[unscaled_rows.kv_heads == 4].status) == {"mismatch"}
    crashed = unscaled_rows[unscaled_rows.kv_heads == 2]  # SDPA without enable_gqa: an error row, and the run goes on
    assert set(crashed.status) == {"error"} and crashed.reason.str.contains("RuntimeError").all()
    assert crashed.reason.str.contains("unscaled failed on a case with 2 key/value heads for 4 query heads").all()
    assert (frame[frame.status == "ok"].time_ms > 0).all()
    assert frame.equals(results.load(out))  # the file holds what was returned

    assert main(["compare", str(out), str(out)]) == 0
    assert re.search(r"^  mine\s", capsys.readouterr().out, re.M)
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--baseline", "naive"]) == 0
    assert "| mine |" in (tmp_path / "report" / "report.md").read_text()


def test_benchmark_without_out_leaves_no_file_and_shows_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = benchmark("naive", seq_len=9, heads=1, head_dim=8, batch=1, mode=["fwd", "fwd+bwd"], device="cpu")
    assert list(frame.status) == ["ok", "ok"] and list(frame["mode"]) == ["fwd", "fwd+bwd"]
    assert "naive" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_benchmark_takes_a_timing_policy():
    frame = benchmark(
        "naive",
        seq_len=9,
        heads=1,
        head_dim=8,
        batch=1,
        device="cpu",
        progress=False,
        timing={"min_repeats": 5, "max_repeats": 5, "warmup_calls": 0},
    )
    assert list(frame.repeats) == [5] and list(frame.timing) == ["0 warm-up, 5-5 repeats, 0.25 s, ±1%, noisy >10%"]


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"seq_len": 0}, r"seq_len: '0' is not a positive integer"),
        ({"seq_len": [8, 1.5]}, r"seq_len: '1.5' is not a positive integer"),
        ({"dtype": "float64"}, r"dtype: unknown dtype 'float64' \(allowed: float16, bfloat16, float32\)"),
        ({"causal": "yes"}, r"causal: 'yes' is not allowed \(allowed: True, False or both as \[False, True\]\)"),
        ({"mode": "forward"}, r"mode: unknown mode 'forward' \(allowed: fwd, bwd, fwd\+bwd\)"),
        ({"heads": 4, "kv_heads": 3}, r"kv_heads 3 does not divide heads 4"),
        ({"device": "tpu"}, r"device: unknown device 'tpu' \(allowed: cpu, cuda\)"),
        ({"impls": ["naive", "naive"]}, r"impls: 'naive' is given twice"),
        ({"impls": ["nave"]}, r"impls: unknown implementation 'nave'"),
        ({"impls": []}, r"impls: none given"),
        ({"impls": "nave"}, r"impls: unknown implementation 'nave'"),  # one name, not its letters
        ({"seed": "1"}, r"seed: '1' is not an integer"),
        ({"timing": {"min_repeats": 0}}, r"timing: min_repeats='0' is not allowed \(allowed: an integer >= 1"),
        ({"timing": {"repeats": 5}}, r"timing: unknown key 'repeats'"),
        ({"threads": 0}, r"threads: '0' is not a positive integer \(allowed: integers >= 1\)"),
        ({"threads": 1.5}, r"threads: '1.5' is not a positive integer"),
        ({"threads": True}, r"threads: 'true' is not a positive integer"),
    ],
)
def test_benchmark_refuses_bad_arguments_before_measuring(tmp_path, arguments, message):
    out = tmp_path / "r.jsonl"
    given = {"impls": ["naive"], "seq_len": 8, "device": "cpu", "out": out, **arguments}
    with pytest.raises(ValueError, match=message):
        benchmark(given.pop("impls"), **given)
    assert not out.exists()


def test_benchmark_refuses_an_existing_file_and_names_that_are_not_labels(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("")
    with pytest.raises(ValueError, match=r"out: .* already exists"):
        benchmark(["naive"], seq_len=8, device="cpu", out=out)
    assert out.read_text() == ""
    with pytest.raises(ValueError, match=r"out: cannot write .* is a file, not a directory"):
        benchmark(["naive"], seq_len=8, device="cpu", out=out / "r.jsonl")
    for name in ("", "my:attention", "a,b", "sdpa*"):
        with pytest.raises(ValueError, match=re.escape(f"name: {name!r} is not a usable name")):
            as_implementation(attention, name)
    with pytest.raises(ValueError, match="function: 3 is not callable"):
        as_implementation(3, "three")
    with pytest.raises(
        ValueError,
        match=r"function: <lambda> takes \(q, k, v\), which \(q, k, v, causal=\.\.\.\) "
        r"does not fit: got an unexpected keyword argument 'causal'",
    ):
        as_implementation(lambda q, k, v: q, "mine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_benchmark_on_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match=r"device: 'cuda' was asked for but no CUDA device is available"):
        benchmark(["naive"], seq_len=8, device="cuda")


def test_check_stops_where_the_device_became_unusable(monkeypatch):

    def crashes(q, k, v, *, causal=False):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(failures, "device_usable", lambda device: False)  # asked only after an error
    summary = check(as_implementation(crashes, "crashes"), dtypes="float32")
    assert len(summary.results) == 1 and summary.results[0].status == "error" and not summary.ok


def test_compare_gives_the_verdicts_of_attnbench_compare_as_a_frame(tmp_path):
    out = tmp_path / "r.jsonl"
    frame = benchmark(
        ["naive", "sdpa"],
        seq_len=[17, 9],
        heads=1,
        head_dim=8,
        tokens_per_batch=68,
        device="cpu",
        out=out,
        progress=False,
    )  # batch 4 at 17 tokens, 7 at 9: lengths still come in order
    same = compare(frame, frame)
    assert len(same) == 4 and set(same.verdict) == {"same"}
    assert same.attrs == {"regressed": False, "verdict": "no regression", "notes": []}
    paired = compare(out, [out], baseline_impl="naive", current_impl="sdpa")
    assert paired.impl.tolist() == ["sdpa vs naive"] * 2 and paired.seq_len.tolist() == [9, 17]
    assert set(paired.verdict) <= {"same", "slower", "faster", "ambiguous"} and (paired.ratio > 0).all()
    median = frame.set_index(["impl", "seq_len"]).time_ms
    assert paired.ratio.tolist() == pytest.approx([median["sdpa", n] / median["naive", n] for n in (9, 17)])
    with pytest.raises(ValueError, match="baseline_impl, current_impl: give both"):
        compare(frame, frame, current_impl="sdpa")
    with pytest.raises(ValueError, match=r"the current results have no row of 'mine' \(they have: naive, sdpa\)"):
        compare(frame, frame, baseline_impl="sdpa", current_impl="mine")
    with pytest.raises(ValueError, match=r"threshold: -1 is not allowed \(allowed: a fraction > 0"):
        compare(frame, frame, threshold=-1)
    with pytest.raises(ValueError, match=r"^threshold: None is not allowed"):
        compare(frame, frame, threshold=None)
    assert compare(frame, frame, memory_threshold=None).memory_verdict.isna().all()  # memory left out
    with pytest.raises(ValueError, match=r"baseline: .*nothere.jsonl: no such file"):
        compare(tmp_path / "nothere.jsonl", frame)


def test_benchmark_and_a_run_naming_no_preset_choose_the_same_batch(monkeypatch, tmp_path):
    """Without a batch, each length's is 16384 tokens over it in both; a preset's batch holds where one is named, and
    the default preset's over its own lengths (a CPU run naming nothing measures smoke's shapes)."""
    from suite import api
    from suite.run import runner as run_command

    measured: list[list[tuple[int, int]]] = []
    monkeypatch.setattr(
        run_command,
        "run_cases",
        lambda impls, cases, **_: measured.append([(case.seq_len, case.batch) for case in cases]) or [],
    )
    monkeypatch.setattr(api, "run_cases", run_command.run_cases)
    monkeypatch.setattr(api, "load", lambda path: None)  # no rows were written
    grid = [
        "--impl",
        "naive",
        "--seq-len",
        "64,1024",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--dtype",
        "float32",
        "--causal",
        "false",
        "--mode",
        "fwd",
        "--device",
        "cpu",
        "--in-process",  # where run_cases is replaced
    ]
    benchmark("naive", seq_len=[64, 1024], heads=1, head_dim=8, dtype="float32", device="cpu", progress=False)
    assert main(["run", *grid, "--out", str(tmp_path / "none.jsonl")]) == 0
    assert measured[0] == measured[1] == [(64, 256), (1024, 16)]
    assert main(["run", *grid, "--preset", "smoke", "--out", str(tmp_path / "smoke.jsonl")]) == 0
    assert measured[2] == [(64, 2), (1024, 2)]
    assert main(["run", *grid[:2], *grid[4:], "--out", str(tmp_path / "smoke-lengths.jsonl")]) == 0
    assert measured[3] == [(128, 2), (255, 2)]


def test_benchmark_threads_hold_for_its_run_only(tmp_path):
    import json

    before, out = torch.get_num_threads(), tmp_path / "r.jsonl"
    frame = benchmark(
        "naive", seq_len=8, heads=1, head_dim=8, batch=1, device="cpu", out=out, progress=False, threads=1
    )
    assert torch.get_num_threads() == before
    assert frame.machine.iloc[0].endswith("(1 thread)")
    header = json.loads(out.read_text().splitlines()[0])
    assert header["threads"] == 1 and header["environment"]["cpu_threads"] == 1
