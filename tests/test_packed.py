"""Packed documents (`--docs`): the spec, the seeded packing, the rows that record it, the pairs counted, and every
implementation that runs on a CPU against the float64 reference with the block-diagonal mask."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, replace

import pytest
import torch

import implementations
from implementations.documents import document_ids, per_document
from implementations.flex import FlexCall
from implementations.flex_documents import document_block_mask, document_mask_mod
from implementations.reference import reference_attention
from suite.case import Case, Grid, key_of_row, row_key
from suite.check.workload import Workload, make_inputs, random_tensors
from suite.cli import main
from suite.measure.settings import RunSettings, TimingPolicy
from suite.packing import draw_doc_lens, parse_docs, with_doc_lens
from suite.results.files import load
from tests.conftest import rows_of
from tests.twin_check import assert_matches_twin, assert_within_allowance

FAST = [
    "--timing",
    "warmup_calls=0,min_repeats=1,max_repeats=1",
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--mode",
    "fwd",
]


def packed(spec: str, seq_len: int, *, batch: int = 2, causal: bool = False, mode: str = "fwd", **fields) -> Case:
    case = Case(batch, 2, seq_len, 16, fields.pop("dtype", "float32"), causal, mode, "cpu", docs=parse_docs(spec))
    return with_doc_lens(replace(case, **fields), seed=0)


@pytest.mark.parametrize(
    "docs,message",
    [
        ("uniform:64-16", r"--docs: 'uniform:64-16' is not a packing \(allowed: fixed, uniform:MIN-MAX \(1 <= MIN"),
        ("uniform:0-8", r"--docs: 'uniform:0-8' is not a packing \(allowed: "),
        ("lengths:0+24", r"--docs: 'lengths:0\+24' is not a packing \(allowed: "),
        ("zipf:1-8", r"--docs: 'zipf:1-8' is not a packing: unknown distribution 'zipf' \(allowed: fixed, "),
        ("lengths:8+8", r"--docs: docs lengths:8x2 sum to 16 tokens, not seq_len 24 \(allowed: lengths:A\+B"),
        ("lengths:8x0", r"--docs: 'lengths:8x0' is not a packing \(allowed: "),
        ("uniform:1-", r"--docs: 'uniform:1-' is not a packing"),
        ("", r"--docs: '' has an empty item"),
    ],
)
def test_bad_docs_specs_exit_2_with_one_line_before_any_work(tmp_path, capsys, docs, message):
    out = tmp_path / "r.jsonl"
    assert main(["run", "--impl", "naive", "--seq-len", "24", "--docs", docs, *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("attnbench: error: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_packed_documents_with_fewer_queries_exit_2(tmp_path, capsys):
    flags = ["--impl", "naive", "--seq-len", "24", "--q-len", "4", "--docs", "uniform:2-8", *FAST]
    assert main(["run", *flags, "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "--docs: docs uniform:2-8 with q_len 4 (allowed: fixed with --q-len" in capsys.readouterr().err


def test_each_spec_has_one_spelling():
    assert parse_docs(" Uniform:016-64 ") == "uniform:16-64"
    assert parse_docs("lengths:01+2") == "lengths:1+2"
    assert parse_docs("FIXED") == "fixed"
    assert parse_docs("lengths:8192+256+256+256") == parse_docs("lengths:8192+256x3") == "lengths:8192+256x3"


def test_explicit_lengths_pack_the_sequence_lengths_they_sum_to():
    grid = Grid(("naive",), (16, 24), (1,), (8,), ("float32",), (False,), ("fwd",), (1,), docs=("lengths:8x2", "fixed"))
    assert [(case.seq_len, case.docs) for case in grid.cases("cpu")] == [
        (16, "lengths:8x2"),
        (16, "fixed"),
        (24, "fixed"),
    ]
    assert draw_doc_lens("lengths:10+2x3", 1, 16, seed=0) == ((10, 2, 2, 2),)


def test_a_uniform_packing_fills_each_sequence_and_the_same_seed_draws_the_same():
    lens = draw_doc_lens("uniform:3-9", 4, 100, seed=7)
    assert len(lens) == 4 and all(sum(sequence) == 100 for sequence in lens)
    assert all(3 <= length <= 9 for sequence in lens for length in sequence[:-1])  # the last one is cut to fill
    assert draw_doc_lens("uniform:3-9", 4, 100, seed=7) == lens
    assert draw_doc_lens("uniform:3-9", 2, 100, seed=7) == lens[:2]  # a smaller batch: the same first sequences
    assert draw_doc_lens("uniform:3-9", 4, 100, seed=8) != lens
    assert draw_doc_lens("lengths:60+40", 2, 100, seed=7) == ((60, 40), (60, 40))
    assert draw_doc_lens("fixed", 2, 100, seed=7) is None


def _rows(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["record"] == "result"]


def test_every_row_of_a_case_and_a_resumed_run_record_the_same_packing(tmp_path):
    out = tmp_path / "r.jsonl"
    grid = [
        "--seq-len",
        "24",
        "--batch",
        "2",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--docs",
        "uniform:2-9",
        "--causal",
        "false",
        *FAST,
    ]
    assert main(["run", "--impl", "naive,sdpa", *grid, "--seed", "3", "--out", str(out)]) == 0
    assert main(["run", "--impl", "naive,sdpa,padded", *grid, "--seed", "3", "--resume", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [row["impl"] for row in rows] == ["naive", "sdpa", "padded"]
    assert all(row["status"] == "ok" and row["docs"] == "uniform:2-9" for row in rows), rows
    assert rows[0]["doc_lens"] == rows[1]["doc_lens"] == rows[2]["doc_lens"]
    assert [list(lens) for lens in draw_doc_lens("uniform:2-9", 2, 24, seed=3)] == rows[0]["doc_lens"]
    pairs = sum(d * d for sequence in rows[0]["doc_lens"] for d in sequence)
    assert rows[0]["density"] == pairs / (2 * 24 * 24)
    assert Case.from_row(rows[0]).doc_lens == tuple(map(tuple, rows[0]["doc_lens"]))


def test_rows_written_before_packed_documents_read_as_one_document_per_sequence(tmp_path):
    case = Case(1, 2, 16, 8, "float32", True, "fwd", "cpu")
    old_row = {"impl": "naive", **{k: v for k, v in asdict(case).items() if k not in ("docs", "doc_lens")}}
    assert key_of_row(old_row) == row_key("naive", case)
    assert Case.from_row(old_row) == case and Case.from_row(old_row).docs == "fixed"
    assert key_of_row({**old_row, "docs": "uniform:2-4"}) != row_key("naive", case)  # a packing is another case
    out = tmp_path / "old.jsonl"
    out.write_text(
        json.dumps({"record": "run", "run_id": "r1"})
        + "\n"
        + json.dumps({"record": "result", "run_id": "r1", **old_row, "status": "ok", "time_ms": 1.0})
        + "\n"
    )
    assert list(load(out).docs) == ["fixed"]


def test_flops_and_density_count_the_pairs_inside_documents_only():
    impl = implementations.get("naive")
    dense = packed("lengths:1+3+4", 8, batch=3)
    causal = replace(dense, causal=True)
    assert impl.visible_pairs(dense) == 1 + 9 + 16
    assert impl.visible_pairs(causal) == 1 + 6 + 10
    assert impl.forward_flops(dense) == 4 * 3 * 2 * (1 + 9 + 16) * 16  # 4·B·H·pairs·D
    assert impl.forward_flops(causal) == 4 * 3 * 2 * (1 + 6 + 10) * 16
    # Sequences packed differently: the batch's pairs, a mean per sequence
    mixed = replace(dense, batch=2, doc_lens=((8,), (4, 4)))
    assert impl.forward_flops(mixed) == 4 * 2 * 16 * (64 + 32)


# Documents of 1 token, of exactly a chunk or block (128: linear's and Performer's chunk, the sparse
# implementations' block), documents of many lengths, and one document as long as the sequence (today's case).
PACKINGS = [
    ("lengths:1+1+1+29", 32, "float32"),
    ("lengths:128+128", 256, "float32"),
    ("uniform:1-12", 48, "float32"),
    ("uniform:1-12", 48, "bfloat16"),
    ("lengths:40", 40, "float32"),
]


def _packed_cases():
    for name in implementations.names():
        for spec, seq_len, dtype in PACKINGS:
            for causal in (False, True):
                for mode in ("fwd", "fwd+bwd"):
                    # grouped key/value heads where causal, as many as the queries' otherwise
                    kv_heads = 1 if causal else None
                    case = packed(spec, seq_len, causal=causal, mode=mode, kv_heads=kv_heads, dtype=dtype)
                    yield pytest.param(name, case, id=f"{name}-{case.label}")


@pytest.mark.parametrize("name,case", list(_packed_cases()))
def test_each_implementation_matches_its_float64_twin_on_packed_documents(name, case):
    assert_matches_twin(name, case, input_seed=11)


@pytest.mark.parametrize("spec,seq_len", [("lengths:1+2+5+24", 32), ("uniform:1-12", 48)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_a_sliding_window_narrower_than_its_documents_matches_its_twin(spec, seq_len, causal, mode):
    case = packed(spec, seq_len, causal=causal, mode=mode, kv_heads=1)
    assert_matches_twin("sparse-window", case, input_seed=4, options={"window": 3})


def test_a_sliding_window_counts_its_pairs_within_documents():
    window = implementations.get("sparse-window", window=1)
    dense = packed("lengths:1+3+4", 8, batch=1)
    assert window.visible_pairs(dense) == 1 + (3 + 2 + 2) + (4 + 3 + 3)  # |i - j| <= 1 inside each document
    assert window.visible_pairs(replace(dense, causal=True)) == 1 + (3 + 2) + (4 + 3)


def test_linear_families_count_the_same_flops_packed_or_not():
    """Their work is per token: Σ over documents of a document's tokens is the sequence's."""
    fixed = replace(packed("uniform:1-9", 40), docs="fixed", doc_lens=None)
    for name in ("linear", "performer"):
        impl = implementations.get(name)
        assert impl.forward_flops(packed("uniform:1-9", 40)) == impl.forward_flops(fixed)


@pytest.mark.parametrize("causal", [False, True])
def test_the_reference_attends_within_each_document(causal):
    """Against softmax attention run on each document alone: the block-diagonal mask, causal within documents."""
    case = packed("uniform:1-9", 30, causal=causal, mode="fwd+bwd", kv_heads=1)
    q, k, v, _ = (t.double() for t in random_tensors(case, 5))
    masked = reference_attention(q, k, v, causal=causal, doc_lens=case.doc_lens)
    alone = per_document(lambda *t: reference_attention(*t, causal=causal), q, k, v, case.doc_lens)
    assert_within_allowance(masked, alone, case)
    assert not torch.allclose(masked, reference_attention(q, k, v, causal=causal))  # the mask changes something


@pytest.mark.parametrize("causal", [False, True])
def test_one_document_per_sequence_is_todays_case(causal):
    """Each implementation's call on one document as long as the sequence agrees with its own call on today's case
    (with sdpa's, for those that run packed cases only)."""
    case = packed("lengths:40", 40, causal=causal, mode="fwd")
    fixed = replace(case, docs="fixed", doc_lens=None)
    q, k, v, _ = random_tensors(case, 2)
    ran = []
    for name in implementations.names():
        impl = implementations.get(name)
        if impl.supports(case):
            continue
        baseline = impl if not impl.supports(fixed) else implementations.get("sdpa")
        expected = baseline(q, k, v, causal=causal)
        assert_within_allowance(impl(q, k, v, causal=causal, doc_lens=case.doc_lens), expected, case, impl)
        ran.append(name)
    assert {"naive", "sdpa", "padded", "linear", "performer", "sparse-window"} <= set(ran)


@pytest.mark.parametrize("causal", [False, True])
def test_the_padded_baseline_agrees_with_the_masked_one(causal):
    case = packed("uniform:1-20", 64, causal=causal, mode="fwd+bwd", kv_heads=1)
    leaves = [t.requires_grad_() for t in random_tensors(case, 9)[:3]]
    results = []
    for name in ("padded", "sdpa"):
        out = implementations.get(name)(*leaves, causal=causal, doc_lens=case.doc_lens)
        results.append((out, *torch.autograd.grad(out, leaves, torch.ones_like(out))))
    assert_within_allowance(results[0], results[1], case)


def test_implementations_without_packed_documents_say_why():
    """One that runs a case with one document per sequence and refuses it packed names the packing."""
    case = packed("uniform:2-8", 32)
    fixed = replace(case, docs="fixed", doc_lens=None)
    for name in implementations.names():
        impl = implementations.get(name)
        reasons = impl.supports(case)
        if reasons and not impl.supports(fixed):
            assert any(reason.startswith("docs=uniform:2-8 (supported: fixed") for reason in reasons), (name, reasons)
    assert "docs=fixed" in implementations.get("padded").supports(replace(case, docs="fixed", doc_lens=None))[0]


def test_a_call_without_doc_lens_is_not_called_on_packed_documents():
    class OneDocumentOnly(implementations.Implementation):
        def __call__(self, q, k, v, *, causal=False):
            raise AssertionError("called with packed documents")

    case = packed("uniform:2-8", 16)
    with pytest.raises(implementations.Unsupported, match=r"docs=uniform:2-8 \(supported: fixed; its call takes no"):
        Workload(OneDocumentOnly("mine"), case, make_inputs(case)).checked_call()


def test_a_report_names_each_packing_and_compares_with_the_padded_and_the_masked_baseline(tmp_path):
    out = tmp_path / "r.jsonl"
    grid = ["--seq-len", "16,32", "--batch", "1", "--heads", "1", "--head-dim", "8", "--causal", "true"]
    assert (
        main(["run", "--impl", "naive,sdpa,padded", *grid, "--docs", "fixed,uniform:2-9", *FAST, "--out", str(out)])
        == 0
    )
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--chart-formats", "png"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Speed-up over sdpa" in report and "## Speed-up over padded" in report
    titles = [line for line in report.splitlines() if line.startswith("### ") and "causal · fwd" in line]
    assert any("docs uniform:2-9" in title for title in titles), titles
    assert any("docs" not in title for title in titles), titles  # one document per sequence: a group of its own


def _with_times(records: list[dict], seed: int, slower_docs: str | None = None) -> list[dict]:
    """Each ok row's times as 40 samples around its median; a packing's rows 30% slower where named."""
    rng = random.Random(seed)
    out = []
    for record in records:
        record = {**record}
        if record["record"] == "result" and record["status"] == "ok":
            center = record["time_ms"] * (1.3 if record["docs"] == slower_docs else 1.0)
            times = sorted(center * rng.lognormvariate(0, 0.02) for _ in range(40))
            record.update(times_ms=times, time_ms=times[20], time_iqr_ms=times[30] - times[10], cpu_contended=False)
        out.append(record)
    return out


def test_compare_matches_rows_by_their_packing(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    grid = ["--impl", "naive", "--seq-len", "32", "--batch", "1", "--heads", "1", "--head-dim", "8", "--causal", "true"]
    assert main(["run", *grid, "--docs", "fixed,lengths:16x2", *FAST, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for name, seed, slower in (("base", 1, None), ("current", 2, "lengths:16x2")):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _with_times(records, seed, slower))
        )
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base.jsonl"), str(tmp_path / "current.jsonl"), "--format", "json"]) == 1
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert sorted((row["docs"], row["verdict"]) for row in rows) == [("fixed", "same"), ("lengths:16x2", "slower")]


def test_recommend_ranks_from_the_rows_of_the_packing_asked_for(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    grid = ["--impl", "naive,padded", "--seq-len", "32", "--batch", "1", "--heads", "1", "--head-dim", "8"]
    assert main(["run", *grid, "--causal", "true", "--docs", "fixed,lengths:16x2", *FAST, "--out", str(out)]) == 0
    shape = ["recommend", "--seq-len", "32", "--heads", "1", "--head-dim", "8", "--dtype", "float32", "--causal"]
    capsys.readouterr()
    assert main([*shape, "--docs", "lengths:16+16", "--results", str(out), "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"]["docs"] == "lengths:16x2"
    assert {row["impl"] for row in answer["ranked"]} == {"naive", "padded"}  # padded ran only packed
    assert main([*shape, "--results", str(out), "--format", "json"]) == 0  # one document per sequence: padded can't
    assert {row["impl"] for row in json.loads(capsys.readouterr().out)["ranked"]} == {"naive"}
    assert main([*shape, "--docs", "uniform:2-4", "--results", str(out)]) == 2
    assert "no rows with --docs uniform:2-4 for ungrouped heads in the results (measured: fixed, lengths:16x2)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("causal", [False, True])
def test_the_document_block_mask_is_create_block_mask_s_built_by_rows(causal):
    from torch.nn.attention.flex_attention import create_block_mask

    doc_lens = ((100, 28, 128, 30), (3, 283))  # a document across blocks, one of exactly a block, a partial end
    ours = document_block_mask(doc_lens, causal, "cpu")
    theirs = create_block_mask(document_mask_mod(document_ids(doc_lens), causal), 2, None, 286, 286, device="cpu")
    for counts, indices in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        assert torch.equal(getattr(ours, counts), getattr(theirs, counts))
        for (b, h, row), count in zip(
            torch.cartesian_prod(*map(torch.arange, (2, 1, 3))), getattr(ours, counts).flatten()
        ):
            assert torch.equal(getattr(ours, indices)[b, h, row, :count], getattr(theirs, indices)[b, h, row, :count])


@pytest.mark.parametrize("causal", [False, True])
def test_flex_attention_with_the_document_block_mask_attends_within_documents(causal):
    """Eager FlexAttention (its CPU forward) with the mask that `flex` compiles on a GPU."""
    case = packed("lengths:100+28+128+30", 286, causal=causal)
    q, k, v, _ = random_tensors(case, 3)
    out = FlexCall(compile_it=False).with_block_mask(q, k, v, document_block_mask(case.doc_lens, causal, "cpu"))
    assert_within_allowance(out, reference_attention(q, k, v, causal=causal, doc_lens=case.doc_lens), case)


def _gpu_cases():
    for causal in (False, True):
        for mode in ("fwd", "fwd+bwd"):
            for spec, seq_len in (("uniform:16-300", 1024), ("lengths:1+127+128+768", 1024)):
                yield packed(spec, seq_len, causal=causal, mode=mode, dtype="bfloat16", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flex", "xformers", "nested-sdpa", "padded", "sdpa", "naive"])
def test_the_gpu_paths_match_their_twins_on_packed_documents(name):
    for case in _gpu_cases():
        assert_matches_twin(name, case, input_seed=5)


@pytest.mark.gpu
def test_nested_sdpa_records_the_variable_length_kernel_it_ran():
    case = packed("uniform:16-300", 1024, causal=True, dtype="bfloat16", device="cuda")
    inputs = make_inputs(case)
    backend = Workload(implementations.get("nested-sdpa"), case, inputs).backend()
    assert backend.split()[0] in ("flash_attention", "efficient_attention"), backend


def test_a_file_written_before_packed_documents_resumes_as_one_document_per_sequence(tmp_path, capsys):
    out = tmp_path / "old.jsonl"
    grid = [
        "--impl",
        "naive",
        "--seq-len",
        "16",
        "--batch",
        "1",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--causal",
        "false",
    ]
    assert main(["run", *grid, *FAST, "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    older = [{k: v for k, v in r.items() if k not in ("docs", "doc_lens")} for r in records]
    out.write_text("".join(json.dumps(record) + "\n" for record in older))
    capsys.readouterr()
    assert main(["run", *grid, *FAST, "--resume", "--out", str(out)]) == 0
    assert "nothing to run: every case is already in" in capsys.readouterr().out
    assert main(["run", *grid, *FAST, "--docs", "lengths:8x2", "--resume", "--out", str(out)]) == 0  # another case
    assert [row.get("docs") for row in _rows(out)] == [None, "lengths:8x2"]


def test_benchmark_takes_docs_as_run_does():
    from suite.api import benchmark

    shape = {"seq_len": 24, "heads": 1, "head_dim": 8, "batch": 2, "mode": "fwd", "device": "cpu", "progress": False}
    frame = benchmark(["naive", "padded"], docs="uniform:2-9", timing={"min_repeats": 1, "max_repeats": 1}, **shape)
    assert set(frame.docs) == {"uniform:2-9"} and set(frame.status) == {"ok"}
    assert frame.doc_lens.iloc[0] == frame.doc_lens.iloc[1]
    with pytest.raises(ValueError, match=r"docs: 'zipf:1-2' is not a packing: unknown distribution 'zipf'"):
        benchmark("naive", docs="zipf:1-2", **shape)


def test_an_implementations_set_up_time_is_its_rows_setup_ms(tmp_path):
    """Set-up done once per input layout (flex's document block mask) is reported apart, as compilation is."""
    from implementations.naive import NaiveAttention

    class BuildsAMask(NaiveAttention):
        def setup_ms(self) -> float | None:
            return 12.5

    case = Case(1, 2, 33, 16, "float32", False, "fwd", "cpu")
    settings = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=0, min_repeats=3, max_repeats=3)})
    rows = rows_of([BuildsAMask("builds-a-mask"), implementations.get("naive")], [case], settings=settings)
    assert [row["setup_ms"] for row in rows] == [12.5, None]
