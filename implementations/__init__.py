"""The registry of attention implementations: one entry per implementation, nothing else.

Adding an implementation = one module with an `Implementation` subclass + one line in `REGISTRY`.
Other installed packages can add theirs through entry points (see `external.py`).
This package never imports the harness (`suite`): every implementation is usable on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .base import DTYPES, CaseLike, Implementation, Option, Unsupported
from .external import declared_by, discover
from .flex import FlexAttention
from .linear import LinearAttention
from .linear_fla import FlaLinearAttention
from .linformer import LinformerAttention
from .naive import NaiveAttention
from .padded import PaddedDocumentsAttention
from .performer import PerformerAttention
from .reference import ReferenceAttention, reference_attention
from .sdpa import SdpaAttention
from .sdpa_nested import NestedSdpaAttention
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
    "padded": PaddedDocumentsAttention,
    "nested-sdpa": NestedSdpaAttention,
    "xformers": XformersAttention,
    "flex": FlexAttention,
    "sparse-window": SlidingWindowAttention,
    "sparse-block": BlockSparseAttention,
    "linear": LinearAttention,
    "linear-fla": FlaLinearAttention,
    "performer": PerformerAttention,
    "linformer": LinformerAttention,
}


_declared: tuple[dict[str, Callable[..., Implementation]], list[str]] | None = None


def _external() -> dict[str, Callable[..., Implementation]]:
    """Implementations declared by installed packages (entry points), looked up once per process."""
    global _declared
    if _declared is None:
        _declared = discover(taken=REGISTRY)
    return _declared[0]


def ignored_declarations() -> list[str]:
    """Entry points that were not registered, and why (e.g. a name a built-in already has)."""
    _external()
    return list(_declared[1]) if _declared else []


def names() -> list[str]:
    """Built-ins in registry order, then those installed packages declare."""
    return [*REGISTRY, *(name for name in _external() if name not in REGISTRY)]


def origin(name: str) -> str | None:
    """Which installed package declared `name`; None for a built-in (or an unknown name)."""
    return None if name in REGISTRY else declared_by(_external().get(name))


def get(name: str, **options: Any) -> Implementation:
    """A fresh implementation by name; raises KeyError listing the valid names."""
    factory = REGISTRY.get(name) or _external().get(name)
    if factory is None:
        raise KeyError(f"unknown implementation {name!r} (valid: {', '.join(names())})")
    return factory(name, **options)


__all__ = [
    "DTYPES",
    "CaseLike",
    "Implementation",
    "Option",
    "REGISTRY",
    "Unsupported",
    "get",
    "ignored_declarations",
    "names",
    "origin",
    "reference_attention",
]
