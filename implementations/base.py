"""What every attention implementation is: a name, a family, its options, what it supports, a call."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from .documents import DocLens, doc_lens_of, mean_pairs
from .flops import MODE_FACTOR, attention_pairs, softmax_attention_flops

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


class CaseLike(Protocol):
    """The shape of a benchmark case as implementations see it (the harness's Case satisfies it)."""

    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: str  # a key of DTYPES
    causal: bool
    mode: str  # "fwd", "bwd" or "fwd+bwd"
    device: str  # "cpu" or "cuda"
    kv_heads: int | None  # grouped-query attention: key/value heads (None: as many as heads)
    q_len: int | None  # queries: the last q_len of the seq_len positions (None: all of them)
    # Optional: packed documents (documents.py); a case without these has one document per sequence.
    # docs: str  -- the packing's spec, "fixed" for one document per sequence
    # doc_lens: tuple[tuple[int, ...], ...] | None  -- each sequence's documents' lengths


class Unsupported(Exception):
    """Raised by a call that cannot run its inputs; one readable reason per problem."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass(frozen=True)
class Option:
    """One tunable of an implementation, settable from the command line as NAME:KEY=VALUE."""

    default: Any
    parse: Callable[[str], Any]
    check: Callable[[Any], str | None] = lambda value: None  # a problem, or None if fine
    help: str = ""


def must_be_positive(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be a positive integer"
    return None


# Every family an implementation may declare. "exact" is checked against softmax attention; each other one is an
# approximation of it, checked against its own exact twin and reported beside the exact ones with its distance
# from softmax attention.
FAMILIES = ("exact", "sparse", "linear", "performer", "low-rank")


class Implementation:
    """An attention implementation in the (batch, heads, seq, head_dim) layout, scale 1/sqrt(head_dim).

    Subclasses set `family` (one of FAMILIES), may declare `options`, override `supports` and `__call__`, and
    prepare whatever they need (compiled kernels, random features) themselves on first use.
    """

    family: ClassVar[str] = "exact"
    options: ClassVar[dict[str, Option]] = {}
    # The accuracy check's absolute allowance (for outputs that vanish in theory) is one rounding unit
    # at softmax attention's scale; a computation whose cancelling terms are larger may say by how much.
    atol_scale: ClassVar[float] = 1.0

    def atol_scale_for(self, case: CaseLike) -> float:
        """`atol_scale` for one case: override where the cancelling terms' size depends on its shape."""
        return self.atol_scale

    def __init__(self, name: str, **options: Any):
        self.name = name
        self.settings = self._resolve_options(options)

    def _resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"{self.name}: unknown option {unknown[0]!r} (allowed: {allowed})")
        settings = {key: option.default for key, option in self.options.items()}
        for key, value in given.items():
            option = self.options[key]
            if isinstance(value, str):
                try:
                    value = option.parse(value)
                except ValueError:
                    raise ValueError(f"{self.name}: option {key}={given[key]!r} is not valid ({option.help})") from None
            problem = option.check(value)
            if problem:
                raise ValueError(f"{self.name}: option {key}={given[key]!r} {problem} ({option.help})")
            settings[key] = value
        return settings

    @property
    def label(self) -> str:
        """The name plus every option that differs from its default, e.g. `performer:features=64`."""
        changed = [f"{k}={v}" for k, v in sorted(self.settings.items()) if v != self.options[k].default]
        return ":".join([self.name, *changed])

    def supports(self, case: CaseLike) -> list[str]:
        """Why this implementation cannot run `case`; empty when it can."""
        return []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def session(self) -> contextlib.AbstractContextManager:
        """Set-up a program does once around many calls, not in each (forcing an SDPA backend). The harness
        enters it around all of a row's calls, so its cost stays out of the timed ones; a call made outside
        it must still do the same thing (by entering the set-up itself)."""
        return contextlib.nullcontext()

    def visible_pairs(self, case: CaseLike) -> float:
        """Query-key pairs of one sequence and head that contribute to the output: N² dense, N(N+1)/2 causal; with
        q_len queries (the last of the N positions) Q·N dense, and causal each query sees the keys up to its own.
        Packed documents: the pairs within documents (Σ d², Σ d(d+1)/2), averaged over the batch's sequences."""
        doc_lens = doc_lens_of(case)
        if doc_lens is not None:
            return mean_pairs(doc_lens, case.causal)
        return attention_pairs(case.q_len or case.seq_len, case.seq_len, case.causal)

    def forward_flops(self, case: CaseLike) -> float:
        """FLOPs of the forward maths (see implementations/flops.py); softmax attention over the visible pairs by
        default."""
        return softmax_attention_flops(case.batch, case.heads, self.visible_pairs(case), case.head_dim)

    def backward_flops(self, case: CaseLike) -> float:
        """FLOPs of the backward maths: the forward's times 2.5 by default (FlashAttention's convention)."""
        return MODE_FACTOR["bwd"] * self.forward_flops(case)

    def carried_state_bytes(self, case: CaseLike) -> int | None:
        """For a decoding call that reads a state of the keys before its first query, carried between calls, in
        place of those keys and values (a recurrent decoder): that state's bytes. None: it reads the cache."""
        return None

    def exact_twin(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        doc_lens: DocLens | None = None,
    ) -> torch.Tensor:
        """The same maths in float64, differentiable: what this implementation is checked against.

        For exact implementations that is softmax attention (within documents, given `doc_lens`); approximate
        families override it.
        """
        from .reference import reference_attention

        return reference_attention(q, k, v, causal=causal, doc_lens=doc_lens)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """The (…, N, N) float64 weights this implementation applies to V (for attention-map charts)."""
        from .reference import softmax_weights

        return softmax_weights(q, k, causal=causal)

    def backend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> str | None:
        """Which kernel this call dispatches to, for implementations that choose for themselves."""
        return None

    def setup_ms(self) -> float | None:
        """Milliseconds of set-up the last inputs' layout needed outside the timed calls (a document block mask,
        built once per packing as a training step builds it once for all its layers), or None for none."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def dtype_reasons(case: CaseLike, allowed: set[str]) -> list[str]:
    if case.dtype in allowed:
        return []
    return [f"dtype={case.dtype} (supported: {', '.join(sorted(allowed))})"]


def is_grouped(case: CaseLike) -> bool:
    kv_heads = getattr(case, "kv_heads", None)
    return bool(kv_heads) and kv_heads != case.heads


def grouped_query_reasons(case: CaseLike, why: str) -> list[str]:
    """For implementations without grouped-query attention."""
    if not is_grouped(case):
        return []
    return [f"kv_heads={case.kv_heads} with heads={case.heads} (supported: kv_heads = heads; {why})"]


def expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention the plain way: repeat each key/value head for its group of query heads."""
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def query_len(case: CaseLike) -> int:
    """How many queries a case has: the last `q_len` of its `seq_len` positions (all of them when q_len is None)."""
    return getattr(case, "q_len", None) or case.seq_len


def has_fewer_queries(case: CaseLike) -> bool:
    """A decoding-style case: fewer queries than keys (a KV cache), causal masks aligned to the last key."""
    return query_len(case) != case.seq_len


def query_length_reasons(case: CaseLike, why: str) -> list[str]:
    """For implementations that need as many queries as keys."""
    if not has_fewer_queries(case):
        return []
    return [f"q_len={case.q_len} with seq_len={case.seq_len} (supported: q_len = seq_len; {why})"]


def query_offset(q: torch.Tensor, k: torch.Tensor) -> int:
    """The position of the first query among the keys: queries are the last q.shape[-2] positions."""
    return k.shape[-2] - q.shape[-2]


def device_reasons(case: CaseLike, allowed: set[str]) -> list[str]:
    if case.device in allowed:
        return []
    return [f"device={case.device} (supported: {', '.join(sorted(allowed))})"]
