"""A recurrent decoder's carried state: what linear attention keeps of its KV cache between decoding steps.

Exact attention reads its whole KV cache in every decoding step. Linear attention and FAVOR+ need only
Σ φ(k_j) v_jᵀ and Σ φ(k_j) over the cached keys, an F × D state per key/value head whatever the cache
length, which a recurrent decoder updates once per token and carries to the next step. With the option
`state=carried`, their decoding calls (fewer queries than keys) do what such a step does: the state of the
keys before the first query is built on the first call that sees those key and value tensors (an untimed
first call in the harness, recorded in `first_call_ms`) and reused while the same tensors come back
unchanged, so a timed call reads the state and the new tokens only, O(1) in the cache length. With the
default `state=rebuilt` every call builds it from the cache, O(N), as a prefill does.

A carried state holds no gradient for the cached keys, so `state=carried` supports decoding forward only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

from .base import CaseLike, Option, Unsupported, has_fewer_queries

STATES = ("rebuilt", "carried")


def _check_state(value: object) -> str | None:
    return None if value in STATES else f"must be one of {', '.join(STATES)}"


STATE_OPTION = Option(
    default="rebuilt",
    parse=str,
    check=_check_state,
    help="state: rebuilt (from the KV cache in every decoding call) or carried "
    "(built once per cache and reused, as a recurrent decoder does)",
)

_NO_GRADIENT = "a carried state holds no gradient for the cached keys; state=rebuilt has one"


def carried_state_reasons(case: CaseLike, state: str) -> list[str]:
    """Why a `state=carried` implementation cannot run `case`: a decoding case with a backward."""
    if state != "carried" or not has_fewer_queries(case) or case.mode == "fwd":
        return []
    return [
        f"mode={case.mode} with state=carried and q_len={case.q_len} < seq_len={case.seq_len} "
        f"(supported: fwd; {_NO_GRADIENT})"
    ]


def carries(state: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether this call uses a carried state: asked for, and there are keys before the first query. A call
    that would need the state's gradient raises Unsupported rather than run another computation."""
    if state != "carried" or q.shape[-2] == k.shape[-2]:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise Unsupported([f"inputs that require grad with state=carried and fewer queries than keys ({_NO_GRADIENT})"])
    return True


T = TypeVar("T")


class CarriedState(Generic[T]):
    """One value computed from some tensors, reused while the same tensor objects come back with their
    version counters unmoved (nothing wrote into them), and dropped as soon as one of them is freed.

    Tensor identity, not an address: a new tensor at a freed tensor's address must not find its state.
    Inference-mode tensors keep no version counter, so their state is built on every call.
    """

    def __init__(self) -> None:
        self._refs: tuple[weakref.ref, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._extra: Hashable = None
        self._value: T | None = None
        self.builds = 0  # how many times a state was built (for tests and the backend description)

    def get(self, tensors: tuple[torch.Tensor, ...], extra: Hashable, build: Callable[[], T]) -> T:
        """The value for `tensors` (and `extra`, what else it depends on): the kept one, or `build()`."""
        if any(t.is_inference() for t in tensors):
            self.builds += 1
            return build()
        versions = tuple(t._version for t in tensors)
        if (
            self._value is not None
            and extra == self._extra
            and versions == self._versions
            and len(self._refs) == len(tensors)
            and all(r() is t for r, t in zip(self._refs, tensors))
        ):
            return self._value
        self._drop()  # free the old state before building the new one
        value = build()
        self.builds += 1
        owner = weakref.ref(self)  # the tensors must not keep this object alive either

        def forget(_: weakref.ref) -> None:
            state = owner()
            if state is not None:
                state._drop()

        self._refs = tuple(weakref.ref(t, forget) for t in tensors)
        self._versions, self._extra, self._value = versions, extra, value
        return value

    def _drop(self) -> None:
        self._refs, self._versions, self._extra, self._value = (), (), None, None


def summed_keys(state: str, seq_len: int, q_len: int | None) -> int:
    """How many keys a call sums into its state (for its FLOPs): with a carried state, the new tokens' only."""
    return q_len if state == "carried" and q_len else seq_len


def carried_bytes(state: str, case: CaseLike, features: int, dtype: torch.dtype) -> int | None:
    """Bytes of the carried sums a decoding call reads in place of the earlier keys and values: F × D + F per
    key/value head, held in `dtype`; None where no state is carried."""
    if state != "carried" or not has_fewer_queries(case):
        return None
    return case.batch * (case.kv_heads or case.heads) * features * (case.head_dim + 1) * dtype.itemsize


def carried_description(state: str, q: torch.Tensor, k: torch.Tensor) -> str:
    """What the recorded backend adds for a call that uses a carried state."""
    if state != "carried" or q.shape[-2] == k.shape[-2]:
        return ""
    return f"; the {k.shape[-2] - q.shape[-2]} earlier keys' state carried between calls"
