"""PyTorch's scaled_dot_product_attention, either with its own dispatch or with one backend forced.

With fewer queries than keys (decoding against a KV cache) a causal mask must be aligned to the last key,
while SDPA's `is_causal` aligns it to the first: such calls pass `causal_lower_right`, which PyTorch runs in
its flash or memory-efficient kernel where one is enabled and otherwise as a materialized boolean mask. One
query sees every key either way, so it is called unmasked.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import DTYPES, Implementation, Unsupported, device_reasons, query_len
from .documents import VisibleMaskCache, is_packed

BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
_BACKEND_NAMES = {backend: name for name, backend in BACKENDS.items()}
# Which devices each backend has kernels for at all; finer limits are asked of PyTorch itself.
_DEVICES = {"math": {"cpu", "cuda"}, "flash": {"cpu", "cuda"}, "efficient": {"cuda"}, "cudnn": {"cuda"}}
_CAN_USE = {
    "flash": "can_use_flash_attention",
    "efficient": "can_use_efficient_attention",
    "cudnn": "can_use_cudnn_attention",
}
_NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")


def _probe_tensors(case, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small inputs with the case's head dim, dtype and device: backend limits depend on these."""
    groups = case.heads // (getattr(case, "kv_heads", None) or case.heads)
    make = lambda heads, length: torch.empty(  # noqa: E731
        (1, heads, min(length, 64), case.head_dim),
        dtype=DTYPES[case.dtype],
        device=case.device,
        requires_grad=requires_grad,
    )
    return make(groups, query_len(case)), make(1, case.seq_len), make(1, case.seq_len)


@functools.lru_cache(maxsize=8)
def _lower_right(q_len: int, kv_len: int):
    """Built once per shape, as naive builds its mask: making one costs ~3.5 µs on a CPU, a tenth of a short
    decoding call. Imported here: torch.nn.attention.bias imports TorchDynamo, which costs every process that
    lists the implementations about 1.4 s on a CPU."""
    from torch.nn.attention.bias import causal_lower_right

    return causal_lower_right(q_len, kv_len)


def _mask_of(causal: bool, q_len: int, kv_len: int) -> tuple[bool, object | None]:
    """(is_causal, attn_mask) for SDPA: its is_causal where queries and keys are as many, else the lower-right
    causal bias (none for one query, which sees every key)."""
    if not causal or q_len == 1 and kv_len > 1:
        return False, None
    if q_len == kv_len:
        return True, None
    return False, _lower_right(q_len, kv_len)


def _pytorch_reasons(backend: str, case) -> list[str]:
    """Ask PyTorch's own checks (torch.backends.cuda.can_use_*) why a CUDA backend would refuse."""
    if backend not in _CAN_USE or case.device != "cuda":
        return []
    check = getattr(torch.backends.cuda, _CAN_USE[backend], None)
    if check is None:
        return [f"this PyTorch build ({torch.__version__}) has no {backend} backend check"]
    q, k, v = _probe_tensors(case, requires_grad=case.mode != "fwd")
    is_causal, _ = _mask_of(case.causal, query_len(case), case.seq_len)  # the lower-right bias is checked unmasked
    # Packed documents are a materialized boolean mask: the probe carries one, which some kernels refuse.
    mask = torch.ones(1, 1, q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device) if is_packed(case) else None
    params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, is_causal and mask is None, q.shape[1] != k.shape[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = check(params, True)
    if ok:
        return []
    messages = [" ".join(str(w.message).split()) for w in caught]
    return messages or [f"PyTorch's {_CAN_USE[backend]} refused these inputs"]


class SdpaAttention(Implementation):
    """`F.scaled_dot_product_attention`; `backend=None` lets PyTorch choose, otherwise it is forced."""

    def __init__(self, name: str, backend: str | None = None, **options):
        super().__init__(name, **options)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r} (allowed: {', '.join(BACKENDS)})")
        self.forced = backend
        # Auto mode leaves PyTorch's backend flags exactly as the user has them.
        self._context = (lambda: sdpa_kernel([BACKENDS[backend]])) if backend else contextlib.nullcontext
        self._open_sessions = 0
        self._documents = VisibleMaskCache()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The forced backend set once around many calls, as a program sets it around its model: saving,
        setting and restoring PyTorch's backend flags costs about 10 µs a call on a CPU, which a timed call
        of a short kernel would otherwise count (against `sdpa`'s own dispatch to the same kernel). Inside
        it, calls rely on the flags it set; nothing else may change them before it ends."""
        with self._context():
            self._open_sessions += 1
            try:
                yield
            finally:
                self._open_sessions -= 1

    def supports(self, case) -> list[str]:
        if self.forced is None:
            return device_reasons(case, {"cpu", "cuda"})
        reasons = device_reasons(case, _DEVICES[self.forced])
        if case.device == "cuda" and not torch.cuda.is_available():
            reasons.append("device=cuda but no CUDA device is available")
        return reasons or _pytorch_reasons(self.forced, case)

    def __call__(self, q, k, v, *, causal=False, doc_lens=None):
        is_causal, mask = self._masks(q, k, causal, doc_lens)
        try:
            with contextlib.nullcontext() if self._open_sessions else self._context():
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
                )
        except RuntimeError as error:
            if not any(m in str(error) for m in _NO_KERNEL_MESSAGES):
                raise
            raise Unsupported(
                [f"sdpa backend {self.forced or 'auto'} has no kernel for these inputs: {error}"]
            ) from None

    def _masks(self, q, k, causal: bool, doc_lens) -> tuple[bool, object | None]:
        """(is_causal, attn_mask): packed documents as the materialized block-diagonal mask (True: visible)."""
        if doc_lens is None:
            return _mask_of(causal, q.shape[-2], k.shape[-2])
        return False, self._documents.get(doc_lens, causal, q.device)

    def backend(self, q, k, v, *, causal=False, doc_lens=None) -> str | None:
        """The backend PyTorch's dispatcher picks for these inputs (torch._fused_sdp_choice)."""
        choose = getattr(torch, "_fused_sdp_choice", None)
        if choose is None:
            return None
        is_causal, mask = self._masks(q, k, causal, doc_lens)
        gqa = q.shape[1] != k.shape[1]
        if doc_lens is not None:
            with self._context():
                choice = SDPBackend(choose(q, k, v, mask, 0.0, False, scale=None, enable_gqa=gqa))
            return f"{_BACKEND_NAMES.get(choice, choice.name.lower())} (materialized block-diagonal mask)"
        with self._context():
            if mask is not None:  # the order in which causal_lower_right tries kernels
                params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, gqa)
                for name in ("flash", "efficient"):
                    if q.device.type == "cuda" and getattr(torch.backends.cuda, _CAN_USE[name])(params, False):
                        return name
                mask = mask._materialize(q.device)
            choice = SDPBackend(choose(q, k, v, mask, 0.0, is_causal, scale=None, enable_gqa=gqa))
        name = _BACKEND_NAMES.get(choice, choice.name.lower())
        return name if mask is None else f"{name} (materialized lower-right causal mask)"
