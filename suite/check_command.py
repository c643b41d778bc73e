"""`attnbench check`: the conformance check of any implementation, printed per implementation and, with
--json, written whole for a CI dashboard."""
from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from implementations import Implementation

from . import config, conformance, runner
from .case import Case


def default_check_dtypes(device: str) -> str:
    """Every dtype a GPU kernel is used at; on a CPU, float16 (rarely used there, and slow) is left out."""
    return "float16,bfloat16,float32" if device == "cuda" else "float32,bfloat16"


def cmd_check(args) -> int:
    from .poison import poisoning

    specs = config.impl_specs("--impl", args.impl)
    if args.json:
        config.writable("--json", args.json)  # before minutes of checking, not after
    device = config.device_or_default(args.device)
    dtypes = config.dtypes("--dtype", args.dtype or default_check_dtypes(device))
    lengths, head_dims, query_lengths = (config.positive_ints(flag, text) if text else ()
                                         for flag, text in (("--seq-len", args.seq_len), ("--head-dim", args.head_dim),
                                                            ("--q-len", args.q_len)))
    try:
        own = conformance.own_shapes(lengths, head_dims, query_lengths)
    except ValueError as error:  # a query length longer than a length
        raise config.UsageError(f"--q-len: {error}") from None
    print(f"checking on {device} ({', '.join(dtypes)}): {len(conformance.AWKWARD_SHAPES)} awkward shapes and "
          f"{len(conformance.DECODING_SHAPES)} with fewer queries than keys, causal and not, with and without autograd, "
          f"then lengths {conformance.SHORT_LENGTHS} for "
          f"{len(conformance.SHORT_LENGTH_SEEDS)} seeds, each twice, then transposed (non-contiguous) inputs, then 257 "
          f"tokens and a 130-of-300 prefill at logits of spread {conformance.LARGE_LOGIT_STD:g} (finite results; "
          f"float32 also against the twin); memory poisoning: "
          f"{poisoning(device)}", flush=True)
    if own:  # checked like the awkward shapes
        print(f"and shapes of your own: {', '.join(_shape_text(shape) for shape in own)} (KV: key/value heads shared "
              "by the query heads)", flush=True)
    all_ok, summaries = True, []
    for number, spec in enumerate(specs):
        impl = config.build_impl("--impl", spec)
        starting = functools.partial(_announce_case, impl.label) if args.verbose else None
        summary, device_lost = checked(impl, device, dtypes, args.seed, own, starting, moving=_say_it_is_moving)
        summaries.append(summary)
        print(summary.format(), flush=True)
        all_ok &= summary.ok
        if device_lost:
            print(f"  stopped: the device was unusable after the error on {summary.results[-1].case.label}", flush=True)
            for rest in specs[number + 1:]:
                print(f"{rest}: NOT CHECKED (the device was unusable after {impl.label}'s error)", flush=True)
            all_ok = False
            break
    if args.json:
        _write_json(Path(args.json), {"device": device, "dtypes": list(dtypes), "poisoning": poisoning(device),
                                      "ok": all_ok, "implementations": [s.as_record() for s in summaries]})
        print(f"results: {args.json}")
    return 0 if all_ok else 1


def checked(impl: Implementation, device: str, dtypes: tuple[str, ...], seed: int = 0, own: list[tuple] = (),
            starting: Callable[[Case, int], None] | None = None,
            moving: Callable[[str, int, float], None] | None = None) -> tuple[conformance.CheckSummary, bool]:
    """One implementation's conformance check, summed up, and whether it left the device unusable (a sticky CUDA
    error: every later case would crash too, whatever its implementation, so the check stops there). `moving`
    is told (label, cases done, seconds) every 10 s: compiled kernels can take minutes."""
    started = last_note = time.perf_counter()
    results, device_lost = [], False
    for result in conformance.check(impl, device, dtypes, seed, own, starting):
        results.append(result)
        device_lost = result.status == "error" and not runner.device_usable(device)
        if device_lost:
            break
        if moving and time.perf_counter() - last_note > 10:
            last_note = time.perf_counter()
            moving(impl.label, len(results), last_note - started)
    return conformance.CheckSummary(impl.label, results, time.perf_counter() - started, impl.family), device_lost


def _say_it_is_moving(label: str, done: int, seconds: float) -> None:
    print(f"  {label}: {done} cases done, {seconds:.0f} s", file=sys.stderr, flush=True)


def _announce_case(label: str, case: Case, seed: int) -> None:
    print(f"  {label}: {case.label} seed {seed} ...", file=sys.stderr, flush=True)


def _shape_text(shape: tuple) -> str:
    batch, heads, seq_len, head_dim, kv_heads, *q_len = shape
    queries = f"-Q{q_len[0]}" if q_len else ""
    return f"B{batch}-H{heads}{f'-KV{kv_heads}' if kv_heads else ''}-N{seq_len}{queries}-D{head_dim}"


def _write_json(path: Path, record: dict) -> None:
    """Whole or not at all: written beside, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)
