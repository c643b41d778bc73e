"""attnbench from Python: check and time a function of one's own beside the registry's, without writing a module.

    from suite.api import as_implementation, benchmark, check

    mine = as_implementation(my_attention, "mine")   # (q, k, v, *, causal) -> out; (batch, heads, seq, dim), 1/√dim
    print(check(mine).format())                      # what `attnbench check` runs
    frame = benchmark([mine, "sdpa-flash"], seq_len=[1024, 4096], heads=16, head_dim=128, dtype="bfloat16",
                      causal=True, mode="fwd+bwd", out="results/mine.jsonl")
    verdicts = compare(frame, frame, baseline_impl="sdpa-flash", current_impl="mine")  # slower anywhere?
    favor = as_implementation(my_performer, "my-favor", family="performer", exact_twin=my_performer_in_float64)

`benchmark` measures the way `attnbench run` does (the same runner, checks and results file, which `attnbench
report` and `compare` read) and returns the rows as `suite.results.load` gives them. Values are checked as the
command line checks its flags; a bad one raises ValueError naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from implementations import CaseLike, Implementation, Unsupported
from implementations.base import FAMILIES

from .case import TOKENS_PER_BATCH, Grid
from .check import conformance
from .check.conformance import checked, default_check_dtypes
from .compare.regressions import CompareInputError, RowVerdict, paired, read_side
from .compare.regressions import compare as compared
from .compare.views import verdict_line
from .measure.cuda_graph import WHY_GPU_ONLY as GRAPH_WHY
from .measure.energy import WHY_GPU_ONLY as ENERGY_WHY
from .measure.failures import is_out_of_memory
from .measure.host_memory import default_limit
from .results.environment import torch_threads
from .results.files import load
from .run import config
from .run.completeness import shortfall_notes
from .run.grid_scope import GridScope
from .run.progress import Progress
from .run.runner import run_cases
from .run.session import measured_settings, one_writer, results_writer
from .run.supervisor import DEFAULT_ROW_TIMEOUT_S, Limits, run_supervised, unsendable

AttentionFunction = Callable[..., torch.Tensor]  # (q, k, v, *, causal: bool) -> out


class GroupedQueryError(RuntimeError):
    """A wrapped function failed on a case with fewer key/value heads than query heads (grouped-query attention)."""


def _grouped_query_explained(
    function: AttentionFunction, what: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
) -> torch.Tensor:
    """`function(q, k, v, causal=causal)`; a failure where k has fewer heads than q says so and how to declare it,
    since the function's own error (an einsum's or a matmul's shapes) does not name the cause."""
    try:
        return function(q, k, v, causal=causal)
    except Unsupported:
        raise
    except Exception as error:
        if q.dim() != 4 or k.dim() != 4 or k.shape[1] >= q.shape[1] or is_out_of_memory(error):
            raise
        raise GroupedQueryError(
            f"{what} failed on a case with {k.shape[1]} key/value heads for {q.shape[1]} query heads (grouped-query "
            f"attention: each key/value head serves {q.shape[1] // k.shape[1]} query heads): {type(error).__name__}: "
            f"{' '.join(str(error).split())}; a function without grouped-query attention declares it, and such "
            "cases become unsupported rows: as_implementation(..., supports=lambda case: grouped_query_reasons(case, "
            "'why')), with grouped_query_reasons from implementations.base"
        ) from error


class FunctionImplementation(Implementation):
    """A plain function as an implementation: of the exact family, checked against softmax attention in float64;
    of an approximate family, against its own float64 twin."""

    def __init__(
        self,
        name: str,
        function: AttentionFunction,
        supports: Callable[[CaseLike], list[str]] | None = None,
        family: str = "exact",
        exact_twin: AttentionFunction | None = None,
    ):
        super().__init__(name)
        self.function, self._supports, self._twin = function, supports, exact_twin
        self.family = family  # this instance's own, where a subclass sets its class's

    def supports(self, case: CaseLike) -> list[str]:
        return list(self._supports(case)) if self._supports else []

    def __call__(self, q, k, v, *, causal=False):
        return _grouped_query_explained(self.function, self.name, q, k, v, causal)

    def exact_twin(self, q, k, v, *, causal=False):
        if self._twin is None:
            return super().exact_twin(q, k, v, causal=causal)
        return _grouped_query_explained(self._twin, f"{self.name}'s exact_twin", q, k, v, causal)


