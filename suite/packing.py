"""How a case packs documents into its sequences (`--docs`): the spec, checked, and the lengths drawn from it.

    fixed              one document per sequence (today's cases)
    uniform:MIN-MAX    lengths drawn uniformly from MIN..MAX, the last one cut to fill the sequence
    lengths:A+B+C      these lengths, which must sum to the sequence's length (`256x32`: 32 documents of 256);
                       with several sequence lengths, a spec packs those it sums to, and must sum to one

Each of a case's batch sequences is packed independently. The lengths are drawn from the run's seed, the spec and
the sequence length alone, so every row of a case, a resumed run and another batch size (its first sequences) get
the same packing.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from .case import FIXED

if TYPE_CHECKING:
    from implementations.documents import DocLens

    from .case import Case

SPEC_FORMS = (
    "fixed, uniform:MIN-MAX (1 <= MIN <= MAX) or lengths:A+B+... (positive, LxK for K of L, summing to "
    "a sequence length)"
)


def parse_docs(text: str) -> str:
    """The spec in its one spelling (`uniform:128-2048`); ValueError saying what is wrong and what is allowed."""
    spec = "".join(str(text).split()).lower()
    kind, _, rest = spec.partition(":")
    if spec == FIXED:
        return FIXED
    if kind == "uniform":
        match = re.fullmatch(r"(\d+)-(\d+)", rest)
        if match and 1 <= int(match.group(1)) <= int(match.group(2)):
            return f"uniform:{int(match.group(1))}-{int(match.group(2))}"
    elif kind == "lengths":
        lengths = _lengths(rest)
        if lengths:
            return "lengths:" + _spelled(lengths)
    elif kind != FIXED:
        raise ValueError(f"{text!r} is not a packing: unknown distribution {kind!r} (allowed: {SPEC_FORMS})")
    raise ValueError(f"{text!r} is not a packing (allowed: {SPEC_FORMS})")


def _lengths(text: str) -> tuple[int, ...] | None:
    """`8192+256x32` -> the lengths, or None where an item is not a positive length (L, or LxK for K of L)."""
    lengths: list[int] = []
    for item in text.split("+"):
        match = re.fullmatch(r"(\d+)(?:x(\d+))?", item)
        if not match or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
            return None
        lengths += [int(match.group(1))] * int(match.group(2) or 1)
    return tuple(lengths)


def _spelled(lengths: tuple[int, ...]) -> str:
    """Runs of one length as LxK, so that a spec has one spelling however it was written."""
    runs: list[list[int]] = []
    for length in lengths:
        if runs and runs[-1][0] == length:
            runs[-1][1] += 1
        else:
            runs.append([length, 1])
    return "+".join(f"{length}x{count}" if count > 1 else str(length) for length, count in runs)


def packs(spec: str, seq_len: int) -> bool:
    """Whether `spec` packs sequences of `seq_len` tokens: every spec but explicit lengths of another sum."""
    return not spec.startswith("lengths:") or sum(_explicit(spec)) == seq_len


def length_problem(spec: str, seq_lens: tuple[int, ...]) -> str | None:
    """Why explicit lengths pack none of the grid's sequence lengths, or None."""
    if any(packs(spec, seq_len) for seq_len in seq_lens):
        return None
    lengths = ", ".join(map(str, seq_lens))
    return f"docs {spec} sum to {sum(_explicit(spec))} tokens, not seq_len {lengths}"


def _explicit(spec: str) -> tuple[int, ...]:
    return _lengths(spec.removeprefix("lengths:")) or ()


def draw_doc_lens(spec: str, batch: int, seq_len: int, seed: int) -> DocLens | None:
    """Each batch sequence's document lengths (None for `fixed`), the same for the same arguments anywhere."""
    if spec == FIXED:
        return None
    if spec.startswith("lengths:"):
        return (_explicit(spec),) * batch
    low, high = (int(part) for part in spec.removeprefix("uniform:").split("-"))
    generator = random.Random(f"{seed}:{spec}:{seq_len}")  # a string seed is hashed the same in every process
    return tuple(_uniform_pack(generator, low, high, seq_len) for _ in range(batch))


def _uniform_pack(generator: random.Random, low: int, high: int, seq_len: int) -> tuple[int, ...]:
    lengths, filled = [], 0
    while filled < seq_len:
        length = min(generator.randint(low, high), seq_len - filled)  # the last document is cut to fill
        lengths.append(length)
        filled += length
    return tuple(lengths)


def with_doc_lens(case: Case, seed: int) -> Case:
    """The case with its packing drawn from the run's seed (as it is, for `fixed` or a packing already drawn)."""
    if case.docs == FIXED or case.doc_lens is not None:
        return case
    return replace(case, doc_lens=draw_doc_lens(case.docs, case.batch, case.seq_len, seed))
