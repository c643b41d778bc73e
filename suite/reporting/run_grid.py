"""What grid a run measured, in words: the preset it named, or `custom` and the flags that changed the grid."""

from __future__ import annotations

from pathlib import Path

# The `attnbench run` flags that choose cases; the others (--out, --device, --timing...) change how a grid is
# measured, not which cases it holds. --causal takes an optional value, --no-causal none.
GRID_FLAGS = (
    "--impl",
    "--seq-len",
    "--q-len",
    "--heads",
    "--kv-heads",
    "--batch",
    "--head-dim",
    "--dtype",
    "--causal",
    "--no-causal",
    "--mode",
)
_OPTIONAL_VALUE, _NO_VALUE = ("--causal",), ("--no-causal",)


def _grid_flag(token: str) -> str | None:
    """The grid flag `token` names, in full or by the unique prefix argparse accepted; None for any other."""
    if not token.startswith("--"):
        return None
    if token in GRID_FLAGS:
        return token
    # A recorded argv was accepted by argparse, so a prefix it took names one flag of all the run's flags, and a
    # prefix of exactly one grid flag is that flag.
    matches = [flag for flag in GRID_FLAGS if flag.startswith(token)]
    return matches[0] if len(matches) == 1 else None


def grid_flags(argv: list[str]) -> list[str]:
    """The grid flags in a recorded `argv` with their values, as typed but with each flag named in full."""
    words: list[str] = []
    position = 0
    while position < len(argv):
        name, equals, value = str(argv[position]).partition("=")
        flag = _grid_flag(name)
        position += 1
        if flag is None:
            continue
        if equals:
            words.append(f"{flag} {value}")
        elif flag in _NO_VALUE or (
            flag in _OPTIONAL_VALUE and (position == len(argv) or str(argv[position]).startswith("-"))
        ):
            words.append(flag)
        elif position < len(argv):
            words.append(f"{flag} {argv[position]}")
            position += 1
    return words


def grid_words(run: dict) -> str:
    """`smoke` for a preset run as it is defined; `custom: <flags> (the rest as smoke)` where flags changed its
    cases; the config file that set a grid; `custom` for a grid given through the Python API; `–` when unknown."""
    if run.get("amends"):
        return f"amendment: {run['amends']}"
    flags = " ".join(grid_flags(list(run.get("argv") or [])))
    if run.get("config"):
        return f"config {Path(run['config']).name}" + (f" with `{flags}`" if flags else "")
    preset = run.get("preset")
    if preset and flags:
        return f"custom: `{flags}` (the rest as {preset})"
    if preset:
        return str(preset)
    return "custom" if run.get("grid") else "–"
