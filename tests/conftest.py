"""Shared test helpers: the `gpu` marker skips without CUDA; small cases and fake implementations."""

from __future__ import annotations

import contextlib
import signal

import pytest
import torch

from implementations import Implementation


def pytest_configure(config):
    # A process started in the background by a non-interactive shell inherits SIGINT ignored; the tests that send
    # themselves Ctrl-C need Python's own handler, as a terminal gives it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, **options) -> torch.Tensor:
    """PyTorch's SDPA with the registry's convention: where q is shorter than k (decoding), its rows are the last
    positions and a causal mask is aligned to the last key (SDPA's is_causal aligns it to the first)."""
    from torch.nn.attention.bias import causal_lower_right

    lower_right = causal and q.shape[-2] != k.shape[-2]
    return torch.nn.functional.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=causal_lower_right(q.shape[-2], k.shape[-2]) if lower_right else None,
        is_causal=causal and not lower_right,
        **options,
    )


class WithSession:
    """A test double's session (mixed in before its Implementation): counts how often it is entered, and
    `inside` says whether a call is made within it."""

    sessions = 0
    inside = False

    @contextlib.contextmanager
    def session(self):
        self.sessions += 1
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


class ScriptedAttention(Implementation):
    """A test double: correct attention, except on the cases where it is told to fail."""

    def __init__(self, name, fail_on_seq_len=None, error=None, scale_output=1.0, failures=None, jitter=0.0, **options):
        super().__init__(name, **options)
        self.fail_on_seq_len, self.error, self.scale_output = fail_on_seq_len, error, scale_output
        self.failures_left = failures  # None: fail every time
        self.jitter, self.calls = jitter, 0  # relative, its sign alternating between calls (a race's symptom)

    def __call__(self, q, k, v, *, causal=False):
        if q.shape[-2] == self.fail_on_seq_len and self.failures_left != 0:
            if self.failures_left is not None:
                self.failures_left -= 1
            raise self.error
        out = sdpa(q, k, v, causal=causal, enable_gqa=q.shape[1] != k.shape[1])
        self.calls += 1
        return out * (self.scale_output * (1 + self.jitter * (-1) ** self.calls))


class UnwrittenLastRow(Implementation):
    """A test double with a classic kernel bug: it allocates its output, then never writes the last query row
    (a tail tile at a length its tiles do not divide)."""

    def __call__(self, q, k, v, *, causal=False):
        out = torch.empty_like(q)
        out[..., :-1, :] = torch.nn.functional.scaled_dot_product_attention(q[..., :-1, :], k, v)
        return out


@pytest.fixture
def fake_registry(monkeypatch):
    """Add scripted implementations to the registry for the duration of one test."""
    import implementations

    def add(name, **kwargs):
        monkeypatch.setitem(implementations.REGISTRY, name, lambda n, **o: ScriptedAttention(n, **kwargs, **o))

    return add


def aten_ops(call) -> set[str]:
    """The names of the operators `call()` ran, from torch.profiler (CPU activity: every aten op is seen there)."""
    from torch.profiler import ProfilerActivity, profile

    from suite.measure.quiet_profiler import start_quietly, stop_quietly

    profiler = profile(activities=[ProfilerActivity.CPU])
    start_quietly(profiler)
    try:
        call()
    finally:
        stop_quietly(profiler)
    return {event.key for event in profiler.key_averages()}


def rows_of(impls, cases, *, settings, on_row=None, **how) -> list[dict]:
    """run_cases(impls, cases, ...), returning the rows it gives `on_row` (which gets them too, where given)."""
    from suite.run.runner import run_cases

    rows: list[dict] = []

    def kept(row: dict) -> None:
        rows.append(row)
        if on_row:
            on_row(row)

    run_cases(impls, cases, settings=settings, on_row=kept, **how)
    return rows


def run_into(path, impls, cases, settings, device: str = "cpu") -> list[dict]:
    """run_cases over `cases`, its rows written to the results file `path` as `attnbench run` writes them."""
    from suite.results.files import ResultsWriter

    writer = ResultsWriter(path, {"device": device}, {"preset": "test"})
    rows = rows_of(impls, cases, settings=settings, on_row=writer.append)
    writer.close()
    return rows
