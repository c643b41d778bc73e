"""Every registry implementation over a small grid, for teams that gate on pytest-benchmark.

    pytest benchmarks --benchmark-json out.json
    pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:10%
    attnbench compare base.json out.json      # the noise-aware verdict

Each call synchronizes CUDA before returning, so the wall-clock timer measures finished GPU work;
warm-up rounds run first (compilation and autotuning stay out of the stats), and each round runs
several iterations so short calls are not dominated by timer resolution. The case, the measured
TFLOP/s and the call's peak memory (from one more, untimed call) go into extra_info; the GPU goes into
machine_info (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

import implementations
from suite.case import Case
from suite.check.workload import Workload, make_inputs
from suite.measure.flops import case_flops
from suite.measure.memory import peak_call_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    GRID = [(4, 16, 2048, 64), (1, 16, 8192, 128)]
    # (batch, heads, seq_len, head_dim, kv_heads, q_len): one decoding step against an 8K-token cache, causal forward
    DECODING = [(16, 32, 8192, 128, 8, 1)]
    DTYPE, ROUNDS, ITERATIONS = "bfloat16", 20, 5
else:  # a tiny grid: CPU runs check the plumbing, not the speed
    GRID = [(1, 2, 64, 16)]
    DECODING = [(1, 4, 64, 16, 2, 1)]
    DTYPE, ROUNDS, ITERATIONS = "float32", 5, 2


def _cases():
    for name in implementations.names():
        if name == "reference":
            continue
        for batch, heads, seq_len, head_dim in GRID:
            for causal in (False, True):
                for mode in ("fwd", "fwd+bwd"):
                    case = Case(batch, heads, seq_len, head_dim, DTYPE, causal, mode, DEVICE)
                    yield pytest.param(name, {}, case, id=f"{name}-{case.label}")
        # Decoding also as a recurrent decoder does it, where the implementation can carry its state.
        variants = [{}, {"state": "carried"}] if "state" in implementations.get(name).options else [{}]
        for options in variants:
            label = ":".join([name, *(f"{key}={value}" for key, value in options.items())])
            for batch, heads, seq_len, head_dim, kv_heads, q_len in DECODING:
                case = Case(batch, heads, seq_len, head_dim, DTYPE, True, "fwd", DEVICE, kv_heads, q_len)
                yield pytest.param(name, options, case, id=f"{label}-{case.label}")


@pytest.mark.parametrize("name,options,case", list(_cases()))
def test_attention(benchmark, name, options, case):
    impl = implementations.get(name, **options)
    reasons = impl.supports(case)
    if reasons:
        pytest.skip("; ".join(reasons))
    # The implementation's set-up (a forced SDPA backend) once around every call, as `attnbench run` does.
    with impl.session():
        work = Workload(impl, case, make_inputs(case))
        call, before_each = work.timed_call()

        def synchronized_call():
            if before_each:
                before_each()
            call()
            if DEVICE == "cuda":
                torch.cuda.synchronize()

        benchmark.extra_info.update({"impl": impl.label, **case.__dict__, "status": "ok"})
        benchmark.pedantic(synchronized_call, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=2)
        if benchmark.stats is None:  # --benchmark-disable: the call ran once, as a test, untimed
            return
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["tflops"] = case_flops(impl, case) / median_s / 1e12
        benchmark.extra_info["tokens_per_s"] = case.batch * case.query_len / median_s  # queries: tokens decoded
        if before_each:
            before_each()  # outside the measured call, as in `attnbench run`: what it frees is not the call's
        benchmark.extra_info["peak_mem_bytes"], benchmark.extra_info["peak_mem_reason"] = peak_call_memory(
            call, torch.device(DEVICE)
        )
