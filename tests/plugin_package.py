"""A package that declares implementations through entry points, written as `pip install` would leave it."""

from __future__ import annotations

from pathlib import Path


def write_package(where: Path, module: str, source: str, entry_points: dict[str, str]) -> Path:
    """`module`.py holding `source` in `where`, beside a dist-info declaring `entry_points` (name -> "module:attr")
    in the `attnbench.implementations` group; put `where` on the path to install it."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{module}.py").write_text(source)
    info = where / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[attnbench.implementations]\n{lines}")
    return where
