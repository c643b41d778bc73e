"""Which (batch, key/value head) slices the float64 accuracy check covers.

The float64 reference costs what exact attention costs, in float64: at 32K–64K tokens it takes far
longer than the implementation under test. Attention kernels treat every (batch, head) slice
alike, so when checking all of them would exceed the budget, the check covers as many as fit,
spread evenly and always including the first and the last (where offset and bounds bugs show),
instead of being skipped. Each slice brings its whole group of query heads, so the gradients of
shared key/value heads are complete. The row records the scope; the conformance check
(`attnbench check`, the tests) always covers every slice of its small shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..case import Case
from ..measure.flops import softmax_case_flops


@dataclass(frozen=True)
class CheckedSlices:
    pairs: tuple[tuple[int, int], ...]  # (batch index, key/value head index)
    total: int  # batch × key/value heads
    group: int  # query heads per key/value head

    @classmethod
    def choose(cls, case: Case, budget_flops: float) -> CheckedSlices | None:
        """Every slice if the reference fits the budget, else as many as fit; None if not even one does."""
        total = case.batch * case.key_value_heads
        fit = int(budget_flops // (softmax_case_flops(case) / total))
        if fit < 1:
            return None
        if fit >= total:
            indices = list(range(total))
        elif fit == 1:
            indices = [total - 1]
        else:
            indices = sorted({round(i * (total - 1) / (fit - 1)) for i in range(fit)})
        pairs = tuple(divmod(index, case.key_value_heads) for index in indices)
        return cls(pairs, total, case.heads // case.key_value_heads)

    @property
    def complete(self) -> bool:
        return len(self.pairs) == self.total

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) query-side tensor (q, out, dq, dout) -> (slices, group, N, D)."""
        if self.complete:
            return x
        return torch.stack([x[b, j * self.group : (j + 1) * self.group] for b, j in self.pairs])

    def key_values(self, x: torch.Tensor) -> torch.Tensor:
        """(B, KV, N, D) key/value-side tensor (k, v, dk, dv) -> (slices, 1, N, D)."""
        if self.complete:
            return x
        return torch.stack([x[b, j : j + 1] for b, j in self.pairs])

    def documents(self, doc_lens: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        """Each checked slice's documents' lengths: those of its batch sequence."""
        if self.complete:
            return doc_lens
        return tuple(doc_lens[b] for b, _ in self.pairs)

    def select(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """out/dq/dk/dv of the whole case -> the same tensors for the checked slices."""
        return {name: (self.key_values if name in ("dk", "dv") else self.queries)(t) for name, t in tensors.items()}

    def describe(self) -> str | None:
        """For the result row: None when every slice is checked."""
        if self.complete:
            return None
        return f"{len(self.pairs)} of {self.total} (batch, key/value head) slices"
