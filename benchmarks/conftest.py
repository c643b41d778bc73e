"""pytest-benchmark integration: describe the GPU in machine_info so saved runs say where they ran."""

from __future__ import annotations

import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    from suite.results.environment import collect

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record = collect(device)
    machine_info["gpu"] = record.get("gpu") or "cpu"
    machine_info["attnbench"] = {
        key: record.get(key)
        for key in (
            "attnbench_version",
            "git_commit",
            "torch",
            "cuda",
            "cudnn",
            "triton",
            "xformers",
            "driver",
            "gpu_memory_bytes",
            "gpu_compute_capability",
            "cpu_threads",
        )
    }
