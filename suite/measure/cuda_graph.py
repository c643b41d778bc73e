"""A forward call replayed from a CUDA graph: the GPU's time for its kernels, without the host issuing them.

A decoding step is a few small kernels. Called from Python, the GPU often waits for the host to launch
them (rows marked `host_bound`), so the eager time measures Python and dispatch as much as the kernels;
serving stacks capture decoding in CUDA graphs and replay it. With `run --cuda-graph`, each forward row
on a GPU is also captured once and its replays timed as the eager calls are (CUDA events after an L2
flush, the same policy): `graph_time_ms`, `graph_time_iqr_ms`, `graph_repeats`. The replayed output is
then compared with the checked first call. A call that cannot be captured (one that synchronizes with
the host, or whose library allocates outside PyTorch's allocator) gets `graph_reason` instead; the row's
eager figures are the same either way.

Capture follows PyTorch's rules: warm-up calls on the capture's own stream first (libraries create their
handles and workspaces on the stream they first run on), and synchronizing operations made errors
(`torch.cuda.set_sync_debug_mode`), so that one raises before it can invalidate the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .settings import TimingPolicy
from .timing import measure

WARMUP_CALLS = 3  # on the capture stream, before capturing


WHY_GPU_ONLY = "a CUDA graph replays GPU work"


def unavailable_reason(device: str, mode: str) -> str | None:
    """Why a row of this device and mode is not replayed from a graph; None when it is."""
    if device != "cuda":
        return f"device={device} (supported: cuda; a CUDA graph replays GPU work)"
    if mode != "fwd":
        return f"mode={mode} (supported: fwd; only forward calls are captured)"
    return None


class CapturedCall:
    """`fn` captured in a CUDA graph; `replay()` runs its kernels again, refreshing `output` in place."""

    def __init__(self, fn: Callable[[], Any], device: torch.device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_CALLS):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            # Inside the capture only: entering and leaving it synchronize on purpose.
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                self.output = fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)

    def replay(self) -> None:
        self.graph.replay()

    def release(self) -> None:
        """Free the graph and its private memory pool before the next row."""
        self.output = None
        self.graph.reset()


def graph_figures(
    fn: Callable[[], Any],
    device: torch.device,
    policy: TimingPolicy,
    disagreement: Callable[[torch.Tensor], str | None],
) -> dict[str, Any]:
    """The row's graph columns: `fn` captured and its replays timed, or why not. `disagreement(output)` says how
    the replayed output differs from the checked first call (None: it does not); a graph that computes something
    else gets no time. A capture that fails leaves the eager figures standing: its reason is recorded."""
    try:
        captured = CapturedCall(fn, device)
    except Exception as error:  # noqa: BLE001 - the eager row stands; the reason says why there is no graph time
        return {"graph_reason": f"could not be captured: {type(error).__name__}: {' '.join(str(error).split())[:500]}"}
    try:
        timing = measure(captured.replay, device, policy)
        wrong = disagreement(captured.output)
        if wrong:
            return {
                "graph_reason": f"the replayed output disagrees with the checked first call beyond the tolerance: "
                f"{wrong}"
            }
        return {"graph_time_ms": timing.median, "graph_time_iqr_ms": timing.iqr, "graph_repeats": timing.repeats}
    finally:
        captured.release()
