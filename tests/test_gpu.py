"""Checks that need a CUDA GPU (marked `gpu`; skipped with a reason elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import implementations
from suite.case import Case
from suite.measure.gpu_monitor import GpuMonitor
from suite.measure.peak import measured_copy_gbytes_per_s, measured_matmul_tflops
from suite.measure.settings import RunSettings
from suite.results import files as results
from suite.results.environment import collect
from suite.run.runner import run_cases
from tests.twin_check import (
    assert_holds_at_large_logits,
    assert_matches_twin,
    assert_matches_twin_for_seeds,
    assert_transposed_views_match_twin,
)

pytestmark = pytest.mark.gpu


def _compiled_per_shape(name: str) -> bool:
    """FlexAttention (the sparse families, `flex`) and autotuned kernels cost seconds for every new shape."""
    eager_families = ("exact", "linear", "performer", "low-rank")
    return implementations.get(name).family not in eager_families or name in {"flex", "linear-fla"}


EAGER = [n for n in implementations.names() if not _compiled_per_shape(n)]


@pytest.mark.parametrize("name", EAGER)
def test_gpu_matches_twin_for_many_seeds_at_the_shortest_lengths(name):
    """As on CPU: passing at one or two tokens must not depend on the seed. (Compiled and autotuned
    kernels are left out: a new shape costs them seconds.)"""
    cases = [
        Case(1, 2, seq_len, 64, dtype, causal, "fwd+bwd", "cuda")
        for seq_len in (1, 2)
        for dtype in ("float16", "bfloat16", "float32")
        for causal in (False, True)
    ]
    assert_matches_twin_for_seeds(name, cases, range(2000, 2004))


@pytest.mark.parametrize("name", EAGER)
def test_gpu_holds_at_large_logits_and_reads_transposed_views(name):
    assert_transposed_views_match_twin(name, "cuda", ("float16", "bfloat16", "float32"))
    assert_holds_at_large_logits(name, "cuda", ("float16", "bfloat16", "float32"))


@pytest.mark.parametrize("name", ["naive", "linear", "performer"])
def test_gpu_compiled_variants_match_their_twin(name):
    """Causal only, to keep compilation (tens of seconds each) short; eager tests cover both paths."""
    case = Case(2, 4, 257, 128, "bfloat16", True, "fwd+bwd", "cuda")
    assert_matches_twin(name, case, input_seed=3, options={"compile": True})


@pytest.mark.parametrize(
    "name,backend", [("sdpa-flash", "flash"), ("sdpa-efficient", "efficient"), ("sdpa-math", "math")]
)
def test_forced_backend_is_the_one_dispatched(name, backend):
    q = torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16)
    assert implementations.get(name).backend(q, q, q, causal=True) == backend


def test_runner_on_gpu_measures_memory_clocks_and_throughput(tmp_path):
    case = Case(2, 8, 1024, 64, "bfloat16", True, "fwd+bwd", "cuda")
    rows = []
    settings = RunSettings(
        peak_tflops={"bfloat16": measured_matmul_tflops(torch.bfloat16, torch.device("cuda"), 4096)},
        peak_gbytes_per_s=measured_copy_gbytes_per_s(torch.device("cuda")),
    )
    run_cases(
        [implementations.get("sdpa"), implementations.get("naive")], [case], settings=settings, on_row=rows.append
    )
    sdpa, naive = rows
    assert sdpa["status"] == "ok" and sdpa["accuracy_ok"], sdpa["reason"]
    assert sdpa["backend"] in {"flash", "efficient", "cudnn"}
    assert sdpa["peak_mem_bytes"] > 0 and naive["peak_mem_bytes"] > sdpa["peak_mem_bytes"]  # naive holds N² scores
    assert 0 < sdpa["peak_fraction"] < 1.5
    assert 0 < naive["bandwidth_fraction"] < sdpa["bandwidth_fraction"] < 1.5  # same bytes, naive is slower
    assert sdpa["gpu_after"].get("sm_clock_mhz") or sdpa["gpu_after"].get("unavailable")


def test_environment_names_the_gpu():
    record = collect(torch.device("cuda"))
    assert record["gpu"] == torch.cuda.get_device_name()
    monitor = GpuMonitor(torch.device("cuda"))
    if monitor.unavailable is None:
        assert record["driver"] and record["gpu_state"]["max_sm_clock_mhz"] > 0


def test_a_sticky_cuda_error_is_recognized_as_an_unusable_device():
    """In a child process, since a device-side assert breaks the CUDA context for good."""
    import subprocess
    import sys

    probe = (
        "import torch; from suite.measure.failures import device_usable; ok = device_usable('cuda')\n"
        "try:\n    torch.zeros(2, device='cuda')[torch.tensor([5], device='cuda')].sum().item()\n"
        "except RuntimeError:\n    pass\nprint(ok, device_usable('cuda'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["True", "False"], done.stdout + done.stderr


def test_profile_on_gpu_sorts_by_device_time():
    from suite.run.profiling import profile_case

    case = Case(1, 8, 1024, 64, "bfloat16", True, "fwd+bwd", "cuda")
    result = profile_case(implementations.get("sdpa-flash"), case, calls=2)
    assert "Self CUDA" in result.table and "flash" in result.table.lower()


def test_local_errors_gives_gpu_rows_the_figures_their_run_measured(tmp_path):
    import pandas as pd

    from suite.cli import main
    from suite.results import files as results
    from tests.results_files import rewrite_rows
    from tests.test_local_amend import LOCAL, without_local_figures

    path = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "run",
                "--impl",
                "linear,sparse-window:window=64",
                "--seq-len",
                "1000",
                "--batch",
                "1",
                "--heads",
                "4",
                "--head-dim",
                "64",
                "--dtype",
                "bfloat16",
                "--mode",
                "fwd",
                "--causal",
                "both",
                "--device",
                "cuda",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    measured = results.load(path)
    assert measured[LOCAL].notna().all().all()
    rewrite_rows(path, without_local_figures)
    assert main(["local-errors", str(path)]) == 0
    pd.testing.assert_frame_equal(results.load(path)[LOCAL].astype(float), measured[LOCAL].astype(float), rtol=1e-3)


# The long parametrized sweep runs last, so a time-boxed GPU session reaches the checks above first;
# within it, shape by shape, so a cut-off run has checked every implementation at the small shapes.
SHAPES = [(1, 2, 1, 64, None), (3, 2, 17, 64, None), (2, 4, 257, 128, None), (1, 8, 1000, 64, 2)]


def _gpu_cases():
    for index, (batch, heads, seq_len, head_dim, kv_heads) in enumerate(SHAPES):
        for name in implementations.names():
            exact = implementations.get(name).family == "exact" and not _compiled_per_shape(name)
            # Compiled kernels (FlexAttention) cost seconds per shape: fewer shapes for them and the other families.
            if not exact and index not in (1, 2):
                continue
            # Linear and Performer also in float16, whose features and running sums they keep in float32.
            if exact:
                dtypes = ("float16", "bfloat16", "float32")
            else:
                dtypes = ("float16", "bfloat16") if name in {"linear", "performer"} else ("bfloat16",)
            for dtype in dtypes:
                for causal in (False, True):
                    case = Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", "cuda", kv_heads)
                    yield pytest.param(name, case, id=f"{name}-{case.label}")


@pytest.mark.parametrize("name,case", list(_gpu_cases()))
def test_gpu_matches_float64_exact_twin(name, case):
    assert_matches_twin(name, case, input_seed=case.seq_len)


def test_rows_say_when_issuing_a_call_took_the_host_as_long_as_the_gpu_took_to_run_it():
    """A few microsecond kernels behind tens of microseconds of Python and dispatch: host-bound. A long
    fused kernel issued in one launch: not."""
    tiny = Case(1, 1, 16, 16, "float32", False, "fwd", "cuda")
    long = Case(1, 16, 8192, 128, "bfloat16", False, "fwd", "cuda")
    rows = []
    run_cases([implementations.get("naive")], [tiny], settings=RunSettings(), on_row=rows.append)
    run_cases([implementations.get("sdpa")], [long], settings=RunSettings(), on_row=rows.append)
    tiny_row, long_row = rows
    assert tiny_row["status"] == long_row["status"] == "ok"
    assert tiny_row["host_bound"] is True and tiny_row["host_ms"] >= 0.9 * tiny_row["time_ms"]
    assert long_row["host_bound"] is False and 0 < long_row["host_ms"] < long_row["time_ms"] / 10


@pytest.mark.parametrize(
    "name,kernel",
    [
        ("sdpa-flash", "aten::_scaled_dot_product_flash_attention"),
        ("sdpa-efficient", "aten::_scaled_dot_product_efficient_attention"),
        ("sdpa-cudnn", "aten::_scaled_dot_product_cudnn_attention"),
    ],
)
def test_a_forced_backend_dispatches_its_kernel_inside_the_session_run_times_it_in(name, kernel):
    from tests.conftest import aten_ops

    impl = implementations.get(name)
    q = torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16)  # a shape every backend ran in `default`
    with impl.session():
        ops = aten_ops(lambda: [impl(q, q, q, causal=causal) for causal in (False, True)])
    assert kernel in ops, sorted(op for op in ops if "attention" in op)


def test_event_timing_agrees_with_the_wall_clock_over_back_to_back_calls():
    """The CUDA-event median of a long kernel against synchronized wall time over calls in a row: the same within
    15% (few calls, about 30 ms, so that a power cap has no time to lower the clock of the run in a row), and
    issuing it costs the host a small fraction of that."""
    import time

    from suite.measure.settings import TimingPolicy
    from suite.measure.timing import measure

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    timing = measure(lambda: a @ a, torch.device("cuda"), TimingPolicy(min_repeats=20, max_repeats=20))
    calls = 20
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        a @ a
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - started) * 1e3 / calls
    assert timing.median == pytest.approx(wall_ms, rel=0.15)
    assert timing.host_median < timing.median / 10


def test_the_python_api_benchmarks_a_function_beside_the_registry_on_gpu(tmp_path):
    from suite.api import as_implementation, benchmark

    mine = as_implementation(
        lambda q, k, v, *, causal=False: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "mine",
    )
    frame = benchmark(
        [mine, "sdpa-flash"],
        seq_len=[257, 1024],
        heads=8,
        head_dim=64,
        dtype="bfloat16",
        causal=[False, True],
        mode=["fwd", "fwd+bwd"],
        out=tmp_path / "mine.jsonl",
        progress=False,
    )
    assert len(frame) == 16 and set(frame.status) == {"ok"} and frame.accuracy_ok.all()
    assert frame.host_ms.notna().all() and (frame.peak_mem_bytes > 0).all() and (frame.tflops > 0).all()
    assert set(frame.machine) == {torch.cuda.get_device_name()}


def _gpu_decoding_cases():
    """Every implementation on the conformance check's decoding shapes (fewer queries than keys), bfloat16 and float16:
    SDPA's backends each take the lower-right causal mask their own way (flash, efficient, a materialized mask)."""
    from suite.check.conformance import DECODING_SHAPES

    for name in implementations.names():
        for batch, heads, q_len, seq_len, head_dim, kv_heads in DECODING_SHAPES:
            for dtype in ("float16", "bfloat16"):
                for causal in (False, True):
                    case = Case(batch, heads, seq_len, head_dim, dtype, causal, "fwd+bwd", "cuda", kv_heads, q_len)
                    yield pytest.param(name, {}, case, id=f"{name}-{case.label}")
                    if name in ("linear", "performer"):  # as a recurrent decoder: forward, the state carried
                        forward = replace(case, mode="fwd")
                        yield pytest.param(
                            name, {"state": "carried"}, forward, id=f"{name}:state=carried-{forward.label}"
                        )


