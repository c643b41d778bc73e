"""The environment record stored with every run: versions, device, driver, clocks."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..check.poison import poisoning
from ..measure.gpu_monitor import GpuMonitor
from . import speed_settings
from .files import cpu_machine

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The project's commit, with `+dirty` when the work tree has changes.

    ATTNBENCH_GIT_COMMIT names it where the tree was copied without its .git (e.g. to a GPU host).
    """
    if os.environ.get("ATTNBENCH_GIT_COMMIT"):
        return os.environ["ATTNBENCH_GIT_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: str) -> str:
    """The model whose speed a run on `device` measures: the GPU's for cuda; otherwise the CPU's, with the
    threads torch uses, which change CPU times as much as another model does."""
    return torch.cuda.get_device_name() if device == "cuda" else cpu_machine(_cpu_name(), torch.get_num_threads())


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` within the block (None: as they are), restored after it: a run's
    `--threads` or `threads=` must not outlast the run in the process that asked for it."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def collect(device: torch.device, monitor: GpuMonitor | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "attnbench_version": __version__,
        "git_commit": git_commit(),
        "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _package_version("triton"),
        "xformers": _package_version("xformers"),
        "pynvml": _package_version("nvidia-ml-py"),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": device.type,
        "checked_call_poisoning": poisoning(device),  # absent from files written before checks were poisoned
        "speed_settings": speed_settings.current(),  # absent from files written before they were recorded
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        monitor = monitor or GpuMonitor(device)
        record.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_multiprocessors=props.multi_processor_count,
            gpu_compute_capability=f"{props.major}.{props.minor}",
            gpu_l2_bytes=getattr(props, "L2_cache_size", None),
            driver=monitor.driver_version(),
            gpu_state=monitor.sample(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    else:
        record.update(gpu=None, driver=None, gpu_state={"unavailable": f"no NVIDIA GPU in use (device={device.type})"})
    return record