def _attention_signature_problem(function: Callable) -> str | None:
    """Why `function` cannot be called as function(q, k, v, causal=...); None where it can (or cannot be told)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: trusted
        return None
    try:
        signature.bind(None, None, None, causal=False)
    except TypeError as error:
        return f"takes {signature}, which (q, k, v, causal=...) does not fit: {error}"
    return None


def _checked_function(name: str, function: Any, what: str) -> None:
    """Raises ValueError unless `function` is callable as (q, k, v, *, causal); `name` is the argument's."""
    problem = "is not callable" if not callable(function) else _attention_signature_problem(function)
    if problem:
        shown = getattr(function, "__name__", None) or repr(function)
        raise ValueError(f"{name}: {shown} {problem} (allowed: {what} (q, k, v, *, causal) -> out)")


def as_implementation(
    function: AttentionFunction,
    name: str,
    supports: Callable[[CaseLike], list[str]] | None = None,
    *,
    family: str = "exact",
    exact_twin: AttentionFunction | None = None,
) -> Implementation:
    """`function(q, k, v, *, causal)` as an implementation named `name`. `supports(case)`, if given, returns one
    reason per thing the function cannot run (a device, a dtype): those cases become `unsupported` rows.
    An approximation of softmax attention names its `family` (one of implementations.base.FAMILIES but "exact")
    and its `exact_twin`: the same maths, run in float64 and differentiable, with the signature of `function`
    (the same random features or projections, for a Performer or Linformer); it is checked against the twin, and
    its distance from softmax attention is reported beside. FLOPs are counted as softmax attention's."""
    _checked_function("function", function, "a function")
    if not isinstance(name, str) or not name or any(char in name for char in ":,* "):
        raise ValueError(
            f"name: {name!r} is not a usable name (allowed: a non-empty string without ':', ',', '*' "
            "or spaces, which the command line gives meanings)"
        )
    approximate = ", ".join(f for f in FAMILIES if f != "exact")
    if family not in FAMILIES:
        raise ValueError(
            f"family: {family!r} is not a family (allowed: exact, or for an approximation of softmax "
            f"attention one of {approximate})"
        )
    if family == "exact" and exact_twin is not None:
        raise ValueError(
            f"exact_twin: given for family 'exact' (allowed: only with an approximate family, one of "
            f"{approximate}; an exact function is checked against softmax attention)"
        )
    if family != "exact":
        if exact_twin is None:
            raise ValueError(
                f"exact_twin: none given for family {family!r} (allowed: the approximation's own maths "
                "in float64, (q, k, v, *, causal) -> out, which it is checked against)"
            )
        _checked_function("exact_twin", exact_twin, "the approximation's maths in float64,")
    return FunctionImplementation(name, function, supports, family, exact_twin)


def _built(impls: Iterable[Implementation | str] | Implementation | str) -> list[Implementation]:
    if isinstance(impls, (str, Implementation)):  # one, not a sequence of characters
        impls = [impls]
    built = [impl if isinstance(impl, Implementation) else config.build_impl("impls", impl) for impl in impls]
    if not built:
        raise ValueError("impls: none given (allowed: implementations, or registry names such as 'sdpa')")
    labels = [impl.label for impl in built]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"impls: {repeated[0]!r} is given twice (allowed: each label once; their rows would share one key)"
        )
    return built


def _causal(values: bool | Sequence[bool]) -> tuple[bool, ...]:
    items = values if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if not items or any(not isinstance(item, bool) for item in items):
        raise ValueError(f"causal: {values!r} is not allowed (allowed: True, False or both as [False, True])")
    return tuple(dict.fromkeys(items))


