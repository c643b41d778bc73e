"""Named grids. Budgets: smoke < 1 min on 2 CPU cores; quick < 2 min and default < 8 min on one H100; decode
and varlen have not yet been run on a GPU."""

from __future__ import annotations

from ..case import Grid

# The grid's axes, each both a `run` flag and a grid-file key.
GRID_AXES = ("impl", "seq_len", "q_len", "heads", "kv_heads", "batch", "head_dim", "dtype", "causal", "mode", "docs")
# The keys a TOML grid file (`--config`) may set.
CONFIG_KEYS = ("preset", *GRID_AXES, "tokens_per_batch", "device", "timing")

_FUSED = ("sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "xformers")
_POW2 = lambda lo, hi: tuple(1 << p for p in range(lo, hi + 1))  # noqa: E731

PRESETS: dict[str, Grid] = {
    "smoke": Grid(
        impls=(
            "naive",
            "sdpa",
            "sdpa-math",
            "sdpa-flash",
            "sdpa-efficient",
            "sdpa-cudnn",
            "xformers",
            "sparse-window:window=32",
            "sparse-block",
            "linear",
            "performer",
            "linformer:k=64",
        ),
        seq_len=(128, 255),
        heads=(2,),
        head_dim=(64,),
        dtype=("float32", "bfloat16"),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        batch=(2,),
        description="CPU sanity run: every implementation family on two small shapes",
    ),
    "quick": Grid(
        impls=("naive", *_FUSED),
        seq_len=(1024, 4096, 16384),
        heads=(16,),
        head_dim=(64, 128),
        dtype=("bfloat16",),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        description="a minute on a GPU: the fused kernels at three lengths, 16K tokens per batch",
    ),
    "default": Grid(
        impls=("naive", *_FUSED),
        seq_len=_POW2(9, 14),
        heads=(8, 16, 32),
        head_dim=(64, 128),
        dtype=("float16", "bfloat16"),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        description="the publishable grid: 512..16K tokens, 16K tokens per batch as in FlashAttention's charts",
    ),
    "efficient": Grid(
        impls=(
            "sdpa-flash",
            "sdpa-cudnn",
            "xformers",
            "sparse-window",
            "sparse-block",
            "linear",
            "linear-fla",
            "performer",
            "linformer",
        ),
        seq_len=_POW2(10, 16),
        heads=(16,),
        head_dim=(64, 128),
        dtype=("bfloat16",),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        tokens_per_batch=65536,
        description="exact fused kernels against sparse, linear, Performer and Linformer attention, 1K..64K tokens",
    ),
    "long": Grid(
        impls=(*_FUSED, "flex"),
        seq_len=_POW2(14, 17),
        heads=(16,),
        head_dim=(128,),
        dtype=("bfloat16",),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        batch=(1,),
        description="long context: 16K..128K tokens, batch 1, the fused kernels and FlexAttention only",
    ),
    "decode": Grid(
        impls=(
            "naive",
            *_FUSED,
            "flex",
            "sparse-window:window=4096",
            "linear:state=carried",
            "performer:state=carried",
        ),
        seq_len=_POW2(10, 17),
        q_len=(1, 16),
        heads=(32,),
        kv_heads=(8,),
        head_dim=(128,),
        dtype=("bfloat16",),
        causal=(True,),
        mode=("fwd",),
        batch=(1, 16),
        description="decoding against a KV cache of 1K..128K tokens: 1 or 16 new queries, 32 query heads sharing 8 "
        "key/value heads (as in Llama 3 8B), head dim 128, batch 1 and 16; exact kernels, a 4K-token "
        "sliding window (as local-attention layers decode), and linear attention and FAVOR+ as recurrent "
        "decoders (their state carried from call to call)",
    ),
    "varlen": Grid(
        impls=(
            "naive",
            "sdpa",
            "sdpa-efficient",
            "sdpa-cudnn",
            "padded",
            "nested-sdpa",
            "flex",
            "xformers",
            "linear-fla",
        ),
        seq_len=(16384, 65536),
        docs=(
            "uniform:128-2048",
            "uniform:512-8192",
            "lengths:8192+256x32",  # a long-tailed mix: one long document and many short ones, per length
            "lengths:32768+256x128",
        ),
        heads=(16,),
        head_dim=(128,),
        dtype=("bfloat16",),
        causal=(False, True),
        mode=("fwd", "fwd+bwd"),
        tokens_per_batch=65536,
        description="packed documents: 16K- and 64K-token packs (64K tokens per batch) of documents uniform in "
        "128..2K and 512..8K, and a long-tailed mix (one long, many of 256); the block-diagonal mask materialized "
        "(naive, sdpa*), documents padded to the longest (padded), and the kernels that take documents",
    ),
}


def default_preset(device: str) -> str:
    return "default" if device == "cuda" else "smoke"
