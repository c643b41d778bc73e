"""`attnbench recommend`: rank the implementations measured for a shape, and say why others are out.

Only measured numbers are used. Times and memory are scaled from the measured batch nearest the asked
one (default 1) in proportion to the batch, which holds only where the device is as busy at both.
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

from .reporting.data import MEASURED, fmt_bytes, fmt_duration, fmt_num, impl_order
from .results import json_safe


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


@dataclass
class Exclusion:
    impl: str
    why: str
    by_iid_error: bool = False  # excluded by --max-error on the i.i.d.-inputs figure, which misranks approximations


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


def _host_bound(*rows) -> bool:
    return any(r.get("host_bound") is not None and pd.notna(r.get("host_bound")) and bool(r.get("host_bound"))
               for r in rows)


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


SHAPE_FLAGS = (("heads", "--heads"), ("kv_heads", "--kv-heads"), ("head_dim", "--head-dim"), ("dtype", "--dtype"),
               ("causal", "--causal"), ("mode", "--mode"))


def unmeasured_shape(frame: pd.DataFrame, query: Query) -> str | None:
    """Why the results hold no row of the asked shape, or None: the first flag (in SHAPE_FLAGS order) whose
    value no row matching the flags before it has, with the values those rows do have."""
    asked = {**{column: getattr(query, column) for column, _ in SHAPE_FLAGS}, "kv_heads": query.kv_heads or query.heads}
    rows, matched = frame, []
    for column, flag in SHAPE_FLAGS:
        narrower = rows[rows[column] == asked[column]]
        if narrower.empty:
            shown = f"{flag} {_shown(asked[column])}" + (" (as many as --heads)" if column == "kv_heads" and
                                                          query.kv_heads is None else "")
            where = f" for {', '.join(matched)}" if matched else ""
            measured = ", ".join(_shown(value) for value in sorted(set(rows[column])))
            return f"no rows with {shown}{where} in the results (measured: {measured})"
        rows = narrower
        matched.append(f"{flag} {_shown(asked[column])}")
    return None


def _shown(value) -> str:
    """A value as it is written on the command line (causal: true/false)."""
    return str(bool(value)).lower() if isinstance(value, (bool, np.bool_)) else str(value)


def _nearest_batch(rows: pd.DataFrame, batch: int) -> pd.Series:
    """Of the rows of one length, the one measured at the batch nearest the asked one (by ratio): scaling
    time from a far batch assumes the GPU was as busy there. Of equals, the last (a later file's)."""
    distance = np.abs(np.log(rows.batch.astype(float) / batch))
    return rows[distance == distance.min()].iloc[-1]


def rank(frame: pd.DataFrame, query: Query) -> tuple[list[Candidate], list[Exclusion]]:
    """(candidates fastest first, why each other implementation is excluded)."""
    kv_heads = query.kv_heads or query.heads
    shape = frame[(frame.heads == query.heads) & (frame.kv_heads == kv_heads) & (frame.head_dim == query.head_dim)
                  & (frame.dtype == query.dtype)
                  & (frame.causal == query.causal) & (frame["mode"] == query.mode)]
    candidates, excluded = [], []
    for label in impl_order(shape.impl):
        rows = shape[shape.impl == label].sort_values("seq_len")
        exact = rows[rows.seq_len == query.seq_len]
        if not exact.empty:
            row = _nearest_batch(exact, query.batch)
            if row.status not in MEASURED:
                excluded.append(Exclusion(label, f"{row.status} at seq_len {query.seq_len}: {row.reason}"))
                continue
            scale = query.batch / row.batch
            memory = row.peak_mem_bytes * scale if pd.notna(row.peak_mem_bytes) else None
            error, error_basis = _error(row)
            found = Candidate(label, float(row.time_ms) * scale, memory, error,
                              f"measured at seq_len {query.seq_len}, batch {row.batch}", _first_call(row), error_basis,
                              _host_bound(row))
            status_problem = "accuracy mismatch against its exact twin" if row.status == "mismatch" else None
        else:
            below, above = rows[rows.seq_len < query.seq_len], rows[rows.seq_len > query.seq_len]
            measured = sorted(set(rows.seq_len))
            if below.empty or above.empty:
                excluded.append(Exclusion(label, f"not measured around seq_len {query.seq_len} (measured: {measured}); "
                                                 "no extrapolation"))
                continue
            lo = _nearest_batch(below[below.seq_len == below.seq_len.max()], query.batch)
            hi = _nearest_batch(above[above.seq_len == above.seq_len.min()], query.batch)
            bad = [r for r in (lo, hi) if r.status not in MEASURED]
            if bad:
                excluded.append(Exclusion(label, f"{bad[0].status} at neighbouring seq_len {bad[0].seq_len}: {bad[0].reason}"))
                continue
            per_batch = lambda r, column: r[column] * query.batch / r.batch  # noqa: E731
            time_ms = _interpolate(query.seq_len, lo.seq_len, hi.seq_len, per_batch(lo, "time_ms"), per_batch(hi, "time_ms"))
            memory = _interpolate(query.seq_len, lo.seq_len, hi.seq_len,
                                  per_batch(lo, "peak_mem_bytes"), per_batch(hi, "peak_mem_bytes"))
            worst, basis = max(((e, b) for e, b in (_error(lo), _error(hi)) if e is not None), default=(None, None))
            found = Candidate(label, time_ms, memory, worst,
                              f"interpolated between seq_len {lo.seq_len} (batch {lo.batch}) and {hi.seq_len} "
                              f"(batch {hi.batch})", _first_call(lo, hi), basis, _host_bound(lo, hi))
            status_problem = "accuracy mismatch at a neighbouring length" if "mismatch" in (lo.status, hi.status) else None
        if status_problem:
            excluded.append(Exclusion(label, status_problem))
        elif query.max_error is not None and (found.error is None or found.error > query.max_error):
            excluded.append(Exclusion(label, f"error {fmt_num(found.error)} ({found.error_basis}) above --max-error "
                                             f"{query.max_error:g}"
                                      if found.error is not None else "error not measured (no reference for this row)",
                                      by_iid_error=found.error_basis == "i.i.d."))
        elif query.memory_budget is not None and found.peak_mem_bytes is not None \
                and found.peak_mem_bytes > query.memory_budget:
            excluded.append(Exclusion(label, f"peak memory {fmt_bytes(found.peak_mem_bytes)} above --memory-budget "
                                             f"{fmt_bytes(query.memory_budget)}"))
        else:
            candidates.append(found)
    candidates.sort(key=lambda c: c.time_ms)
    return candidates, excluded


def format_answer(query: Query, candidates: list[Candidate], excluded: list[Exclusion], sources: list[Path]) -> str:
    mask = "causal" if query.causal else "dense"
    lines = [f"shape: batch {query.batch}, seq_len {query.seq_len}, {query.heads} heads, head dim {query.head_dim}, "
             f"{query.dtype}, {mask}, {query.mode}; results: {', '.join(str(s) for s in sources)}",
             "error: relative RMS against exact softmax attention (approximate families) or the float64 reference "
             "(exact ones: their rounding); (on): local inputs, where softmax attention is peaked, or i.i.d. inputs, "
             "where it is nearly uniform"]
    if query.memory_budget is not None and any(c.peak_mem_bytes is None for c in candidates):
        lines.append("note: memory was not measured for some rows (their peak_mem_reason says why), "
                     "so --memory-budget cannot exclude them")
    if candidates:
        lines.append("")
        lines.append(f"{'rank':<5}{'implementation':<28}{'time':>12}{'memory':>12}{'error':>10} {'(on)':<10}"
                     f"{'first call':>10}  basis")
        for i, c in enumerate(candidates, 1):
            first_call = fmt_duration(c.first_call_ms) if c.first_call_ms is not None else "–"
            lines.append(f"{i:<5}{c.impl:<28}{fmt_num(c.time_ms) + ' ms':>12}{fmt_bytes(c.peak_mem_bytes):>12}"
                         f"{fmt_num(c.error):>10} {'(' + (c.error_basis or '–') + ')':<10}{first_call:>10}  {c.basis}")
        lines.append("first call: one-time cost per new shape (compilation, autotuning), not in the time")
    else:
        lines.append("no implementation qualifies")
    host_bound = [c.impl for c in candidates if c.host_bound]
    if host_bound:
        lines.append(f"note: {', '.join(host_bound)} {'was' if len(host_bound) == 1 else 'were'} host-bound where "
                     "measured (issuing a call took the host about as long as the GPU took to run it): called back to back, "
                     "the host sets the pace, and a time scaled to another batch is too high scaled up and too low "
                     "scaled down, since the host's share does not grow with the batch")
    iid = [c.impl for c in candidates if c.error_basis == "i.i.d."]
    iid_excluded = [exclusion.impl for exclusion in excluded if exclusion.by_iid_error]
    if iid or iid_excluded:
        by_them = f"; {', '.join(iid_excluded)} excluded by them" if iid_excluded else ""
        lines.append(f"note: the errors of {', '.join(iid + iid_excluded)} are on i.i.d. inputs (no local-inputs figure)"
                     f"{by_them}: there errors grow with length and rank windows below feature maps, the reverse of "
                     "their order on peaked attention (`attnbench local-errors FILE` adds the local figures)")
    if excluded:
        lines.append("")
        lines.append("excluded:")
        lines += [f"  {exclusion.impl}: {exclusion.why}" for exclusion in excluded]
    return "\n".join(lines)


def answer_record(query: Query, candidates: list[Candidate], excluded: list[Exclusion], sources: list[Path]) -> str:
    """The same answer as JSON: the query, the ranking (fastest first; times in ms, memory in bytes, each with
    its basis) and every exclusion with its reason."""
    return json.dumps(json_safe({"query": asdict(query), "results": [str(source) for source in sources],
                                 "ranked": [asdict(candidate) for candidate in candidates],
                                 "excluded": [asdict(exclusion) for exclusion in excluded]}), indent=2, allow_nan=False)

