"""Fewer queries than keys (decoding against a KV cache): the queries are the last q_len positions, and a causal
mask is aligned to the last key. The case, its counts, the oracle, and a run through report, recommend and compare."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right

import implementations
from implementations import reference_attention
from implementations.flops import attention_pairs
from implementations.linear import elu_feature_map, linear_recurrence
from suite.case import Case, GridError, key_of_row
from suite.cli import main
from suite.measure.traffic import minimum_bytes
from suite.results import files as results
from suite.run.presets import PRESETS

DECODING = Case(2, 4, 100, 16, "float32", True, "fwd", "cpu", kv_heads=2, q_len=3)


def test_a_case_with_as_many_queries_as_keys_is_spelled_one_way():
    full = Case(1, 2, 64, 16, "float32", False, "fwd", "cpu")
    assert Case(1, 2, 64, 16, "float32", False, "fwd", "cpu", q_len=64) == full
    assert full.q_len is None and full.query_len == 64 and full.label == "B1-H2-N64-D16-fp32-dense-fwd"
    assert DECODING.query_len == 3 and DECODING.label == "B2-H4-KV2-N100-Q3-D16-fp32-causal-fwd"
    # rows written before q_len existed have the key of a case without it
    old_row = {"impl": "naive", **{k: v for k, v in vars(full).items() if k != "q_len"}}
    assert key_of_row(old_row) == key_of_row({"impl": "naive", **vars(full)})


def test_more_queries_than_keys_is_refused():
    grid = PRESETS["smoke"].with_overrides(q_len=(300,))
    with pytest.raises(GridError, match="q_len 300 exceeds seq_len 128") as raised:
        grid.cases("cpu")
    assert raised.value.flag == "--q-len"


@pytest.mark.parametrize("q_len,seq_len", [(1, 1), (1, 9), (4, 9), (9, 9)])
def test_visible_pairs_count_the_lower_right_mask(q_len, seq_len):
    mask = causal_lower_right(q_len, seq_len)._materialize()
    assert attention_pairs(q_len, seq_len, causal=True) == int(mask.sum())
    assert attention_pairs(q_len, seq_len, causal=False) == q_len * seq_len
    assert implementations.get("naive").visible_pairs(
        Case(1, 1, seq_len, 16, "float32", True, "fwd", "cpu", q_len=q_len)
    ) == int(mask.sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len", [1, 7, 40])
def test_the_oracle_agrees_with_softmax_under_pytorchs_lower_right_mask(q_len, causal):
    """The float64 reference (chunked, with its own backward) against plain float64 maths with PyTorch's own
    lower-right causal mask, forward and gradients."""
    generator = torch.Generator().manual_seed(q_len)
    q = torch.randn(2, 2, q_len, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 40, 8, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, 2, q_len, 8, generator=generator, dtype=torch.float64)
    scores = q @ k.transpose(-2, -1) / 8**0.5
    if causal:
        scores = scores.masked_fill(~causal_lower_right(q_len, 40)._materialize(), float("-inf"))
    plain = torch.softmax(scores, dim=-1) @ v
    ours = reference_attention(q, k, v, causal=causal)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(torch.autograd.grad(ours, (q, k, v), dout), torch.autograd.grad(plain, (q, k, v), dout)):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_causal_linear_decoding_continues_the_recurrence(chunk):
    """The last q_len outputs of the token-by-token recurrence over the whole sequence: the state of the keys
    before the first query counts."""
    generator = torch.Generator().manual_seed(chunk)
    q, k, v = (torch.randn(1, 2, 23, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    whole = linear_recurrence(elu_feature_map(q), elu_feature_map(k), v)
    last = implementations.get("linear", chunk=chunk)(q[..., -6:, :], k, v, causal=True)
    torch.testing.assert_close(last, whole[..., -6:, :], rtol=1e-12, atol=1e-12)


def test_sparse_decoding_masks_are_the_last_rows_of_the_full_mask():
    for impl in (implementations.get("sparse-window", window=5), implementations.get("sparse-block", block=8)):
        for causal in (False, True):
            full = impl.dense_mask(70, causal)
            assert torch.equal(impl.dense_mask(70, causal, q_len=9), full[-9:])
            assert impl.visible_pairs(Case(1, 1, 70, 16, "float32", causal, "fwd", "cpu", q_len=9)) == int(
                full[-9:].sum()
            )


def test_minimum_traffic_reads_the_whole_cache_and_writes_one_row_per_query():
    itemsize, d = 4, DECODING.head_dim
    cache = 2 * DECODING.batch * 2 * 100 * d * itemsize  # k and v, two key/value heads
    queries = 2 * DECODING.batch * 4 * 3 * d * itemsize  # q read and out written, four query heads
    assert minimum_bytes(DECODING) == cache + queries


@pytest.fixture(scope="module")
def decoding_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoding") / "decoding.jsonl"
    assert (
        main(
            [
                "run",
                "--impl",
                "naive,sdpa,linear,sparse-window:window=8",
                "--seq-len",
                "48,96",
                "--q-len",
                "1,5,48",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--batch",
                "2",
                "--head-dim",
                "16",
                "--dtype",
                "float32",
                "--causal",
                "both",
                "--mode",
                "fwd",
                "--device",
                "cpu",
                "--timing",
                "warmup_calls=0,min_repeats=3,max_repeats=3,target_relative_ci=0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_the_run_table_gives_decoding_rows_their_bandwidth():
    from suite.run.summary import format_table

    row = {"impl": "sdpa", **vars(DECODING), "status": "ok", "time_ms": 2.0, "tflops": 0.5, "gbytes_per_s": 300.0}
    full = {**row, "q_len": None, "tflops": 0.25}
    table = format_table([row, full])
    assert "2 ms 300 GB/s" in table and "2 ms 0.25 TF/s" in table and "GB/s instead" in table
    assert "GB/s" not in format_table([full])


def test_a_run_measures_and_checks_decoding_rows(decoding_results):
    _, rows = results.read(decoding_results)
    # 48 queries against 48 keys is the full case, against 96 a chunk of a prefill
    assert {(row["q_len"], row["seq_len"]) for row in rows} == {
        (1, 48),
        (5, 48),
        (None, 48),
        (1, 96),
        (5, 96),
        (48, 96),
    }
    assert all(row["status"] == "ok" and row["accuracy_ok"] for row in rows), [
        r["reason"] for r in rows if r["status"] != "ok"
    ]
    row = next(
        r
        for r in rows
        if r["impl"] == "naive" and r["q_len"] == 5 and r["seq_len"] == 96 and r["causal"] and r["mode"] == "fwd"
    )
    pairs = 5 * 91 + 15  # queries at positions 91..95 see 92..96 keys
    assert row["density"] == pytest.approx(pairs / (5 * 96))
    assert row["tflops"] == pytest.approx(4 * 2 * 4 * pairs * 16 / (row["time_ms"] * 1e-3) / 1e12)
    assert row["tokens_per_s"] == pytest.approx(2 * 5 / (row["time_ms"] * 1e-3))
    frame = results.load(decoding_results)
    assert set(frame.q_len) == {1, 5, 48}  # made explicit (48 of 48 keys), so rows group and match


def test_a_report_draws_decoding_rows_apart_from_full_length_ones(decoding_results, tmp_path):
    assert main(["report", str(decoding_results), "--out", str(tmp_path / "report"), "--baseline", "naive"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "1 query" in text and "5 queries" in text and "48 queries" in text
    assert "exact attention too is O(N) and tends to 1" in text
    charts = {path.name for path in (tmp_path / "report" / "charts").iterdir()}
    decoding_charts = {name for name in charts if name.startswith("time-") and "1-query" in name}
    full_charts = {name for name in charts if name.startswith("time-") and "quer" not in name}
    assert decoding_charts and full_charts
    bandwidth = {name for name in charts if name.startswith("bandwidth-")}
    assert bandwidth and all("quer" in name for name in bandwidth)  # drawn for decoding groups alone


def test_recommend_answers_for_the_number_of_queries_asked(decoding_results, capsys):
    shape = [
        "--seq-len",
        "96",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "16",
        "--dtype",
        "float32",
        "--causal",
        "--results",
        str(decoding_results),
        "--format",
        "json",
    ]
    assert main(["recommend", *shape, "--q-len", "5"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"]["q_len"] == 5 and {c["impl"] for c in answer["ranked"]} == {
        "naive",
        "sdpa",
        "linear",
        "sparse-window:window=8",
    }
    assert main(["recommend", *shape[:-2], "--q-len", "1"]) == 0
    assert capsys.readouterr().out.startswith("shape: batch 1, seq_len 96 (1 query), 4 heads (2 key/value), ")
    assert main(["recommend", *shape, "--q-len", "3"]) == 2
    assert (
        "no rows with --q-len 3 in the results (measured: --q-len 1, --q-len 5, --q-len 48, as many queries as keys)"
        in capsys.readouterr().err
    )
    assert main(["recommend", *shape[:-2], "--q-len", "97"]) == 2
    assert "--q-len: 97 exceeds --seq-len 96" in capsys.readouterr().err


def test_compare_names_the_queries_and_key_value_heads_of_a_case(decoding_results, capsys):
    assert main(["compare", str(decoding_results), str(decoding_results)]) == 0
    text = capsys.readouterr().out
    assert (
        "naive B2 H4 KV2 N96 Q5 D16 float32 causal fwd" in text and "naive B2 H4 KV2 N48 D16 float32 causal fwd" in text
    )


def test_compare_matches_decoding_rows_case_by_case(decoding_results, capsys):
    assert main(["compare", str(decoding_results), str(decoding_results), "--format", "json"]) == 0
    verdicts = json.loads(capsys.readouterr().out)["rows"]
    assert {row["q_len"] for row in verdicts} == {1, 5, 48}
    _, rows = results.read(decoding_results)
    assert len(verdicts) == len(rows)


def test_run_refuses_more_queries_than_keys_before_any_work(tmp_path, capsys):
    out = tmp_path / "bad.jsonl"
    assert main(["run", "--seq-len", "64", "--q-len", "65", "--device", "cpu", "--out", str(out)]) == 2
    assert "--q-len: q_len 65 exceeds seq_len 64 (allowed: at most every --seq-len value" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "--q-len", "0", "--device", "cpu", "--out", str(out)]) == 2
    assert "--q-len" in capsys.readouterr().err and not out.exists()


def test_an_implementations_own_pairs_and_flops_take_the_case():
    """visible_pairs(case) and forward_flops(case) are all an implementation overrides to count its own work; the
    default forward_flops counts softmax attention over its visible pairs."""
    from suite.measure.flops import case_flops
    from suite.run.runner import _base_row

    class Banded(implementations.Implementation):
        family = "sparse"

        def visible_pairs(self, case):
            return case.query_len

        def forward_flops(self, case):
            return 1.0 * case.query_len

    impl = Banded("banded")
    full = Case(1, 2, 64, 16, "float32", False, "fwd", "cpu")
    decoding = Case(1, 2, 64, 16, "float32", True, "fwd", "cpu", q_len=4)
    assert _base_row(impl, full)["density"] == 64 / 64**2 and case_flops(impl, full) == 64.0
    assert _base_row(impl, decoding)["density"] == 4 / (4 * 64) and case_flops(impl, decoding) == 4.0

    class OnlyPairs(implementations.Implementation):
        def visible_pairs(self, case):
            return case.seq_len

    assert case_flops(OnlyPairs("pairs"), full) == 4 * 2 * 64 * 16


def test_a_grid_file_takes_query_lengths(tmp_path, capsys):
    grid = tmp_path / "decode.toml"
    grid.write_text(
        'impl = ["sdpa"]\nseq_len = [64]\nq_len = [1, 4]\nheads = [2]\nhead_dim = [16]\nbatch = [1]\n'
        'dtype = ["float32"]\ncausal = [true]\nmode = ["fwd"]\ndevice = "cpu"\n'
        "[timing]\nwarmup_calls = 0\nmin_repeats = 2\nmax_repeats = 2\n"
    )
    out = tmp_path / "decode.jsonl"
    assert main(["run", "--config", str(grid), "--out", str(out)]) == 0
    _, rows = results.read(out)
    assert sorted(row["q_len"] for row in rows) == [1, 4] and all(row["status"] == "ok" for row in rows)
    header = json.loads(out.read_text().splitlines()[0])
    assert header["grid"]["q_len"] == [1, 4]  # so compare knows which cases the run was asked for


def test_compare_calls_query_lengths_a_run_was_not_asked_for_not_run(tmp_path, capsys):
    common = [
        "--impl",
        "sdpa",
        "--seq-len",
        "64",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--batch",
        "1",
        "--dtype",
        "float32",
        "--causal",
        "--mode",
        "fwd",
        "--device",
        "cpu",
        "--timing",
        "warmup_calls=0,min_repeats=2,max_repeats=2,target_relative_ci=0",
    ]
    base, current = tmp_path / "base.jsonl", tmp_path / "current.jsonl"
    assert main(["run", *common, "--q-len", "1,4", "--out", str(base)]) == 0
    assert main(["run", *common, "--q-len", "1", "--out", str(current)]) == 0
    capsys.readouterr()
    main(["compare", str(base), str(current), "--format", "json"])
    verdicts = {row["q_len"]: row["verdict"] for row in json.loads(capsys.readouterr().out)["rows"]}
    assert verdicts[4] == "not-run" and verdicts[1] != "not-run"


def test_list_says_which_implementations_refuse_fewer_queries_than_keys(capsys, monkeypatch):
    from implementations.base import query_length_reasons

    class FullLengthOnly(implementations.Implementation):
        def supports(self, case):
            return query_length_reasons(case, "its kernel takes as many queries as keys")

    monkeypatch.setitem(implementations.REGISTRY, "full-length-only", FullLengthOnly)
    assert main(["list", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["full-length-only"])
    assert lines[at].endswith("runs")
    assert lines[at + 1].strip() == (
        "not with fewer queries than keys (--q-len): q_len=1 with seq_len=1024 (supported: "
        "q_len = seq_len; its kernel takes as many queries as keys)"
    )
    refusing = {lines[i - 1].split()[0] for i, line in enumerate(lines) if "not with fewer queries" in line}
    assert refusing == {"full-length-only", "linformer"}  # linformer's fixed projection has no decoding form


def test_the_fastest_map_of_a_decoding_group_names_the_cache_and_fits_its_title(decoding_results):
    import matplotlib.pyplot as plt

    from suite.reporting.data import colours, prepare
    from suite.reporting.fastest import lead_grids
    from suite.reporting.fastest_map import fastest_map

    frame = prepare(results.load(decoding_results))
    for group, grid, _ in lead_grids(frame):
        fig = fastest_map(group, grid, colours(frame.impl))
        fig.canvas.draw()
        title = fig.get_suptitle()
        extent = fig._suptitle.get_window_extent()
        assert 0 <= extent.x0 and extent.x1 <= fig.bbox.width, title  # the whole title is on the figure
        decoding = isinstance(group.get("queries"), str)
        assert fig.axes[0].get_ylabel() == ("keys in the cache (batch)" if decoding else "sequence length (batch)")
        plt.close(fig)
