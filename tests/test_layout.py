"""The package's shape: subpackages that show the pipeline, and imports that flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "suite"
MOST_TOP_LEVEL_MODULES = 12  # beyond a dozen, a reader cannot see the pipeline in the folder listing


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function, as absolute dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _area(module: str) -> str | None:
    """The subpackage of suite a module belongs to (`suite.run.runner` and `suite.run` -> `run`); None for the
    modules at the top of suite."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "suite" and (SUITE / parts[1]).is_dir() else None


def test_suite_keeps_few_top_level_modules():
    modules = sorted(path.name for path in SUITE.glob("*.py"))
    assert len(modules) <= MOST_TOP_LEVEL_MODULES, modules


@pytest.mark.parametrize("package", sorted(p.name for p in SUITE.iterdir() if (p / "__init__.py").is_file()))
def test_every_subpackage_says_what_it_holds(package):
    assert ast.get_docstring(ast.parse((SUITE / package / "__init__.py").read_text())), package


def test_no_import_cycles_between_subpackages():
    edges: dict[str, set[str]] = {}
    for path in _sources(SUITE):
        source = _area(_module_name(path))
        for target in map(_area, _imports(path)):
            if source and target and target != source:
                edges.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in edges.get(start, ())
        )

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, targets in edges.items() for b in targets if reaches(b, a, {b}))
    assert not cycles, cycles


def test_only_the_command_line_imports_the_commands():
    allowed = {"suite.cli", "suite.__main__"}
    offenders = [
        str(path.relative_to(ROOT))
        for path in _sources(SUITE)
        if _area(_module_name(path)) != "commands"
        and _module_name(path) not in allowed
        and any(name.startswith("suite.commands") for name in _imports(path))
    ]
    assert not offenders


def test_implementations_never_import_the_harness():
    offenders = [
        str(path.relative_to(ROOT))
        for path in _sources(ROOT / "implementations")
        if any(name == "suite" or name.startswith("suite.") for name in _imports(path))
    ]
    assert not offenders
