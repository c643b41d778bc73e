"""docs/cli.md is what scripts/gen-cli-docs.py makes of the parser: an option changed without regenerating fails."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "scripts" / "gen-cli-docs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_docs_are_generated_from_the_current_parser():
    generator = _generator()
    expected = generator.render()
    current = generator.OUT.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(current.splitlines(True), expected.splitlines(True), "docs/cli.md", "generated", n=1)
    )
    assert current == expected, f"docs/cli.md is stale: run `.venv/bin/python scripts/gen-cli-docs.py`\n{diff[:3000]}"


def test_cli_docs_do_not_depend_on_the_terminal_width(monkeypatch):
    generator = _generator()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = generator.render()
    monkeypatch.setenv("COLUMNS", "300")
    assert generator.render() == narrow
