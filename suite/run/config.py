"""Turning command-line flags and TOML grid files into a validated Grid; every error names its value."""

from __future__ import annotations

import fnmatch
import sys
import tempfile
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import implementations
from implementations import DTYPES, Implementation

from ..case import DEVICES, MODES, TOKENS_PER_BATCH, Grid
from ..measure.settings import TimingPolicy
from .presets import CONFIG_KEYS, PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
_RUN_DTYPES = ("float16", "bfloat16", "float32")


class UsageError(ValueError):
    """Bad input from the user: the message names the flag, the value and what is allowed."""


def comma_items(flag: str, text: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not text or any(not item for item in items):
        raise UsageError(f"{flag}: {text!r} has an empty item (expected a comma-separated list)")
    return items


def positive_ints(flag: str, text: str) -> tuple[int, ...]:
    values = []
    for item in comma_items(flag, text):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or str(value) != item.lstrip("+"):
            raise UsageError(f"{flag}: {item!r} is not a positive integer (allowed: integers >= 1)")
        values.append(value)
    return tuple(values)


def only_one(flag: str, values: tuple):
    """The single value of a flag that names one case (recommend, profile): a list there would be cut silently."""
    if len(values) != 1:
        raise UsageError(f"{flag}: {len(values)} values given ({', '.join(map(str, values))}) (allowed: exactly one)")
    return values[0]


def writable(flag: str, path: str | Path, *, folder: bool = False) -> Path:
    """`path` (a file, or with `folder` a directory), refused before any work where it cannot be written: the
    nearest part of it that exists must be a directory that takes a new file. Creates nothing (the probe file
    is gone when this returns), so a run that is refused leaves nothing behind."""
    path = Path(path)
    if not folder and path.exists() and not path.is_file():  # a folder, a device, a pipe: not a file to write
        raise UsageError(f"{flag}: {str(path)!r} is not a regular file (allowed: a file, or a new path)")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag}: cannot write {str(path)!r}: {str(existing)!r} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(
            f"{flag}: cannot write {str(path)!r}: {str(existing)!r} takes no new files ({error.strerror or error})"
        ) from None
    return path


def threads(flag: str, text: str) -> int:
    """The number of threads torch computes with on a CPU (torch.set_num_threads)."""
    return only_one(flag, positive_ints(flag, text))