def benchmark(
    impls: Iterable[Implementation | str] | Implementation | str,
    *,
    seq_len: int | Sequence[int],
    heads: int | Sequence[int] = 16,
    head_dim: int | Sequence[int] = 64,
    batch: int | Sequence[int] | None = None,
    tokens_per_batch: int = TOKENS_PER_BATCH,
    kv_heads: int | Sequence[int] | None = None,
    q_len: int | Sequence[int] | None = None,
    dtype: str | Sequence[str] | None = None,
    causal: bool | Sequence[bool] = False,
    mode: str | Sequence[str] = "fwd",
    docs: str | Sequence[str] = "fixed",
    device: str | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    timing: Mapping[str, int | float] | str | None = None,
    progress: bool = True,
    cuda_graph: bool = False,
    energy: bool = False,
    threads: int | None = None,
    worker: bool = False,
    row_timeout: float = DEFAULT_ROW_TIMEOUT_S,
    host_memory_limit: int | str | None = None,
) -> pd.DataFrame:
    """Every implementation on every case of the grid, one row each (a case one cannot run is a row with its
    reason). Without `batch`, each length's batch is `tokens_per_batch // seq_len`, as in a `run` naming no preset
    (config.keeps_preset_batch). `q_len`: fewer queries than keys, the last positions (decoding against a KV cache of
    seq_len tokens). `docs`: packed documents per sequence, as `run --docs` packs them (`uniform:128-2048`). `dtype`
    defaults to bfloat16 on a GPU and float32 on a CPU; `device` to the GPU where there is
    one. `out`: the results file to write (it must not exist); without it the rows go to a temporary file.
    `timing` changes how each case is timed, as `run --timing` does (`{"min_repeats": 20, "budget_s": 3}`).
    Progress lines go to stderr unless `progress` is False. `cuda_graph`: also time each forward row replayed from a
    CUDA graph, as `run --cuda-graph` does (GPU only); `energy`: also measure each row's energy per call, as `run
    --energy` does (GPU only). `threads`: the threads torch computes with on a CPU during the run, as `run
    --threads` sets them (restored after it). `worker`: measure in a worker process as `run` does, stopping a row
    after `row_timeout` seconds (a `timeout` row) or past `host_memory_limit` bytes of host memory (an `oom` row;
    a size such as "16GiB"; default 90% of the memory available), and going on after a crash; the implementations
    must be importable (not defined in `__main__`). Whatever an implementation raises, SystemExit too, is its
    row's (an `error` row naming it); Ctrl-C stops the run. Rows finished before an interruption or a lost device
    stay in `out`."""
    built = _built(impls)
    device = config.device_or_default(device, "device")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: {seed!r} is not an integer (allowed: any integer)")
    for asked, name, why in ((cuda_graph, "cuda_graph", GRAPH_WHY), (energy, "energy", ENERGY_WHY)):
        if asked and (refusal := config.gpu_only(name, device, why)):
            raise ValueError(refusal)
    ints = lambda name, value: config.positive_ints(name, config.as_flag_text(value))  # noqa: E731
    threads = None if threads is None else config.threads("threads", config.as_flag_text(threads))
    grid = Grid(
        impls=tuple(impl.label for impl in built),
        seq_len=ints("seq_len", seq_len),
        heads=ints("heads", heads),
        head_dim=ints("head_dim", head_dim),
        dtype=config.dtypes("dtype", config.as_flag_text(dtype or ("bfloat16" if device == "cuda" else "float32"))),
        causal=_causal(causal),
        mode=config.modes("mode", config.as_flag_text(mode)),
        batch=None if batch is None else ints("batch", batch),
        tokens_per_batch=config.only_one("tokens_per_batch", ints("tokens_per_batch", tokens_per_batch)),
        kv_heads=(None,) if kv_heads is None else ints("kv_heads", kv_heads),
        q_len=(None,) if q_len is None else ints("q_len", q_len),
        docs=config.docs_specs("docs", config.as_flag_text(docs)),
    )
    cases = grid.cases(device)  # raises ValueError where kv_heads does not divide heads, or q_len exceeds seq_len
    policy = config.timing_policy("timing", None if timing is None else config.as_flag_text(timing), device)
    _refuse_existing(out)
    if out is not None:
        config.writable("out", out)
    limits = _worker_limits(built, row_timeout, host_memory_limit) if worker else None
    with tempfile.TemporaryDirectory() as scratch, torch_threads(threads):
        path = Path(out) if out is not None else Path(scratch) / "results.jsonl"
        with one_writer(path, "out"):  # as `run` does: no other process may write `out` meanwhile
            _refuse_existing(out)
            _measure_into(path, built, cases, grid, device, seed, policy, threads, limits, cuda_graph, energy, progress)
        return load(path)


