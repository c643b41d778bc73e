#!/usr/bin/env python3
"""Writes docs/cli.md from the command line's parser (`suite.cli._parser()`): each subcommand, its help and options.

    python scripts/gen-cli-docs.py           # rewrite docs/cli.md
    python scripts/gen-cli-docs.py --check   # exit 1 when docs/cli.md differs from what the parser gives

The markdown is built from the parser's actions rather than from argparse's help formatter, whose layout depends on
the terminal's width and the Python version: the same parser gives the same file everywhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"
WIDTH = 120
# A wrapped line must not start with what markdown reads as a new block (a list item, a heading, a quote, a table).
_BLOCK_START = re.compile(r"([-+*]\s|\d+[.)]\s|#|>|\|)")


def _wrap(text: str, first: str, rest: str) -> list[str]:
    """Words of `text` in lines of at most WIDTH characters, the first prefixed by `first`, the others by `rest`."""
    lines: list[list[str]] = [[]]
    for word in text.split():
        prefix = first if len(lines) == 1 else rest
        candidate = " ".join([*lines[-1], word])
        if lines[-1] and len(prefix) + len(candidate) > WIDTH:
            lines.append([])
            if _BLOCK_START.match(word + " ") and len(lines[-2]) > 1:
                lines[-1].append(lines[-2].pop())
        lines[-1].append(word)
    return [(first if i == 0 else rest) + " ".join(words) for i, words in enumerate(lines)]


def _escaped(text: str) -> str:
    """Markdown-safe text: angle brackets and asterisks escaped outside `code spans`."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([<>*])", r"\\\1", parts[i])
    return "`".join(parts)


def _help(action: argparse.Action, prog: str) -> str:
    """The action's help with argparse's %-expansion, as `--help` prints it."""
    if not action.help:
        return ""
    params = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(choice) for choice in params["choices"])
    return action.help % params


def _metavar(action: argparse.Action) -> str:
    """What follows the option (or names the positional), as argparse's usage writes it."""
    if action.option_strings and action.nargs == 0:
        return ""
    if action.metavar is not None:
        name = action.metavar
    elif action.choices is not None:
        name = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    else:
        name = action.dest if not action.option_strings else action.dest.upper()
    return {"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]"}.get(action.nargs, name)


def _invocation(action: argparse.Action) -> str:
    names = action.option_strings[-1] if action.option_strings else ""
    return " ".join(part for part in (names, _metavar(action)) if part)


def _usage(prog: str, parser: argparse.ArgumentParser) -> list[str]:
    """A synopsis: optional flags in brackets (mutually exclusive ones joined by |), then positionals."""
    groups = {id(action): group for group in parser._mutually_exclusive_groups for action in group._group_actions}
    tokens, seen_groups = [], set()
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    for action in options:
        group = groups.get(id(action))
        if group is None:
            tokens.append(_invocation(action) if action.required else f"[{_invocation(action)}]")
        elif id(group) not in seen_groups:
            seen_groups.add(id(group))
            joined = " | ".join(_invocation(member) for member in group._group_actions)
            tokens.append(f"({joined})" if group.required else f"[{joined}]")
    tokens += [_metavar(a) for a in parser._actions if not a.option_strings]
    lines = [prog]
    for token in tokens:
        if len(lines[-1]) + 1 + len(token) > WIDTH:
            lines.append(" " * len(prog))
        lines[-1] += " " + token
    return lines


def _option_lines(action: argparse.Action, prog: str) -> list[str]:
    text = _escaped(_help(action, prog))
    if not text and action.default not in (None, argparse.SUPPRESS):
        text = f"default {action.default}"
    if action.required and action.option_strings:
        text = "required; " + text
    aliases = ", ".join(f"`{name}`" for name in action.option_strings[:-1])
    if aliases:
        text += f" (also {aliases})"
    return _wrap(text, f"- `{_invocation(action)}`: ", "  ")


def _subcommand_section(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    prog = f"attnbench {name}"
    lines = [
        f"## {prog}",
        "",
        *_wrap(_escaped(summary[:1].upper() + summary[1:]) + ".", "", ""),
        "",
        "```text",
        *_usage(prog, parser),
        "```",
        "",
    ]
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    if positionals:
        lines += ["Arguments:", ""]
        lines += [line for action in positionals for line in _option_lines(action, prog)] + [""]
    if options:
        lines += ["Options:", ""]
        lines += [line for action in options for line in _option_lines(action, prog)] + [""]
    return lines


def render() -> str:
    """docs/cli.md as the current parser describes the command line."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from suite.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    contents = " · ".join(f"[{name}](#attnbench-{name})" for name in commands.choices)
    lines = [
        "# Command line",
        "",
        "<!-- Generated from suite.cli._parser() by scripts/gen-cli-docs.py; do not edit by hand. -->",
        "",
        *_wrap(
            f"`attnbench` (or `python -m suite`): {_escaped(parser.description or '')} Every subcommand "
            "also takes `-h` / `--help`; `attnbench --version` prints the version. Bad input exits with "
            "status 2 and one line naming the flag, the value and what is allowed.",
            "",
            "",
        ),
        "",
        *_wrap(f"Commands: {contents}", "", ""),
        "",
    ]
    for name, subparser in commands.choices.items():
        lines += _subcommand_section(name, summaries.get(name, ""), subparser)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description="Write docs/cli.md from the attnbench parser.")
    options.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale instead of writing it")
    args = options.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run `python scripts/gen-cli-docs.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