def positive_float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{flag}: {text!r} is not a positive number")
    return value


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def byte_size(flag: str, text: str) -> float:
    """`123`, `512MiB`, `8GiB`, `40GB` -> bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _BYTE_UNITS or float(match.group(1)) <= 0:
        raise UsageError(
            f"{flag}: {text!r} is not a size (allowed: a positive number of bytes, optionally with "
            "a unit: KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return float(match.group(1)) * _BYTE_UNITS[unit]


def dtypes(flag: str, text: str) -> tuple[str, ...]:
    values = []
    for item in comma_items(flag, text):
        name = _DTYPE_ALIASES.get(item.lower(), item.lower())
        if name not in _RUN_DTYPES:
            raise UsageError(f"{flag}: unknown dtype {item!r} (allowed: {', '.join(_RUN_DTYPES)})")
        values.append(name)
    return tuple(values)


def modes(flag: str, text: str) -> tuple[str, ...]:
    values = comma_items(flag, text)
    for item in values:
        if item not in MODES:
            raise UsageError(f"{flag}: unknown mode {item!r} (allowed: {', '.join(MODES)})")
    return tuple(values)


def causal_values(flag: str, text: str) -> tuple[bool, ...]:
    choices = {"true": (True,), "false": (False,), "both": (False, True)}
    key = str(text).lower()
    if key not in choices:
        raise UsageError(f"{flag}: {text!r} is not allowed (allowed: true, false, both)")
    return choices[key]


def docs_specs(flag: str, text: str) -> tuple[str, ...]:
    """Packings (suite/packing.py), comma-separated: `fixed`, `uniform:MIN-MAX`, `lengths:A+B+...`."""
    from ..packing import parse_docs

    values = []
    for item in comma_items(flag, text):
        try:
            values.append(parse_docs(item))
        except ValueError as error:
            raise UsageError(f"{flag}: {error}") from None
    return tuple(dict.fromkeys(values))


def gpu_only(flag: str, device: str, why: str) -> str | None:
    """The usage error of asking for a GPU-only measurement (`flag`) in a run on another device; None on a GPU."""
    if device == "cuda":
        return None
    return f"{flag}: this run's device is {device} (allowed: a CUDA device; {why})"


def device_or_default(text: str | None, flag: str = "--device") -> str:
    """--device as given (checked), or the GPU where there is one."""
    import torch

    cuda = torch.cuda.is_available()
    return device(flag, text, cuda) if text else ("cuda" if cuda else "cpu")


def device(flag: str, text: str, cuda_available: bool) -> str:
    if text not in DEVICES:
        raise UsageError(f"{flag}: unknown device {text!r} (allowed: {', '.join(DEVICES)})")
    if text == "cuda" and not cuda_available:
        raise UsageError(f"{flag}: 'cuda' was asked for but no CUDA device is available (allowed here: cpu)")
    return text


def preset(flag: str, text: str) -> Grid:
    if text not in PRESETS:
        raise UsageError(f"{flag}: unknown preset {text!r} (allowed: {', '.join(PRESETS)})")
    return PRESETS[text]


def impl_specs(flag: str, text: str) -> tuple[str, ...]:
    """Comma-separated `NAME[:KEY=VALUE...]`; a NAME with shell wildcards (`sdpa*`, `sparse-*`) stands for every
    implementation it matches, in registry order (the float64 `reference` only when named)."""
    chosen: dict[str, str] = {}  # label -> the first spec with it: `performer` and `performer:features=256` are one
    for spec in (spec for item in comma_items(flag, text) for spec in _expanded(flag, item)):
        label = build_impl(flag, spec).label  # built now, so a bad spec stops the run before it starts
        chosen.setdefault(label, spec)
    return tuple(chosen.values())


def label_matches(label: str, patterns: Collection[str]) -> bool:
    """Whether a row's implementation label (`NAME[:KEY=VALUE...]`) is named by one of `patterns`: the label, or
    the name alone for all its option sets, either with shell wildcards (`sdpa-*`)."""
    name = label.split(":", 1)[0]
    return any(fnmatch.fnmatchcase(label, pattern) or fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def unmatched_pattern(patterns: Collection[str], labels: Collection[str]) -> str | None:
    """The first of `patterns` that names none of `labels` (label_matches), or None: a typo to refuse."""
    return next((pattern for pattern in patterns if not any(label_matches(label, [pattern]) for label in labels)), None)


def _expanded(flag: str, spec: str) -> list[str]:
    name, colon, options = spec.partition(":")
    if not any(char in name for char in "*?["):
        return [spec]
    matched = [n for n in implementations.names() if fnmatch.fnmatchcase(n, name) and n != "reference"]
    if not matched:
        raise UsageError(f"{flag}: {name!r} matches no implementation (known: {', '.join(implementations.names())})")
    return [f"{n}{colon}{options}" for n in matched]


def build_impl(flag: str, spec: str) -> Implementation:
    """`NAME` or `NAME:KEY=VALUE[:KEY=VALUE]` -> an Implementation."""
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag}: option {pair!r} in {spec!r} is not KEY=VALUE")
        if key in options:  # the last would win silently, and the label would hide the first
            raise UsageError(f"{flag}: option {key!r} is given twice in {spec!r} (allowed: once)")
        options[key] = value
    try:
        return implementations.get(name, **options)
    except KeyError as error:
        raise UsageError(f"{flag}: {error.args[0]}") from None
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None


def timing_policy(flag: str, text: str | None, device: str) -> TimingPolicy:
    """The device's timing policy with `KEY=VALUE[,KEY=VALUE...]` applied (`min_repeats=20,budget_s=3`)."""
    policy = TimingPolicy.for_device(device)
    if text is None:
        return policy
    changes: dict[str, str] = {}
    for item in comma_items(flag, text):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise UsageError(f"{flag}: {item!r} is not KEY=VALUE")
        if key in changes:
            raise UsageError(f"{flag}: {key!r} is given twice in {text!r} (allowed: once)")
        changes[key] = value
    try:
        return policy.adjusted(changes)
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None


