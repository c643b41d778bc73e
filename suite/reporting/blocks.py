"""A report as a list of simple blocks, rendered once to Markdown and once to self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path  # relative to the report folder
    alt: str


@dataclass
class Report:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for block in report.blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{block.alt}]({block.path.as_posix()})", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0 1.5em}
code{background:#f3f3f3;padding:0 3px}.nobr{white-space:nowrap}"""
_CODE_SPAN = re.compile(r"`([^`]+)`")


def _code_html(code: str) -> str:
    """A code span that breaks at spaces and after commas only: a browser would also break after a hyphen, and
    `--seq-len` split over two lines reads as two flags."""
    words = []
    for word in code.split(" "):
        pieces = [piece for piece in re.split(r"(?<=,)", word) if piece]
        words.append("<wbr>".join(f"<span class='nobr'>{html.escape(piece)}</span>" for piece in pieces))
    return f"<code>{' '.join(words)}</code>"


def inline_html(text: str) -> str:
    """Text as HTML, its Markdown code spans (`sdpa`) as code, as report.md shows them."""
    parts = _CODE_SPAN.split(str(text))
    return "".join(_code_html(part) if index % 2 else html.escape(part) for index, part in enumerate(parts))


def to_html(report: Report, folder: Path) -> str:
    """One page; every chart embedded as base64 so the file stands alone."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(report.title)}</h1>",
    ]
    for block in report.blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{inline_html(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode((folder / block.path).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(block.alt)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