@pytest.mark.parametrize("name,options,case", list(_gpu_decoding_cases()))
def test_gpu_decoding_matches_float64_exact_twin(name, options, case):
    from suite.check.conformance import input_seed

    assert_matches_twin(name, case, input_seed=input_seed(case), options=options)


def _torchrun(ranks: int, out, *flags: str) -> subprocess.CompletedProcess:
    grid = ["--impl", "sdpa,naive", "--seq-len", "256,512", "--heads", "2", "--batch", "1", "--head-dim", "64"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        + ["-m", "suite", "run", "--device", "cuda", *grid, "--dtype", "bfloat16", "--mode", "fwd", "--out", str(out)]
        + list(flags),
        cwd=out.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_one_rank_under_torchrun_measures_on_its_own_gpu(tmp_path):
    """The launcher's path on a GPU: the rank pinned to cuda:LOCAL_RANK, its rows merged into --out."""
    done = _torchrun(1, tmp_path / "r.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    (header,), rows = results.read(tmp_path / "r.jsonl")
    assert header["world_size"] == 1 and header["ranks"][0]["device"] == "cuda:0"
    assert header["ranks"][0]["machine"] == torch.cuda.get_device_name(0)
    assert [row["status"] for row in rows] == ["ok"] * 4 and {row["rank"] for row in rows} == {0}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.jsonl"]


def test_more_ranks_than_gpus_stop_with_one_line(tmp_path):
    """Two ranks on one GPU would time each other: the rank without a GPU of its own names LOCAL_RANK."""
    ranks = torch.cuda.device_count() + 1
    done = _torchrun(ranks, tmp_path / "r.jsonl")
    assert done.returncode != 0
    assert f"LOCAL_RANK: {ranks - 1}, and this host has {ranks - 1} GPU" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "r.jsonl").exists()
