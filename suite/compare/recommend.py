"""`attnbench recommend`: rank the implementations measured for a shape, and say why others are out.

Only measured numbers are used. A case is batch × heads independent problems of one length: times and memory
are scaled from the measured rows whose batch × heads is nearest the asked one (default batch 1), in proportion
to it, which holds only where the device is as busy at both. Rows at the asked head count are used where an
implementation has any; otherwise rows at other head counts with as many query heads per key/value head stand in
(grouping changes how much key/value data each head reads), and the basis names the head count they had.
Between two measured sequence lengths they are interpolated on log-log axes (attention's cost is a
power of N); outside the measured range nothing is extrapolated: the implementation is listed as not
measured near that length. Each candidate's first call (compilation, autotuning: paid once per new
shape) is shown as measured, the larger of the two between lengths, since it does not scale with the
work.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..reporting.data import MEASURED, fmt_bytes, fmt_duration, fmt_num, impl_order, query_words
from ..results.files import json_safe


@dataclass
class Query:
    seq_len: int
    heads: int
    head_dim: int
    dtype: str
    causal: bool
    mode: str
    max_error: float | None = None
    memory_budget: float | None = None
    batch: int = 1
    kv_heads: int | None = None  # None: as many as heads
    q_len: int | None = None  # queries against seq_len keys (decoding); None: as many as keys
    docs: str = "fixed"  # documents packed per sequence (run --docs); a packing's rows answer for it alone


@dataclass
class Exclusion:
    impl: str
    why: str
    by_iid_error: bool = False  # excluded by --max-error on the i.i.d.-inputs figure, which misranks approximations
    over_limit: float | None = None  # value / limit at the furthest limit exceeded; None: no measured limit excluded it


@dataclass
class Candidate:
    impl: str
    time_ms: float
    peak_mem_bytes: float | None
    error: float | None
    basis: str
    first_call_ms: float | None = None
    error_basis: str | None = None  # which figure `error` is: see ERROR_FIGURES
    host_bound: bool = False  # the host took as long to issue a call as the GPU to run it, where measured
    far_off: bool = False  # its error is at least FAR_OFF_ERROR: flagged in the ranking


# Outputting zeros scores a relative RMS error of exactly 1 against any output; at 0.5 the error is already half
# the output's own size (its direction may be 30 degrees off), halfway to knowing nothing of it.
FAR_OFF_ERROR = 0.5
FAR_OFF_MARK = "!"


def _host_bound(*rows) -> bool:
    return any(
        r.get("host_bound") is not None and pd.notna(r.get("host_bound")) and bool(r.get("host_bound")) for r in rows
    )


def _first_call(*rows) -> float | None:
    values = [float(r.first_call_ms) for r in rows if r.get("first_call_ms") is not None and pd.notna(r.first_call_ms)]
    return max(values) if values else None


# The error a user weighs, best first: against softmax for approximate families (on local inputs where
# measured, since on i.i.d. inputs softmax attention is nearly uniform), else against the float64
# reference (for exact families, their rounding).
ERROR_FIGURES = (("softmax_local_rel_rms_err", "local"), ("softmax_rel_rms_err", "i.i.d."), ("rel_rms_err", "rounding"))


def _error(row) -> tuple[float | None, str | None]:
    """(error, which figure it is). An approximation's error against its own twin is not one of them: it
    would rank it with the exact kernels."""
    figures = ERROR_FIGURES if row.get("family") == "exact" else ERROR_FIGURES[:2]
    for column, basis in figures:
        value = row.get(column)
        if value is not None and not pd.isna(value):
            return float(value), basis
    return None, None


def _interpolate(x: float, x0: float, x1: float, y0: float | None, y1: float | None) -> float | None:
    if y0 is None or y1 is None or pd.isna(y0) or pd.isna(y1) or y0 <= 0 or y1 <= 0:
        return None
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


SHAPE_FLAGS = (
    ("docs", "--docs"),
    ("head_dim", "--head-dim"),
    ("dtype", "--dtype"),
    ("causal", "--causal"),
    ("mode", "--mode"),
)


def _same_grouping(frame: pd.DataFrame, query: Query) -> pd.Series:
    """Rows with as many query heads per key/value head as asked, at any head count."""
    return frame.heads * (query.kv_heads or query.heads) == frame.kv_heads * query.heads


def _same_queries(frame: pd.DataFrame, query: Query) -> pd.Series:
    """Rows with as many queries as asked: a fixed number against their keys, or as many as their keys."""
    return frame.q_len == (frame.seq_len if query.q_len in (None, query.seq_len) else query.q_len)


def _queries(q_len: int | None) -> str:
    return "as many queries as keys" if q_len is None else f"--q-len {q_len}"


def _grouping(heads: int, kv_heads: int) -> str:
    return "ungrouped heads" if heads == kv_heads else f"{heads // kv_heads} query heads per key/value head"


def unmeasured_shape(frame: pd.DataFrame, query: Query) -> str | None:
    """Why the results hold no row of the asked shape, or None: first the grouping of heads (any head count
    scales), then the first flag (in SHAPE_FLAGS order) whose value no row matching the ones before it has, with
    the values those rows do have."""
    kv_heads = query.kv_heads or query.heads
    if not _same_queries(frame, query).any():
        counts = {None if q == n else int(q) for q, n in zip(frame.q_len, frame.seq_len)}
        measured = ", ".join(_queries(q) for q in sorted(counts, key=lambda q: (q is None, q or 0)))
        return f"no rows with {_queries(query.q_len)} in the results (measured: {measured})"
    frame = frame[_same_queries(frame, query)]
    rows = frame[_same_grouping(frame, query)]
    grouping = _grouping(query.heads, kv_heads)
    if rows.empty:
        measured = ", ".join(sorted({_grouping(h, k) for h, k in zip(frame.heads, frame.kv_heads)}))
        return (
            f"no rows with {grouping} (--heads {query.heads}, --kv-heads {kv_heads}) in the results "
            f"(measured: {measured})"
        )
    matched = [grouping]
    for column, flag in SHAPE_FLAGS:
        asked = getattr(query, column)
        narrower = rows[rows[column] == asked]
        if narrower.empty:
            measured = ", ".join(_shown(value) for value in sorted(set(rows[column])))
            return f"no rows with {flag} {_shown(asked)} for {', '.join(matched)} in the results (measured: {measured})"
        rows = narrower
        if (column, asked) != ("docs", "fixed"):  # the default packing goes without saying
            matched.append(f"{flag} {_shown(asked)}")
    return None


def _shown(value) -> str:
    """A value as it is written on the command line (causal: true/false)."""
    return str(bool(value)).lower() if isinstance(value, (bool, np.bool_)) else str(value)


def _nearest_size(rows: pd.DataFrame, query: Query) -> pd.Series:
    """Of the rows of one length, the one whose batch × heads is nearest the asked one (by ratio): scaling time
    from a far size assumes the GPU was as busy there. Of equals, the one nearest the asked head count, then the
    last (a later file's)."""
    size = np.abs(np.log((rows.batch * rows.heads).astype(float) / (query.batch * query.heads)))
    heads = np.abs(np.log(rows.heads.astype(float) / query.heads))
    nearest = rows[size == size.min()]
    heads = heads[size == size.min()]
    return nearest[heads == heads.min()].iloc[-1]


def _scale(row: pd.Series, query: Query) -> float:
    return query.batch * query.heads / (row.batch * row.heads)


def _measured_at(row: pd.Series, query: Query) -> str:
    """A row's batch, and its head count where it is not the asked one."""
    return f"batch {row.batch}" + (f", {row.heads} heads" if row.heads != query.heads else "")


def _measured_candidate(label: str, rows: pd.DataFrame, query: Query) -> Candidate | Exclusion:
    """One implementation's rows of the asked shape, at the asked length or between the two measured around it:
    its candidate, or why it has none (a failed row, no rows around the length, an accuracy mismatch)."""
    exact = rows[rows.seq_len == query.seq_len]
    if not exact.empty:
        row = _nearest_size(exact, query)
        if row.status not in MEASURED:
            return Exclusion(label, f"{row.status} at seq_len {query.seq_len}: {row.reason}")
        if row.status == "mismatch":
            return Exclusion(label, "accuracy mismatch against its exact twin")
        scale = _scale(row, query)
        memory = row.peak_mem_bytes * scale if pd.notna(row.peak_mem_bytes) else None
        error, error_basis = _error(row)
        return Candidate(
            label,
            float(row.time_ms) * scale,
            memory,
            error,
            f"measured at seq_len {query.seq_len}, {_measured_at(row, query)}",
            _first_call(row),
            error_basis,
            _host_bound(row),
        )
    below, above = rows[rows.seq_len < query.seq_len], rows[rows.seq_len > query.seq_len]
    if below.empty or above.empty:
        return Exclusion(
            label,
            f"not measured around seq_len {query.seq_len} (measured: {sorted(set(rows.seq_len))}); no extrapolation",
        )
    lo = _nearest_size(below[below.seq_len == below.seq_len.max()], query)
    hi = _nearest_size(above[above.seq_len == above.seq_len.min()], query)
    bad = [r for r in (lo, hi) if r.status not in MEASURED]
    if bad:
        return Exclusion(label, f"{bad[0].status} at neighbouring seq_len {bad[0].seq_len}: {bad[0].reason}")
    if "mismatch" in (lo.status, hi.status):
        return Exclusion(label, "accuracy mismatch at a neighbouring length")
    scaled = lambda r, column: r[column] * _scale(r, query)  # noqa: E731
    time_ms = _interpolate(query.seq_len, lo.seq_len, hi.seq_len, scaled(lo, "time_ms"), scaled(hi, "time_ms"))
    memory = _interpolate(
        query.seq_len, lo.seq_len, hi.seq_len, scaled(lo, "peak_mem_bytes"), scaled(hi, "peak_mem_bytes")
    )
    worst, basis = max(((e, b) for e, b in (_error(lo), _error(hi)) if e is not None), default=(None, None))
    return Candidate(
        label,
        time_ms,
        memory,
        worst,
        f"interpolated between seq_len {lo.seq_len} ({_measured_at(lo, query)}) and "
        f"{hi.seq_len} ({_measured_at(hi, query)})",
        _first_call(lo, hi),
        basis,
        _host_bound(lo, hi),
    )


def _over_limits(found: Candidate, query: Query) -> Exclusion | None:
    """The exclusion of a candidate beyond --max-error or --memory-budget, naming each limit it exceeds; None
    within both. Its `over_limit` (value / limit at the furthest limit) ranks the near misses."""
    reasons, over, by_iid = [], [], False
    if query.max_error is not None and found.error is None:
        reasons.append("error not measured (no reference for this row)")
    elif query.max_error is not None and found.error > query.max_error:
        reasons.append(f"error {fmt_num(found.error)} ({found.error_basis}) above --max-error {query.max_error:g}")
        over.append(found.error / query.max_error)
        by_iid = found.error_basis == "i.i.d."
    memory = found.peak_mem_bytes
    if query.memory_budget is not None and memory is not None and memory > query.memory_budget:
        reasons.append(f"peak memory {fmt_bytes(memory)} above --memory-budget {fmt_bytes(query.memory_budget)}")
        over.append(memory / query.memory_budget)
    if not reasons:
        return None
    unmeasured = len(over) < len(reasons)  # how far an unmeasured error is from the limit is not known
    return Exclusion(found.impl, "; ".join(reasons), by_iid, None if unmeasured else max(over))


def rank(frame: pd.DataFrame, query: Query) -> tuple[list[Candidate], list[Exclusion]]:
    """(candidates fastest first, why each other implementation is excluded)."""
    shape = frame[
        _same_grouping(frame, query)
        & _same_queries(frame, query)
        & (frame.docs == query.docs)
        & (frame.head_dim == query.head_dim)
        & (frame.dtype == query.dtype)
        & (frame.causal == query.causal)
        & (frame["mode"] == query.mode)
    ]
    candidates, excluded = [], []
    for label in impl_order(shape.impl):
        rows = shape[shape.impl == label].sort_values("seq_len")
        if (rows.heads == query.heads).any():  # measured at the asked head count: no other stands in
            rows = rows[rows.heads == query.heads]
        found = _measured_candidate(label, rows, query)
        if isinstance(found, Candidate):
            found = _over_limits(found, query) or found
        if isinstance(found, Exclusion):
            excluded.append(found)
        else:
            found.far_off = found.error is not None and found.error >= FAR_OFF_ERROR
            candidates.append(found)
    candidates.sort(key=lambda c: c.time_ms)
    return candidates, excluded


def nearest_miss(excluded: list[Exclusion]) -> Exclusion | None:
    """Of the implementations excluded by --max-error or --memory-budget, the one nearest its limits."""
    return min((e for e in excluded if e.over_limit is not None), key=lambda e: e.over_limit, default=None)


def format_answer(query: Query, candidates: list[Candidate], excluded: list[Exclusion], sources: list[Path]) -> str:
    mask = "causal" if query.causal else "dense"
    grouped = f" ({query.kv_heads} key/value)" if query.kv_heads not in (None, query.heads) else ""
    counted = query_words(query.q_len or query.seq_len, query.seq_len)
    queries = f" ({counted})" if counted else ""
    queries += f", documents {query.docs}" if query.docs != "fixed" else ""
    lines = [
        f"shape: batch {query.batch}, seq_len {query.seq_len}{queries}, {query.heads} heads{grouped}, "
        f"head dim {query.head_dim}, "
        f"{query.dtype}, {mask}, {query.mode}; results: {', '.join(str(s) for s in sources)}",
        "error: relative RMS against exact softmax attention (approximate families) or the float64 reference "
        "(exact ones: their rounding); (on): local inputs, where softmax attention is peaked, or i.i.d. inputs, "
        "where it is nearly uniform",
    ]
    if query.memory_budget is not None and any(c.peak_mem_bytes is None for c in candidates):
        lines.append(
            "note: memory was not measured for some rows (their peak_mem_reason says why), "
            "so --memory-budget cannot exclude them"
        )
    if candidates:
        lines.append("")
        lines.append(
            f"{'rank':<5}{'implementation':<28}{'time':>12}{'memory':>12}{'error':>10} {'(on)':<12}"
            f"{'first call':>10}  basis"
        )
        for i, c in enumerate(candidates, 1):
            first_call = fmt_duration(c.first_call_ms) if c.first_call_ms is not None else "–"
            on = f"({c.error_basis or '–'})" + (f" {FAR_OFF_MARK}" if c.far_off else "")
            lines.append(
                f"{i:<5}{c.impl:<28}{fmt_num(c.time_ms) + ' ms':>12}{fmt_bytes(c.peak_mem_bytes):>12}"
                f"{fmt_num(c.error):>10} {on:<12}{first_call:>10}  {c.basis}"
            )
        lines.append("first call: one-time cost per new shape (compilation, autotuning), not in the time")
        if any(c.far_off for c in candidates):
            lines.append(
                f"{FAR_OFF_MARK} error at least {FAR_OFF_ERROR:g}: at least half the size of the output "
                "itself (outputting zeros scores 1), so it is far from softmax attention; --max-error "
                "excludes it"
            )
    else:
        lines.append(_none_qualifies(excluded))
    host_bound = [c.impl for c in candidates if c.host_bound]
    if host_bound:
        lines.append(
            f"note: {', '.join(host_bound)} {'was' if len(host_bound) == 1 else 'were'} host-bound where "
            "measured (issuing a call took the host about as long as the GPU took to run it): called back to back, "
            "the host sets the pace, and a time scaled to another batch or head count is too high scaled up "
            "and too low scaled down, since the host's share does not grow with them"
        )
    iid = [c.impl for c in candidates if c.error_basis == "i.i.d."]
    iid_excluded = [exclusion.impl for exclusion in excluded if exclusion.by_iid_error]
    if iid or iid_excluded:
        by_them = f"; {', '.join(iid_excluded)} excluded by them" if iid_excluded else ""
        lines.append(
            f"note: the errors of {', '.join(iid + iid_excluded)} are on i.i.d. inputs (no local-inputs figure)"
            f"{by_them}: there errors grow with length and rank windows below feature maps, the reverse of "
            "their order on peaked attention (`attnbench local-errors FILE` adds the local figures)"
        )
    if excluded:
        lines.append("")
        lines.append("excluded:")
        lines += [f"  {exclusion.impl}: {exclusion.why}" for exclusion in excluded]
    return "\n".join(lines)


def _none_qualifies(excluded: list[Exclusion]) -> str:
    """The answer's line when every implementation is excluded: the nearest miss and the limits it exceeds."""
    miss = nearest_miss(excluded)
    if miss is None:
        return (
            "no implementation qualifies, and no --max-error or --memory-budget excluded one whose figures "
            "were measured (each implementation's reason is below)"
        )
    return f"no implementation qualifies; nearest miss: {miss.impl}, excluded by {miss.why}"


def answer_record(query: Query, candidates: list[Candidate], excluded: list[Exclusion], sources: list[Path]) -> str:
    """The same answer as JSON: the query, the ranking (fastest first; times in ms, memory in bytes, each with
    its basis), every exclusion with its reason, and where none qualifies, the nearest miss."""
    miss = nearest_miss(excluded) if not candidates else None
    return json.dumps(
        json_safe(
            {
                "query": asdict(query),
                "results": [str(source) for source in sources],
                "ranked": [asdict(candidate) for candidate in candidates],
                "excluded": [asdict(exclusion) for exclusion in excluded],
                "nearest_miss": asdict(miss) if miss else None,
            }
        ),
        indent=2,
        allow_nan=False,
    )