def _refuse_existing(out: str | Path | None) -> None:
    if out is not None and Path(out).exists():
        raise ValueError(
            f"out: {str(out)!r} already exists (allowed: a new path; `attnbench run --resume --out` continues a file)"
        )


def _measure_into(
    path: Path,
    built: list[Implementation],
    cases: list,
    grid: Grid,
    device: str,
    seed: int,
    policy,
    threads: int | None,
    limits: Limits | None,
    cuda_graph: bool,
    energy: bool,
    progress: bool,
) -> None:
    settings = measured_settings(cases, device, seed, policy)
    settings.cuda_graph, settings.energy = cuda_graph, energy
    writer = results_writer(
        path,
        grid,
        settings,
        device,
        preset=None,
        config=None,
        argv=["(suite.api.benchmark)"],
        threads=threads,
        worker=limits.record() if limits else None,
        planned_rows=len(built) * len(cases),
    )
    how = dict(settings=settings, on_row=writer.append, progress=Progress() if progress else None)
    try:
        if limits is None:
            run_cases(built, cases, **how)
        else:
            run_supervised(built, cases, limits=limits, threads=torch.get_num_threads(), **how)
    finally:
        writer.close()


def _worker_limits(built: list[Implementation], row_timeout: float, host_memory_limit: int | str | None) -> Limits:
    why_not = unsendable(built)
    if why_not:
        raise ValueError(f"worker: {why_not} (allowed: implementations a worker process can import)")
    timeout = config.positive_float("row_timeout", config.as_flag_text(row_timeout))
    memory = default_limit() if host_memory_limit is None else config.byte_size("host_memory_limit", host_memory_limit)
    return Limits(timeout, None if memory is None else int(memory))


Results = str | Path | Sequence[str | Path] | pd.DataFrame  # results files, or rows as `benchmark` returns them


def _side(name: str, results: Results) -> tuple[pd.DataFrame, GridScope]:
    if isinstance(results, pd.DataFrame):
        if results.empty or not {"impl", "machine", "time_ms"} <= set(results.columns):
            raise ValueError(
                f"{name}: a DataFrame without result rows (allowed: rows as benchmark() or "
                "suite.results.load() return them, or results files)"
            )
        return results, GridScope.unknown()
    paths = [results] if isinstance(results, (str, Path)) else list(results)
    try:
        return read_side([Path(path) for path in paths])
    except CompareInputError as error:
        raise ValueError(f"{name}: {error}") from None


