"""Inputs for a case and the call that gets timed for each mode (fwd, bwd, fwd+bwd)."""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from implementations import Implementation

from .case import Case


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # upstream gradient for bwd modes

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.dout))


def case_seed(case: Case, seed: int) -> int:
    """A seed per case, stable across runs and machines."""
    return zlib.crc32(f"{seed}:{case.label}".encode())


def random_tensors(case: Case, generator_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard-normal q and dout (batch, heads, seq, head_dim), k and v with the key/value heads."""
    generator = torch.Generator(device=case.device).manual_seed(generator_seed)
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    kv_shape = (case.batch, case.key_value_heads, case.seq_len, case.head_dim)
    q, k, v, dout = (torch.randn(s, generator=generator, device=case.device, dtype=case.torch_dtype)
                     for s in (shape, kv_shape, kv_shape, shape))
    return q, k, v, dout


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """The case's inputs, seeded per case (see case_seed); q, k, v require grad in backward modes."""
    q, k, v, dout = random_tensors(case, case_seed(case, seed))
    for t in (q, k, v):
        t.requires_grad_(case.needs_grad)
    return Inputs(q, k, v, dout)


class Workload:
    """One implementation on one case's inputs: a checked call, and the call to time."""

    def __init__(self, impl: Implementation, case: Case, inputs: Inputs):
        self.impl, self.case, self.inputs = impl, case, inputs
        self._graph_output: torch.Tensor | None = None

    def _forward(self) -> torch.Tensor:
        i = self.inputs
        return self.impl(i.q, i.k, i.v, causal=self.case.causal)

    def clear_grads(self) -> None:
        for t in (self.inputs.q, self.inputs.k, self.inputs.v):
            t.grad = None

    def checked_call(self) -> dict[str, torch.Tensor]:
        """One full forward (and backward) whose results are compared with the reference."""
        i = self.inputs
        if not self.case.needs_grad:
            with torch.no_grad():
                return {"out": self._forward()}
        self.clear_grads()
        out = self._forward()
        out.backward(i.dout)
        return {"out": out.detach(), "dq": i.q.grad, "dk": i.k.grad, "dv": i.v.grad}

    def timed_call(self) -> tuple[Callable[[], object], Callable[[], object] | None]:
        """(the call to time, what must run before each timed call, untimed)."""
        i = self.inputs
        if self.case.mode == "fwd":
            return self._forward, None
        if self.case.mode == "fwd+bwd":
            return (lambda: self._forward().backward(i.dout)), self.clear_grads
        # bwd: the forward runs once, untimed; each repeat replays the backward through its graph.
        self._graph_output = self._forward()
        return (lambda: self._graph_output.backward(i.dout, retain_graph=True)), self.clear_grads

    def release(self) -> None:
        self._graph_output = None
        self.clear_grads()

    def backend(self) -> str | None:
        i = self.inputs
        return self.impl.backend(i.q, i.k, i.v, causal=self.case.causal)
