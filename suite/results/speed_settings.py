"""Settings of the process that change how fast attention runs: recorded with every run, warned about when they
distort what a benchmark measures, and compared by `attnbench compare`, since two runs that differ in them
differ for that reason and not the code's."""

from __future__ import annotations

import os
from typing import Any

# Read by CUDA, PyTorch or the BLAS libraries when the process starts or first allocates.
VARIABLES = (
    "CUDA_LAUNCH_BLOCKING",  # every kernel launch waits for the kernel: times include each launch's round trip
    "PYTORCH_NO_CUDA_MEMORY_CACHING",  # every allocation a cudaMalloc, every free a synchronizing cudaFree
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",  # allocator settings: fragmentation, hence which lengths fit
    "NVIDIA_TF32_OVERRIDE",  # 0 forbids TF32 in cuBLAS and cuDNN whatever PyTorch asks
    "CUBLAS_WORKSPACE_CONFIG",  # set for deterministic cuBLAS; smaller workspaces can be slower
    "TORCH_CUDNN_SDPA_ENABLED",  # whether SDPA may dispatch to cuDNN (read by some PyTorch versions)
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",  # CPU threads (the thread count torch uses is recorded too)
)

# (variable, why) for settings under which timings do not measure what they claim.
DISTORTING = {
    "CUDA_LAUNCH_BLOCKING": "every kernel launch waits for its kernel, so each call's time includes the host's "
    "launch round trips and no two kernels overlap",
    "PYTORCH_NO_CUDA_MEMORY_CACHING": "every allocation calls cudaMalloc and every free a synchronizing cudaFree, "
    "costs a program with PyTorch's caching allocator does not pay",
}


def current() -> dict[str, Any]:
    """This process's settings: the VARIABLES that are set, and PyTorch's global flags that change kernels."""
    import torch  # here: readers of results files (summary) need no torch

    return {
        "environment": {name: os.environ[name] for name in VARIABLES if name in os.environ},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def distorting(settings: dict[str, Any] | None) -> list[str]:
    """The DISTORTING variables these settings turn on."""
    environment = (settings or {}).get("environment") or {}
    return [name for name in DISTORTING if _truthy(environment.get(name))]


def warnings_for(settings: dict[str, Any]) -> list[str]:
    """One warning per setting under which GPU timings are not what a program would see."""
    environment = settings.get("environment") or {}
    return [f"{name}={environment[name]}: {DISTORTING[name]}" for name in distorting(settings)]


def summary(settings: dict[str, Any] | None) -> str | None:
    """The settings that differ from a default process, in one line ('' when none); None for runs recorded before
    settings were."""
    if settings is None:
        return None
    parts = [f"{name}={value}" for name, value in sorted((settings.get("environment") or {}).items())]
    if settings.get("float32_matmul_precision", "highest") != "highest":
        parts.append(f"float32 matmul precision {settings['float32_matmul_precision']}")
    if settings.get("deterministic_algorithms"):
        parts.append("deterministic algorithms")
    return ", ".join(parts)