def compare(
    baseline: Results,
    current: Results,
    *,
    baseline_impl: str | None = None,
    current_impl: str | None = None,
    threshold: float = 0.05,
    memory_threshold: float | None = 0.10,
) -> pd.DataFrame:
    """What `attnbench compare` decides, as a DataFrame: one row per implementation and case, with `verdict`
    (`same`, `slower`, `faster`, `ambiguous`, `regression`, ...), `ratio` (current / baseline median time),
    `detail` (which names a growth of peak memory too), and `memory_verdict`, `memory_ratio`, `memory_detail`.
    `attrs["regressed"]` is what the command's exit status says, `attrs["verdict"]` what regressed (its verdict
    line), `attrs["notes"]` what differed between the sides besides the code, and files whose run fell short of its
    plan (completeness.py). With `baseline_impl` and `current_impl`, one implementation's rows against the other's
    (`current` may be `baseline`): is `mine` slower than `sdpa-flash` anywhere?"""
    if (baseline_impl is None) != (current_impl is None):
        raise ValueError("baseline_impl, current_impl: give both, to compare two implementations, or neither")
    for name, value in (("threshold", threshold), ("memory_threshold", memory_threshold)):
        if (value is not None or name == "threshold") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        ):
            raise ValueError(f"{name}: {value!r} is not allowed (allowed: a fraction > 0, such as 0.05 for 5%)")
    (base, _), (now, scope) = _side("baseline", baseline), _side("current", current)
    try:
        if baseline_impl is not None:
            base, now, scope = paired(base, now, scope, baseline_impl, current_impl)
        result = compared(base, now, threshold, scope, memory_threshold)
    except CompareInputError as error:
        raise ValueError(str(error)) from None
    frame = pd.DataFrame(
        [
            {
                **row.key,
                "verdict": row.verdict,
                "ratio": row.ratio,
                "detail": _detail(row),
                "memory_verdict": row.memory,
                "memory_ratio": row.memory_ratio,
                "memory_detail": row.memory_detail,
            }
            for row in result.rows
        ]
    )
    shortfalls = [
        note
        for side, results in (("baseline", baseline), ("current", current))
        if not isinstance(results, pd.DataFrame)
        for note in shortfall_notes([results] if isinstance(results, (str, Path)) else results, side)
    ]
    frame.attrs.update(regressed=result.regressed, verdict=verdict_line(result), notes=[*result.notes, *shortfalls])
    return frame


def _detail(row: RowVerdict) -> str:
    """A row's detail; where its peak memory grew, that regression too, since its time's verdict may be `faster`."""
    if row.memory != "more":
        return row.detail
    return f"{row.detail}; more peak memory, a regression: {row.memory_detail}"


def check(
    impl: Implementation | str,
    device: str | None = None,
    dtypes: str | Sequence[str] | None = None,
    seed: int = 0,
    *,
    seq_len: int | Sequence[int] | None = None,
    head_dim: int | Sequence[int] | None = None,
    q_len: int | Sequence[int] | None = None,
) -> conformance.CheckSummary:
    """The conformance check `attnbench check` runs (awkward sizes, short lengths over many seeds, transposed
    inputs, large logits; forward and gradients against the float64 twin, each case called twice), as a summary:
    `.ok`, `.format()` for a reader, `.as_record()` for a program. `seq_len`, `head_dim` and `q_len` add shapes of
    one's own model, checked like the awkward ones, as `check --seq-len --head-dim --q-len` do: each head dim at a
    few lengths, each length at each head dim, each query length (the last positions) against each length."""
    (built,) = _built([impl])
    device = config.device_or_default(device, "device")
    chosen = config.dtypes("dtypes", config.as_flag_text(dtypes or default_check_dtypes(device)))
    own = _own_shapes(seq_len, head_dim, q_len)
    summary, _ = checked(built, device, chosen, seed, own)  # stopped early where the device became unusable
    return summary


def _own_shapes(
    seq_len: int | Sequence[int] | None, head_dim: int | Sequence[int] | None, q_len: int | Sequence[int] | None
) -> list[tuple]:
    """conformance.own_shapes of the arguments, each checked as its flag is."""
    lengths, head_dims, query_lengths = (
        () if value is None else config.positive_ints(name, config.as_flag_text(value))
        for name, value in (("seq_len", seq_len), ("head_dim", head_dim), ("q_len", q_len))
    )
    try:
        return conformance.own_shapes(lengths, head_dims, query_lengths, lengths_named="seq_len")
    except ValueError as error:  # a query length longer than a length
        raise ValueError(f"q_len: {error}") from None


__all__ = ["FunctionImplementation", "GroupedQueryError", "as_implementation", "benchmark", "check", "compare"]
