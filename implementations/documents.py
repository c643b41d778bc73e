"""Packed documents: each sequence of a batch holds documents back to back, and attention stays within a document.

`doc_lens` gives the documents' lengths, one tuple per batch sequence, each summing to the sequence's length. A
query sees the keys of its own document only (a block-diagonal mask); causal, only those up to its own position.
An implementation that runs packed cases takes `doc_lens=` in its call; the harness passes it only for packed
cases, so a call without it is today's one document per sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .flops import attention_pairs

DocLens = tuple[tuple[int, ...], ...]
FIXED = "fixed"  # one document per sequence: the packing of every case before packed batches existed


def is_packed(case: object) -> bool:
    """Whether a case packs several documents into each sequence (its `docs` is not `fixed`)."""
    return getattr(case, "docs", None) not in (None, FIXED)


def doc_lens_of(case: object) -> DocLens | None:
    """The case's documents' lengths, or None for one document per sequence."""
    if not is_packed(case):
        return None
    lens = getattr(case, "doc_lens", None)
    if lens is None:
        raise ValueError(f"docs={case.docs}: the case has no doc_lens (its packing was not drawn)")
    return lens


def packing_reasons(case: object, why: str) -> list[str]:
    """For implementations without packed documents."""
    if not is_packed(case):
        return []
    return [f"docs={case.docs} (supported: fixed, one document per sequence; {why})"]


def document_pairs(lengths: Sequence[int], causal: bool) -> int:
    """Visible query-key pairs of one packed sequence: Σ d² dense, Σ d(d+1)/2 causal."""
    return sum(attention_pairs(length, length, causal) for length in lengths)


def mean_pairs(doc_lens: DocLens, causal: bool) -> float:
    """Visible pairs per sequence, averaged over the batch (sequences hold different documents)."""
    return sum(document_pairs(lengths, causal) for lengths in doc_lens) / len(doc_lens)


def document_ids(doc_lens: DocLens, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, N) long: the index of each position's document within its sequence."""
    return torch.stack(
        [
            torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
            for lengths in doc_lens
        ]
    ).to(device)


def same_document(doc_lens: DocLens, device: torch.device | str = "cpu") -> Callable[..., torch.Tensor]:
    """mask(query_pos (c, 1), key_pos (1, n)) -> (B, 1, c, n) bool, True where both are in one document: the
    reference's mask argument, broadcast over heads."""
    ids = document_ids(doc_lens, device)

    def mask(query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        return (ids[:, query_pos] == ids[:, key_pos])[:, None]

    return mask


def visible_mask(doc_lens: DocLens, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 1, N, N) bool, True where a query sees a key: the block-diagonal mask, causal within each block."""
    ids = document_ids(doc_lens, device)
    visible = ids[:, :, None] == ids[:, None, :]
    if causal:
        visible = visible.tril()
    return visible[:, None]


def per_document(
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_lens: DocLens,
) -> torch.Tensor:
    """`attend` on each document of each sequence as a batch of one, concatenated back: any attention's packed
    form, its state starting afresh at each document (as many queries as keys)."""
    sequences = []
    for index, lengths in enumerate(doc_lens):
        parts = zip(*(t[index : index + 1].split(list(lengths), dim=-2) for t in (q, k, v)))
        sequences.append(torch.cat([attend(*part) for part in parts], dim=-2))
    return torch.cat(sequences, dim=0)


class VisibleMaskCache:
    """The last packing's (B, 1, N, N) visible mask (with `hidden`, its complement), built on its first call:
    building a mask is set-up, not attention, and a model builds it once per batch for all its layers."""

    def __init__(self, hidden: bool = False) -> None:
        self.hidden = hidden
        self._key: tuple | None = None
        self._mask: torch.Tensor | None = None

    def get(self, doc_lens: DocLens, causal: bool, device: torch.device) -> torch.Tensor:
        key = (doc_lens, causal, device)
        if self._key != key:
            self._key, self._mask = None, None  # the old mask goes before the new one is built
            mask = visible_mask(doc_lens, causal, device)
            self._mask, self._key = (mask.logical_not_() if self.hidden else mask), key
        return self._mask
