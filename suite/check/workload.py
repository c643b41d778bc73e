"""Inputs for a case and the call that gets timed for each mode (fwd, bwd, fwd+bwd)."""

from __future__ import annotations

import inspect
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from implementations import Implementation, Unsupported

from ..case import Case
from .accuracy import check_output


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor | None  # upstream gradient for bwd modes (None for forward-only inputs)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.dout) if t is not None)

    def fingerprint(self) -> tuple[float, ...]:
        """Sum and norm of each tensor, in float64: changed by an implementation that writes into its inputs
        (a scale applied in place), which would hand every later implementation of the case other inputs."""
        prints = []
        for t in (self.q, self.k, self.v, self.dout):
            if t is not None:
                data = t.detach()
                prints += [
                    torch.sum(data, dtype=torch.float64).item(),
                    torch.linalg.vector_norm(data, dtype=torch.float64).item(),
                ]
        return tuple(prints)

    def unchanged_since(self, fingerprint: tuple[float, ...]) -> bool:
        """Whether the tensors still match an earlier fingerprint (to 1e-9: a reduction's last bits may vary)."""
        return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(self.fingerprint(), fingerprint))


def case_seed(case: Case, seed: int) -> int:
    """A seed per case, stable across runs and machines."""
    return zlib.crc32(f"{seed}:{case.label}".encode())


