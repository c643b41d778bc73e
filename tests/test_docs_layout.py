"""The documentation's shape: a short README that starts with the commands, lines a reader need not scroll, and
relative links and anchors that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from tests import doc_blocks

ROOT = doc_blocks.ROOT
README_LINES = 150
LINE_LENGTH = 120
FIRST_COMMAND_BY_LINE = 30
_LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*\n?(\S+)", re.MULTILINE)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than hyphens dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {_anchor(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_readme_is_short_and_starts_with_the_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_LINES
    first = doc_blocks.blocks(ROOT / "README.md")[0]
    assert first.line <= FIRST_COMMAND_BY_LINE and first.commands == ["bash scripts/bench.sh"]


def test_no_documentation_line_is_longer_than_the_limit():
    long = [
        f"{page.relative_to(ROOT)}:{number} ({len(line)})"
        for page in doc_blocks.pages()
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if len(line) > LINE_LENGTH
    ]
    assert not long


def test_relative_links_lead_to_files_and_headings():
    broken = []
    for page in doc_blocks.pages():
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
        for match in _LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken
