"""Results files: the row schema, reading and writing, the environment record, names, speed settings."""

from __future__ import annotations

from typing import Any

__all__ = ["load", "read"]


def __getattr__(name: str) -> Any:
    """`suite.results.load` and `.read`, imported when first used: the schema beside them needs no pandas."""
    if name in __all__:
        from . import files

        return getattr(files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
