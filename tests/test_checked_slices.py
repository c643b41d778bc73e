"""Choosing the (batch, key/value head) slices the float64 check covers."""

from __future__ import annotations

import torch

from suite.case import Case
from suite.check.checked_slices import CheckedSlices
from suite.measure.flops import softmax_case_flops

CASE = Case(3, 8, 64, 16, "float32", True, "fwd+bwd", "cpu", 4)  # 12 (batch, kv head) slices, groups of 2


def _budget(slices: float) -> float:
    return slices * softmax_case_flops(CASE) / 12


def test_every_slice_when_the_budget_allows():
    chosen = CheckedSlices.choose(CASE, _budget(12))
    assert chosen.complete and chosen.describe() is None and len(chosen.pairs) == 12


def test_as_many_as_fit_spread_evenly_with_first_and_last():
    chosen = CheckedSlices.choose(CASE, _budget(4.5))
    assert chosen.pairs == ((0, 0), (1, 0), (1, 3), (2, 3))  # flat indices 0, 4, 7, 11 of 3 × 4
    assert chosen.describe() == "4 of 12 (batch, key/value head) slices"
    assert CheckedSlices.choose(CASE, _budget(1)).pairs == ((2, 3),)
    assert CheckedSlices.choose(CASE, _budget(0.9)) is None


def test_slices_carry_their_whole_query_group():
    chosen = CheckedSlices.choose(CASE, _budget(2))
    q = torch.arange(3 * 8).reshape(3, 8, 1, 1).expand(3, 8, 64, 16)
    k = torch.arange(3 * 4).reshape(3, 4, 1, 1).expand(3, 4, 64, 16)
    assert chosen.queries(q)[:, :, 0, 0].tolist() == [[0, 1], [22, 23]]  # batch 0 heads 0-1; batch 2 heads 6-7
    assert chosen.key_values(k)[:, :, 0, 0].tolist() == [[0], [11]]
    picked = chosen.select({"out": q, "dk": k})
    assert picked["out"].shape == (2, 2, 64, 16) and picked["dk"].shape == (2, 1, 64, 16)