def as_flag_text(value: Any) -> str:
    """A value, or a list of them, as a flag writes it (`1024,4096`, `true`; a table as `key=value,...`), for the
    flag parsers above: a grid file's values and suite.api's arguments are checked as the command line checks its
    flags."""
    if isinstance(value, dict):
        return ",".join(f"{key}={as_flag_text(v)}" for key, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(as_flag_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def read_config(path: str) -> dict[str, Any]:
    """A TOML grid file as flag-like strings, checked for unknown keys."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"--config: cannot read {path!r}: {error}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"--config: unknown key {unknown[0]!r} in {path!r} (allowed: {', '.join(CONFIG_KEYS)})")

    if data.get("timing") == {}:  # an empty [timing] table changes nothing
        del data["timing"]
    text = {key: as_flag_text(value) for key, value in data.items()}
    if isinstance(data.get("causal"), list):
        both = {as_flag_text(v) for v in data["causal"]}
        text["causal"] = "both" if both == {"true", "false"} else next(iter(both), "")
    return text


def keeps_preset_batch(preset_named: bool, flags: dict[str, str | None]) -> bool:
    """Whether a preset's batch holds, where no batch is given; otherwise each length's batch is tokens_per_batch //
    seq_len, as in suite.api.benchmark, whose grids have no preset. The rule, for `run` and the API alike: a preset's
    batch was chosen for its lengths, so the device's default preset, which a run naming none takes, keeps it only
    while its lengths are measured; a preset named (--preset, or `preset` in a grid file) keeps it whatever the
    lengths, unless tokens_per_batch is given."""
    if flags.get("tokens_per_batch") is not None:
        return False
    return preset_named or flags.get("seq_len") is None


def build_grid(base: Grid, flags: dict[str, str | None], preset_named: bool = True) -> Grid:
    """Apply flag values (strings, None when not given) on top of a preset grid (`preset_named`: False for the
    device's default preset, taken where none was named; see keeps_preset_batch)."""

    def parsed(key: str, flag: str, parse):
        return None if flags.get(key) is None else parse(flag, flags[key])

    if not keeps_preset_batch(preset_named, flags):
        base = replace(base, batch=None, tokens_per_batch=TOKENS_PER_BATCH)
    return base.with_overrides(
        impls=parsed("impl", "--impl", impl_specs),
        seq_len=parsed("seq_len", "--seq-len", positive_ints),
        q_len=parsed("q_len", "--q-len", positive_ints),
        heads=parsed("heads", "--heads", positive_ints),
        kv_heads=parsed("kv_heads", "--kv-heads", positive_ints),
        batch=parsed("batch", "--batch", positive_ints),
        head_dim=parsed("head_dim", "--head-dim", positive_ints),
        dtype=parsed("dtype", "--dtype", dtypes),
        causal=parsed("causal", "--causal", causal_values),
        mode=parsed("mode", "--mode", modes),
        docs=parsed("docs", "--docs", docs_specs),
        tokens_per_batch=None
        if flags.get("tokens_per_batch") is None
        else only_one("tokens_per_batch", positive_ints("tokens_per_batch", flags["tokens_per_batch"])),
    )


__all__ = ["DTYPES", "UsageError", "build_grid", "build_impl", "read_config"]
