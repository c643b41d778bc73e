"""Presets name only implementations that exist, and `efficient` is the grid its families are compared on."""

from __future__ import annotations

import pytest

from suite.run import config
from suite.run.presets import PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_its_implementations_and_cases(name):
    grid = PRESETS[name]
    for spec in grid.impls:
        config.build_impl("preset", spec)  # raises on an unknown name or option
    assert grid.cases("cuda" if name != "smoke" else "cpu")


def test_efficient_compares_the_approximations_with_the_fused_kernels():
    grid = PRESETS["efficient"]
    assert set(grid.impls) == {
        "sdpa-flash",
        "sdpa-cudnn",
        "xformers",
        "sparse-window",
        "sparse-block",
        "linear",
        "linear-fla",
        "performer",
        "linformer",
    }
    assert grid.seq_len == (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    assert grid.head_dim == (64, 128) and set(grid.causal) == {False, True} and set(grid.mode) == {"fwd", "fwd+bwd"}
    assert len(grid.cases("cuda")) * len(grid.impls) == 504


def test_smoke_covers_every_family_on_cpu():
    families = {config.build_impl("preset", spec).family for spec in PRESETS["smoke"].impls}
    assert {"exact", "sparse", "linear", "performer", "low-rank"} <= families


def test_decode_measures_few_queries_against_long_caches():
    cases = PRESETS["decode"].cases("cuda")
    assert {case.query_len for case in cases} == {1, 16}
    assert {case.seq_len for case in cases} == {1 << p for p in range(10, 18)}
    assert all(case.causal and case.mode == "fwd" and case.key_value_heads == 8 for case in cases)


def test_a_preset_batch_holds_where_the_preset_is_named_or_its_own_lengths_are_measured():
    smoke = PRESETS["smoke"]
    batches = lambda grid: {case.batch for case in grid.cases("cpu")}  # noqa: E731
    assert batches(config.build_grid(smoke, {})) == {2}
    assert batches(config.build_grid(smoke, {}, preset_named=False)) == {2}
    assert batches(config.build_grid(smoke, {"seq_len": "1024"})) == {2}
    assert batches(config.build_grid(smoke, {"seq_len": "1024"}, preset_named=False)) == {16}
    assert batches(config.build_grid(smoke, {"seq_len": "1024", "batch": "3"}, preset_named=False)) == {3}
    assert batches(config.build_grid(smoke, {"tokens_per_batch": "2048", "seq_len": "1024"})) == {2}
    assert batches(config.build_grid(smoke, {"tokens_per_batch": "1280"})) == {10, 5}  # over 128 and 255 tokens


def test_varlen_packs_documents_of_every_spread_into_16k_and_64k_tokens():
    cases = PRESETS["varlen"].cases("cuda")
    assert {(case.seq_len, case.batch) for case in cases} == {(16384, 4), (65536, 1)}
    assert {case.docs for case in cases if case.seq_len == 16384} == {
        "uniform:128-2048",
        "uniform:512-8192",
        "lengths:8192+256x32",
    }
    assert {case.docs for case in cases if case.seq_len == 65536} == {
        "uniform:128-2048",
        "uniform:512-8192",
        "lengths:32768+256x128",
    }
    assert {(case.head_dim, case.dtype) for case in cases} == {(128, "bfloat16")}
    assert {(case.causal, case.mode) for case in cases} == {(c, m) for c in (False, True) for m in ("fwd", "fwd+bwd")}
    assert {"padded", "sdpa", "nested-sdpa", "flex", "xformers"} <= set(PRESETS["varlen"].impls)
