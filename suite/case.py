"""A benchmark case (one shape, dtype, mask and mode on one device) and grids of them."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MODES = ("fwd", "bwd", "fwd+bwd")
DEVICES = ("cpu", "cuda")
TOKENS_PER_BATCH = 16384  # a length's batch without one given: this many tokens over its length, at least 1
FIXED = "fixed"  # docs: one document per sequence (implementations/documents.py spells it the same)
_DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: str
    causal: bool
    mode: str
    device: str
    kv_heads: int | None = None  # grouped-query attention: fewer key/value heads; None = heads
    # Decoding against a KV cache: the queries are the last q_len of the seq_len positions, and a causal mask
    # is aligned to the last key. None = as many queries as keys (q_len = seq_len is stored as None).
    q_len: int | None = None
    # Packed documents (suite/packing.py): the spec, and each sequence's lengths as drawn from it and the run's seed.
    # The lengths follow from the spec and the seed, so they are no part of the case's identity (its row key).
    docs: str = FIXED
    doc_lens: tuple[tuple[int, ...], ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.q_len == self.seq_len:  # one spelling per case, so rows and their keys match
            object.__setattr__(self, "q_len", None)
        if self.docs is None:  # a row written before packed documents: one per sequence
            object.__setattr__(self, "docs", FIXED)
        if self.doc_lens is not None:  # a row's lists, read back from JSON
            object.__setattr__(self, "doc_lens", tuple(tuple(lengths) for lengths in self.doc_lens))

    @property
    def packed(self) -> bool:
        return self.docs != FIXED

    @property
    def key_value_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def query_len(self) -> int:
        return self.q_len or self.seq_len

    @property
    def torch_dtype(self) -> torch.dtype:
        from implementations import DTYPES  # here, so that a grid is built without importing torch

        return DTYPES[self.dtype]

    @property
    def needs_grad(self) -> bool:
        return self.mode != "fwd"

    @property
    def label(self) -> str:
        mask = "causal" if self.causal else "dense"
        groups = f"-KV{self.kv_heads}" if self.kv_heads and self.kv_heads != self.heads else ""
        queries = f"-Q{self.q_len}" if self.q_len else ""
        packing = f"-docs={self.docs}" if self.packed else ""
        return (
            f"B{self.batch}-H{self.heads}{groups}-N{self.seq_len}{queries}-D{self.head_dim}-"
            f"{_DTYPE_SHORT[self.dtype]}-{mask}-{self.mode}{packing}"
        )

    @classmethod
    def from_row(cls, row: dict) -> Case:
        """The case of a result row (files written before kv_heads, q_len or docs existed lack them)."""
        return cls(**{name: _present(row.get(name)) for name in cls.__dataclass_fields__})


def _present(value: Any) -> Any:
    """A row's value, None where it is missing (a data frame's NaN for a column an old file lacks)."""
    return None if isinstance(value, float) and value != value else value


# The fields that say which case a row measured: its key. A packing's drawn lengths follow from `docs` and the seed.
CASE_FIELDS = tuple(name for name, spec in Case.__dataclass_fields__.items() if spec.compare)


def key_of_row(row: dict[str, Any]) -> tuple:
    """(impl, *case fields): what a row measured; row_key gives a case being run the same key. A row written before
    packed documents has one per sequence."""
    return (row.get("impl"), *(_key_value(row, field) for field in CASE_FIELDS))


def _key_value(row: dict[str, Any], field: str) -> Any:
    return (row.get(field) or FIXED) if field == "docs" else row.get(field)


def row_key(impl_label: str, case: Case) -> tuple:
    """The key of a case being run: the same as a stored row's (key_of_row), so --resume matches."""
    return key_of_row({"impl": impl_label, **asdict(case)})


class GridError(ValueError):
    """A grid whose values do not combine (key/value heads that do not divide the heads, more queries than keys);
    `flag` names the command-line flag to blame, `allowed` what would do."""

    def __init__(self, message: str, flag: str, allowed: str):
        super().__init__(message)
        self.flag, self.allowed = flag, allowed


@dataclass(frozen=True)
class Grid:
    """Lists of values whose cartesian product is the set of cases.

    With `batch=None`, each case's batch is `tokens_per_batch // seq_len` (at least 1), the way
    FlashAttention's published charts keep the work per step constant across lengths. `q_len` values are
    query lengths against each seq_len of keys (None: as many queries as keys).
    """

    impls: tuple[str, ...]
    seq_len: tuple[int, ...]
    heads: tuple[int, ...]
    head_dim: tuple[int, ...]
    dtype: tuple[str, ...]
    causal: tuple[bool, ...]
    mode: tuple[str, ...]
    batch: tuple[int, ...] | None = None
    tokens_per_batch: int = TOKENS_PER_BATCH
    kv_heads: tuple[int | None, ...] = (None,)
    q_len: tuple[int | None, ...] = (None,)
    docs: tuple[str, ...] = (FIXED,)
    description: str = field(default="", compare=False)

    def with_overrides(self, **overrides) -> Grid:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given)

    def cases(self, device: str) -> list[Case]:
        """Each case once, in grid order, even where a list repeats a value (`--seq-len 64,64`)."""
        from .packing import packs

        out = []
        for seq_len, q_len, docs, heads, kv_heads, head_dim, dtype, causal, mode in itertools.product(
            self.seq_len,
            self.q_len,
            self.docs,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.dtype,
            self.causal,
            self.mode,
        ):
            _check_packing(docs, self.seq_len, None if q_len == seq_len else q_len)
            if not packs(docs, seq_len):  # explicit lengths pack the sequences they sum to
                continue
            if kv_heads and heads % kv_heads:
                raise GridError(
                    f"kv_heads {kv_heads} does not divide heads {heads}",
                    "--kv-heads",
                    "divisors of every --heads value",
                )
            if q_len and q_len > seq_len:
                raise GridError(
                    f"q_len {q_len} exceeds seq_len {seq_len}",
                    "--q-len",
                    "at most every --seq-len value: the queries are the last positions of the keys",
                )
            batches = self.batch or (max(1, self.tokens_per_batch // seq_len),)
            for batch in batches:
                out.append(Case(batch, heads, seq_len, head_dim, dtype, causal, mode, device, kv_heads, q_len, docs))
        return list(dict.fromkeys(out))


def _check_packing(docs: str, seq_lens: tuple[int, ...], q_len: int | None) -> None:
    """GridError where explicit lengths sum to none of the lengths, or where a packing goes with --q-len."""
    from .packing import length_problem

    problem = length_problem(docs, seq_lens)
    if problem:
        raise GridError(problem, "--docs", "lengths:A+B+... that sum to a --seq-len, or uniform:MIN-MAX")
    if q_len and docs != FIXED:
        raise GridError(
            f"docs {docs} with q_len {q_len}", "--docs", "fixed with --q-len: decoding packed documents is not measured"
        )
