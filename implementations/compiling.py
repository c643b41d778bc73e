"""torch.compile for implementations written as plain PyTorch ops, and the option that asks for it.

Eager PyTorch runs each elementwise step (exp, subtraction, dtype cast) as its own pass over memory;
the ideas behind linear attention and Performer are normally run fused (the Performer paper's JAX
code through XLA). `compile=true` lets a reader see both: compile time lands in the first call,
which the harness records apart from the timed calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Option


def raise_recompile_limit(minimum: int = 256) -> None:
    # One compiled graph per shape is expected in a grid; dynamo's default limit of 8 would make a
    # grid silently fall back to the eager path after the 8th shape.
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < minimum:
            setattr(config, name, minimum)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(text)


COMPILE_OPTION = Option(
    default=False, parse=parse_bool, help="compile: true or false; true runs the computation through torch.compile"
)


def compiled(fn: Callable) -> Callable:
    """`fn` through torch.compile with static shapes: one graph per shape, as FlexAttention here."""
    raise_recompile_limit()
    return torch.compile(fn, dynamic=False)


class CompileOnRequest:
    """Calls `fn` as it is, or (when `enabled`) its compiled version, built on the first call."""

    def __init__(self, fn: Callable, enabled: bool):
        self.fn, self.enabled = fn, enabled
        self._compiled: Callable | None = None

    def __call__(self, *args, **kwargs):
        if not self.enabled:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = compiled(self.fn)
        return self._compiled(*args, **kwargs)

    @property
    def backend(self) -> str:
        return "torch.compile (inductor)" if self.enabled else "eager"
