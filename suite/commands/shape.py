"""The flags that name one case (recommend, profile) and the case `list` checks implementations with."""

from __future__ import annotations

import argparse

from ..case import Case


def representative_case(device: str) -> Case:
    dtype = "bfloat16" if device == "cuda" else "float32"
    return Case(batch=1, heads=8, seq_len=1024, head_dim=64, dtype=dtype, causal=False, mode="fwd", device=device)


def one_shape(args: argparse.Namespace, default_dtype: str) -> dict:
    """The flags that name one case's shape (recommend, profile), parsed and checked."""
    from ..run import config
    from ..run.config import UsageError

    if args.causal == "both":
        raise UsageError("--causal: 'both' is not allowed here (allowed: true, false)")
    one = lambda flag, parse, text: config.only_one(flag, parse(flag, text))  # noqa: E731
    shape = {
        "seq_len": one("--seq-len", config.positive_ints, args.seq_len),
        "heads": one("--heads", config.positive_ints, args.heads),
        "head_dim": one("--head-dim", config.positive_ints, args.head_dim),
        "batch": one("--batch", config.positive_ints, args.batch),
        "kv_heads": None if args.kv_heads is None else one("--kv-heads", config.positive_ints, args.kv_heads),
        "q_len": None if args.q_len is None else one("--q-len", config.positive_ints, args.q_len),
        "dtype": one("--dtype", config.dtypes, args.dtype) if args.dtype else default_dtype,
        "causal": config.causal_values("--causal", args.causal) == (True,),
        "mode": one("--mode", config.modes, args.mode),
    }
    if shape["kv_heads"] and shape["heads"] % shape["kv_heads"]:
        raise UsageError(f"--kv-heads: {shape['kv_heads']} does not divide --heads {shape['heads']}")
    if shape["q_len"] and shape["q_len"] > shape["seq_len"]:
        raise UsageError(
            f"--q-len: {shape['q_len']} exceeds --seq-len {shape['seq_len']} (allowed: at most --seq-len; "
            "the queries are the last positions of the keys)"
        )
    return shape
