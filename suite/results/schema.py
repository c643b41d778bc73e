"""Every column of a results row, declared once: its type, unit and meaning.

The writer orders and checks rows by it, the reader validates lines against it, the report's data.csv takes its
columns from it, and docs/results.md's column table is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("ok", "mismatch", "unsupported", "oom", "timeout", "error")
# Statuses a resumed run may measure again (`--resume --retry`): every failed or skipped row.
RETRYABLE = tuple(status for status in STATUSES if status != "ok")

# What a column's values may be, as JSON gives them (null is always allowed, but for the row's key).
KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "float or dict": (int, float, dict),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of KINDS
    unit: str  # "" where the value has none
    meaning: str  # one line, for docs/results.md
    in_data_csv: bool = False  # also a column of a report's data.csv


def _columns(*specs: tuple) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


RECORD = _columns(
    ("record", "str", "", "`result` for a row (`run` for a run's header line)"),
    ("run_id", "str", "", "the run whose header line describes how this row was measured"),
)
IDENTITY = _columns(
    ("impl", "str", "", "implementation label: its name plus its non-default options", True),
    ("family", "str", "", "what it computes: exact, sparse, linear, performer or low-rank", True),
)
CASE = _columns(
    ("batch", "int", "", "sequences per call", True),
    ("heads", "int", "", "query heads", True),
    ("seq_len", "int", "tokens", "keys per sequence (and queries, unless `q_len` is set)", True),
    ("head_dim", "int", "", "dimension of each head", True),
    ("dtype", "str", "", "float16, bfloat16 or float32", True),
    ("causal", "bool", "", "each query sees only the keys up to its own position", True),
    ("mode", "str", "", "fwd, bwd (the backward alone) or fwd+bwd", True),
    ("device", "str", "", "cpu or cuda", True),
    ("kv_heads", "int", "", "key/value heads; null = `heads` (no grouping)", True),
    ("q_len", "int", "tokens", "queries, the last of the `seq_len` positions; null = `seq_len`", True),
    ("docs", "str", "", "documents per sequence: `fixed` (one), `uniform:MIN-MAX` or `lengths:A+B+...`", True),
)
PACKING = _columns(
    ("doc_lens", "list", "tokens", "each batch sequence's documents' lengths, as drawn from `docs` and the seed"),
)
OUTCOME = _columns(
    (
        "status",
        "str",
        "",
        "ok, mismatch (ran, but disagrees with the reference), unsupported, oom, timeout (--row-timeout) or error",
        True,
    ),
    ("reason", "str", "", "why, for every status but ok (and for ok rows whose accuracy was not checked)", True),
    ("backend", "str", "", "the kernel actually dispatched (`sdpa*`, `xformers`)", True),
)
TIME = _columns(
    ("time_ms", "float", "ms", "median time of the timed calls", True),
    ("time_iqr_ms", "float", "ms", "interquartile range of the timed calls", True),
    ("repeats", "int", "", "how many calls were timed", True),
    ("times_ms", "list", "ms", "every timed call's time, in order"),
    ("first_call_ms", "float", "ms", "the first call, with its one-time costs (compilation, autotuning)", True),
    (
        "setup_ms",
        "float",
        "ms",
        "set-up for the inputs' layout, outside the timed calls (flex's document block mask, once per packing)",
        True,
    ),
    ("noisy", "bool", "", "IQR above the timing policy's `noisy_relative_iqr` of the median (10% by default)", True),
    ("host_ms", "float", "ms", "on CUDA: median time the host took to issue one timed call; null on a CPU", True),
    ("host_bound", "bool", "", "on CUDA: issuing took at least 90% of the GPU time (see below)", True),
    ("graph_time_ms", "float", "ms", "`--cuda-graph`: median of the call replayed from a CUDA graph", True),
    ("graph_time_iqr_ms", "float", "ms", "`--cuda-graph`: interquartile range of the replays"),
    ("graph_repeats", "int", "", "`--cuda-graph`: how many replays were timed"),
    ("graph_reason", "str", "", "`--cuda-graph`: why the row has no replayed time", True),
    ("energy_j", "float", "J", "`--energy`: the board's energy per call", True),
    ("energy_power_w", "float", "W", "`--energy`: the board's mean power over calls back to back", True),
    ("energy_calls", "int", "", "`--energy`: calls in the measured window"),
    ("energy_window_s", "float", "s", "`--energy`: length of the measured window"),
    ("energy_reason", "str", "", "`--energy`: why the row has no energy"),
)
THROUGHPUT = _columns(
    ("tflops", "float", "TFLOP/s", "the implementation's own FLOPs over the median time", True),
    ("tokens_per_s", "float", "tokens/s", "query tokens per second", True),
    ("peak_fraction", "float", "", "`tflops` over this GPU's measured matmul peak", True),
    ("gbytes_per_s", "float", "GB/s", "the traffic no implementation can avoid over the median time (see below)", True),
    ("bandwidth_fraction", "float", "", "`gbytes_per_s` over this GPU's measured copy bandwidth", True),
    ("peak_mem_bytes", "int", "bytes", "the most memory the call held beyond its inputs (see below)", True),
    ("peak_mem_reason", "str", "", "why `peak_mem_bytes` is null"),
    (
        "density",
        "float",
        "",
        "visible query-key pairs over N² per sequence (1 dense, ~0.5 causal, less for masks and documents)",
        True,
    ),
)
ACCURACY = _columns(
    ("max_abs_err", "float", "", "largest absolute error against the float64 exact twin, output and gradients", True),
    (
        "rel_rms_err",
        "float",
        "",
        "RMS error over RMS of the float64 exact twin's result, worst of output and gradients",
        True,
    ),
    ("accuracy_ok", "bool", "", "passes when RMS(err) <= rtol * RMS(ref) + atol", True),
    ("accuracy_tolerance", "float or dict", "", "the allowance the check applied (rtol, atol and what set them)"),
    ("errors", "dict", "", "each checked tensor's errors (out, dq, dk, dv)"),
    ("accuracy_scope", "str", "", "null when every (batch, head) slice was checked; otherwise which share was"),
    ("softmax_max_abs_err", "float", "", "approximate families: largest output error against softmax attention"),
    (
        "softmax_rel_rms_err",
        "float",
        "",
        "approximate families: relative RMS output error against softmax attention",
        True,
    ),
    ("softmax_local_max_abs_err", "float", "", "the same on local inputs, where softmax attention is peaked"),
    ("softmax_local_rel_rms_err", "float", "", "the same on local inputs, where softmax attention is peaked", True),
    ("softmax_local_note", "str", "", "why the local-inputs figures are missing"),
    ("local_errors_run_id", "str", "", "the `attnbench local-errors` run that added the local-inputs figures"),
)
MACHINE_STATE = _columns(
    ("throttled", "bool", "", "the GPU reported a clock-event (throttle) reason during the case", True),
    ("throttle_reasons", "list", "", "NVML's clock-event reasons during the case"),
    ("cpu_contended", "bool", "", "on a CPU: other processes took cores from torch's threads while it was timed"),
    ("cpu_contention", "dict", "", "on a CPU: the evidence for `cpu_contended` (their share of the cores, the window)"),
    ("gpu_before", "dict", "", "clocks, power and temperature before the case"),
    ("gpu_after", "dict", "", "clocks, power and temperature after the case"),
    ("row_s", "float", "s", "wall seconds the row cost the run, everything included: for planning, not a speed", True),
    ("rank", "int", "", "under torchrun: the rank that measured the row (its header lists each rank's device)"),
    ("host", "str", "", "under torchrun: the host of the rank that measured the row"),
)
ROW = (*RECORD, *IDENTITY, *CASE, *PACKING, *OUTCOME, *TIME, *THROUGHPUT, *ACCURACY, *MACHINE_STATE)

# Added by `suite.results.load` from each row's run header: what the row was measured with.
FROM_HEADER = _columns(
    ("machine", "str", "", "the model that timed the row: the GPU, or the CPU with its thread count", True),
    ("gpu", "str", "", "the GPU's name, where there was one"),
    ("software", "str", "", "torch and CUDA versions", True),
    ("attnbench_commit", "str", "", "the attnbench commit that measured the row", True),
    ("settings", "str", "", "the process's settings that change speed, or `default`", True),
    ("distorted_by", "str", "", "settings under which timings are not a program's"),
    ("timing", "str", "", "the timing policy in a few words", True),
    ("batching", "str", "", "how the run chose its batch (`batch 4`, `16384 tokens per batch`)"),
    ("source", "str", "", "the results file the row was read from", True),
)

ROW_COLUMNS = tuple(column.name for column in ROW if column not in RECORD)
BY_NAME = {column.name: column for column in (*ROW, *FROM_HEADER)}
# data.csv: the machine first, so that a spreadsheet groups by it; then the rows' figures and what measured them.
DATA_COLUMNS = (
    "machine",
    *(c.name for c in ROW if c.in_data_csv),
    *(c.name for c in FROM_HEADER if c.in_data_csv and c.name != "machine"),
)


def value_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be column `name`'s, or None (null always can; a column not declared here cannot)."""
    column = BY_NAME.get(name)
    if column is None:
        return f"unknown column {name!r}"
    if value is None:
        return None
    allowed = KINDS[column.kind]
    if isinstance(value, bool) and bool not in allowed:
        return f"{name} is {value!r} (allowed: {column.kind}, or null)"
    return None if isinstance(value, allowed) else f"{name} is {value!r} (allowed: {column.kind}, or null)"
