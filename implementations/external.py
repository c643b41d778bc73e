"""Implementations that other installed packages declare, found through entry points.

A package with its own attention kernel declares, in its pyproject.toml,

    [project.entry-points."attnbench.implementations"]
    my-attention = "my_package.attention:MyAttention"

where the object is an `Implementation` subclass (or any factory(name, **options) returning one; a plain
attention function is wrapped by a factory returning `suite.api.as_implementation(function, name)`).
Once that package is installed, `my-attention` is listed, run, checked against the float64
reference and reported like a built-in, and the registry's tests check it too. The module is
imported only when the implementation is first built; one that fails to import or build, or builds
something else, becomes an implementation that cannot run anything and says why, so a broken
package never stops a run of the others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import Implementation, Unsupported

ENTRY_POINT_GROUP = "attnbench.implementations"
Factory = Callable[..., Implementation]


class Unavailable(Implementation):
    """Stands in for a declared implementation that could not be built; supports nothing, says why."""

    family = "unavailable"

    def __init__(self, name: str, reason: str, **options: Any):
        super().__init__(name)
        self.reason = reason
        self.given_options = options  # unknown to us: accepted so the reason, not an option error, is shown

    def supports(self, case) -> list[str]:
        return [self.reason]

    def __call__(self, q, k, v, *, causal=False):
        raise Unsupported([self.reason])


def _origin(entry_point: EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return f"{entry_point.value} (from {dist.name})" if dist is not None else entry_point.value


# What an entry point must name, said wherever it names something else.
SHOULD_POINT_AT = (
    "it should point at an implementations.Implementation subclass, or at a factory(name, **options) "
    "returning one; a plain attention function (q, k, v, *, causal) -> out becomes one in a factory "
    "that returns suite.api.as_implementation(function, name)"
)


def _not_a_factory(factory: Any, name: str) -> str | None:
    """Why `factory`, not an Implementation subclass, cannot be called as factory(name) (a plain attention
    function, whose call fails with a TypeError that does not say so); None where it can."""
    if isinstance(factory, type) and issubclass(factory, Implementation):
        return None  # its own __init__'s errors say what is wrong
    if not callable(factory):
        return f"names a {type(factory).__name__}, which is not callable"
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read: its call's own error is all there is
        return None
    try:
        signature.bind(name)
    except TypeError:
        shown = getattr(factory, "__qualname__", type(factory).__name__)
        return f"names {shown}{signature}, which cannot be called as factory(name, **options)"
    return None


def _build(entry_point: EntryPoint, name: str, **options: Any) -> Implementation:
    try:
        factory = entry_point.load()
    except Exception as error:  # any import-time failure of a third-party package
        return Unavailable(
            name, f"entry point {_origin(entry_point)} failed to load: {type(error).__name__}: {error}", **options
        )
    if wrong := _not_a_factory(factory, name):
        return Unavailable(name, f"entry point {_origin(entry_point)} {wrong}: {SHOULD_POINT_AT}", **options)
    try:
        impl = factory(name, **options)
    except ValueError:
        raise  # a bad option: reported to the user as for built-ins
    except Exception as error:
        return Unavailable(
            name, f"entry point {_origin(entry_point)} failed to build: {type(error).__name__}: {error}", **options
        )
    if not isinstance(impl, Implementation):
        return Unavailable(
            name,
            f"entry point {_origin(entry_point)} built a {type(impl).__name__}, "
            f"not an implementations.Implementation: {SHOULD_POINT_AT}",
            **options,
        )
    return impl


def declared_by(factory: Factory) -> str | None:
    """`module:object (from distribution)` for a factory `discover` made; None for any other."""
    if isinstance(factory, partial) and factory.func is _build:
        return _origin(factory.args[0])
    return None


def discover(taken: Collection[str]) -> tuple[dict[str, Factory], list[str]]:
    """Factories for the declared implementations, and one line per declaration that was ignored."""
    factories: dict[str, Factory] = {}
    ignored: list[str] = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in taken or entry_point.name in factories:
            ignored.append(f"{entry_point.name}: {_origin(entry_point)} ignored, the name is already taken")
            continue
        factories[entry_point.name] = partial(_build, entry_point)
    return factories, ignored