def random_tensors(case: Case, generator_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard-normal q and dout (batch, heads, q_len, head_dim), k and v (batch, key/value heads, seq, head_dim)."""
    generator = torch.Generator(device=case.device).manual_seed(generator_seed)
    shape = (case.batch, case.heads, case.query_len, case.head_dim)
    kv_shape = (case.batch, case.key_value_heads, case.seq_len, case.head_dim)
    q, k, v, dout = (
        torch.randn(s, generator=generator, device=case.device, dtype=case.torch_dtype)
        for s in (shape, kv_shape, kv_shape, shape)
    )
    return q, k, v, dout


# Local inputs, at LOCAL_REFERENCE_TOKENS: the correlation length of the shared latent (tokens) and
# the mean logit of a query against the key at its own position. Beyond it both grow with the log of
# the length (the log-length logit scaling of Chiang & Cholak, 2022): with a fixed scale, the mass on
# unrelated positions grows with N, and at 64K tokens only 20-35% of each query's weight stayed within
# 64 tokens. Scaled, 80-99% does from 1K to 64K (head dim 64-128), and half of it within 4 tokens.
# On i.i.d. inputs softmax attention is nearly uniform instead.
LOCAL_REFERENCE_TOKENS = 1024
LOCAL_CORRELATION_TOKENS = 32.0
LOCAL_SELF_LOGIT = 8.0
LOCAL_LOGIT_GROWTH = 2.0  # added to the self logit per e-fold of length beyond the reference
_LOCAL_NOISE = 0.25  # what queries and keys add to the latent, relative to it


def local_shape(seq_len: int) -> tuple[float, float]:
    """(mean self logit, correlation length in tokens) of the local inputs at seq_len. The correlation
    length grows with the logit, so the width of each query's peak stays about the same."""
    self_logit = LOCAL_SELF_LOGIT + LOCAL_LOGIT_GROWTH * math.log(
        max(seq_len, LOCAL_REFERENCE_TOKENS) / LOCAL_REFERENCE_TOKENS
    )
    return self_logit, LOCAL_CORRELATION_TOKENS * self_logit / LOCAL_SELF_LOGIT


def _drifting_latent(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    correlation_tokens: float,
    generator: torch.Generator,
    device: str,
) -> torch.Tensor:
    """Unit-variance noise smoothed along the sequence by an exponential kernel (a stationary AR(1))."""
    taps = int(8 * correlation_tokens)  # the kernel's tail beyond 8 lengths is below e^-8
    kernel = torch.exp(-torch.arange(taps, device=device, dtype=torch.float32) / correlation_tokens)
    kernel = (kernel / kernel.norm()).flip(0).view(1, 1, taps)
    # taps - 1 extra leading samples, so the first positions are as smooth as the rest
    noise = torch.randn(batch * heads * head_dim, 1, seq_len + taps - 1, generator=generator, device=device)
    return F.conv1d(noise, kernel).view(batch, heads, head_dim, seq_len).transpose(-1, -2)


def local_tensors(case: Case, generator_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v on which softmax attention is peaked near the diagonal, as in trained models' local heads.

    Queries and keys are one latent that drifts along the sequence plus independent noise, scaled so
    that q_i·k_i/√D averages the self logit of local_shape(N); unrelated positions' logits spread
    about ±1-2. A query head shares its key/value head's latent. v is standard normal. With fewer queries
    than keys, the queries are those of the last positions.
    """
    generator = torch.Generator(device=case.device).manual_seed(generator_seed)
    b, n, d, kv_heads = case.batch, case.seq_len, case.head_dim, case.key_value_heads
    self_logit, correlation_tokens = local_shape(n)
    latent = _drifting_latent(b, kv_heads, n, d, correlation_tokens, generator, case.device)
    scale = math.sqrt(self_logit / math.sqrt(d))

    def noisy(shape_latent: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(shape_latent.shape, generator=generator, device=case.device)
        return (scale * (shape_latent + _LOCAL_NOISE * noise)).to(case.torch_dtype)

    q = noisy(latent[..., n - case.query_len :, :].repeat_interleave(case.heads // kv_heads, dim=1))
    k = noisy(latent)
    v = torch.randn((b, kv_heads, n, d), generator=generator, device=case.device, dtype=case.torch_dtype)
    return q, k, v


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """The case's inputs, seeded per case (see case_seed); q, k, v require grad in backward modes."""
    q, k, v, dout = random_tensors(case, case_seed(case, seed))
    for t in (q, k, v):
        t.requires_grad_(case.needs_grad)
    return Inputs(q, k, v, dout)


def packing_arguments(call: Callable[..., object], case: Case) -> dict[str, object]:
    """What `call` on `case` is given besides q, k, v and causal: its documents' lengths where it packs several per
    sequence, nothing otherwise (so that implementations without packed documents are called as they always were).
    A call that takes no `doc_lens` cannot run packed documents: Unsupported, which makes its row say so."""
    if not case.packed:
        return {}
    if "doc_lens" not in inspect.signature(call).parameters:
        raise Unsupported([f"docs={case.docs} (supported: fixed; its call takes no doc_lens)"])
    return {"doc_lens": case.doc_lens}


class Workload:
    """One implementation on one case's inputs: a checked call, and the call to time."""

    def __init__(self, impl: Implementation, case: Case, inputs: Inputs):
        self.impl, self.case, self.inputs = impl, case, inputs
        self._graph_output: torch.Tensor | None = None

    def _forward(self) -> torch.Tensor:
        i = self.inputs
        return self.impl(i.q, i.k, i.v, causal=self.case.causal, **packing_arguments(self.impl, self.case))

    def clear_grads(self) -> None:
        for t in (self.inputs.q, self.inputs.k, self.inputs.v):
            t.grad = None

    def checked_call(self) -> dict[str, torch.Tensor]:
        """One full forward (and backward) whose results are compared with the reference; WrongOutput if the
        output does not have the query's shape and dtype."""
        i = self.inputs
        if not self.case.needs_grad:
            with torch.no_grad():
                out = self._forward()
            check_output(out, i.q)
            return {"out": out}
        self.clear_grads()
        out = self._forward()
        check_output(out, i.q)
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
        takes_documents = "doc_lens" in inspect.signature(self.impl.backend).parameters
        documents = packing_arguments(self.impl.backend, self.case) if takes_documents else {}
        return self.impl.backend(i.q, i.k, i.v, causal=self.case.causal, **documents)
