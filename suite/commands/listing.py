"""`attnbench list`: the implementations, their family, and whether they can run here and why not."""

from __future__ import annotations

import argparse

from .shape import representative_case


def add_to(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("list", help="implementations, their family and whether they can run here")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(handler=handle)


def _listed_reasons(impl, case) -> list[str]:
    """`impl.supports(case)`, or the exception it raised as the reason: an installed package's bug must not hide
    the rest of the list."""
    try:
        return impl.supports(case)
    except Exception as error:  # noqa: BLE001
        return [f"supports() raised {type(error).__name__}: {error}"]


def handle(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import implementations

    from ..run import config

    device = config.device_or_default(args.device)
    case = representative_case(device)
    print(f"implementations on {device} (checked with {case.label}):")
    for name in implementations.names():
        impl = implementations.get(name)
        reasons = _listed_reasons(impl, case)
        verdict = "runs" if not reasons else "cannot run: " + "; ".join(reasons)
        print(f"  {name:<16} {impl.family:<10} {verdict}")
        # One query against the keys, causal: whether it decodes too, where it runs at all.
        decoding = _listed_reasons(impl, replace(case, q_len=1, causal=True)) if not reasons else []
        if decoding:
            print(f"  {'':<16} {'':<10} not with fewer queries than keys (--q-len): {'; '.join(decoding)}")
        declared_by = implementations.origin(name)
        if declared_by:
            print(f"  {'':<16} {'':<10} declared by {declared_by}")
        if impl.options:
            defaults = ", ".join(f"{key}={option.default}" for key, option in impl.options.items())
            print(f"  {'':<16} {'':<10} options ({name}:KEY=VALUE): {defaults}")
    for line in implementations.ignored_declarations():
        print(f"  ignored entry point {line}")
    return 0
