"""The registry of attention implementations: one entry per implementation, nothing else.

Adding an implementation = one module with an `Implementation` subclass + one line in `REGISTRY`.
This package never imports the harness (`suite`): every implementation is usable on its own.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .base import DTYPES, CaseLike, Implementation, Option, Unsupported
from .linear import LinearAttention
from .linear_fla import FlaLinearAttention
from .naive import NaiveAttention
from .performer import PerformerAttention
from .reference import ReferenceAttention, reference_attention
from .sdpa import SdpaAttention
from .sparse_block import BlockSparseAttention
from .sparse_window import SlidingWindowAttention
from .xformers_memeff import XformersAttention

# name -> factory(name, **options)
REGISTRY: dict[str, Callable[..., Implementation]] = {
    "reference": ReferenceAttention,
    "naive": NaiveAttention,
    "sdpa": SdpaAttention,
    "sdpa-math": partial(SdpaAttention, backend="math"),
    "sdpa-flash": partial(SdpaAttention, backend="flash"),
    "sdpa-efficient": partial(SdpaAttention, backend="efficient"),
    "sdpa-cudnn": partial(SdpaAttention, backend="cudnn"),
    "xformers": XformersAttention,
    "sparse-window": SlidingWindowAttention,
    "sparse-block": BlockSparseAttention,
    "linear": LinearAttention,
    "linear-fla": FlaLinearAttention,
    "performer": PerformerAttention,
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str, **options: Any) -> Implementation:
    """A fresh implementation by registry name; raises KeyError listing the valid names."""
    if name not in REGISTRY:
        raise KeyError(f"unknown implementation {name!r} (valid: {', '.join(REGISTRY)})")
    return REGISTRY[name](name, **options)


__all__ = [
    "DTYPES", "CaseLike", "Implementation", "Option", "REGISTRY", "Unsupported",
    "get", "names", "reference_attention",
]
