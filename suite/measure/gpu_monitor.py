"""GPU clocks, power, temperature and clock-event (throttle) reasons through NVML (pynvml).

Everything here degrades to a reason string: a missing or failing pynvml never stops a run.
"""

from __future__ import annotations

from typing import Any

import torch

# NVML clock-event reason bits (nvml.h, nvmlClocksEventReason*). Idle, application-clock and
# sync-boost settings are not slowdowns; the rest mean the GPU ran below the clocks it could.
_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
SLOWDOWN_REASONS = {
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
}
LOW_CLOCK_FRACTION = 0.75


class GpuMonitor:
    """One NVML device handle; `sample()` reads clocks and reasons, `unavailable` says why not."""

    def __init__(self, device: torch.device):
        self.unavailable: str | None = None
        self._nvml = None
        self._handle = None
        self.max_sm_clock_mhz: int | None = None
        if device.type != "cuda":
            self.unavailable = f"no NVIDIA GPU in use (device={device.type})"
            return
        try:
            import pynvml
        except ImportError as error:
            self.unavailable = f"pynvml is not installed (pip install nvidia-ml-py): {error}"
            return
        try:
            pynvml.nvmlInit()
            self._handle = _handle_for(pynvml, device)
            self.max_sm_clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(self._handle, pynvml.NVML_CLOCK_SM)
            self._nvml = pynvml
        except Exception as error:  # NVMLError or a missing driver library: degrade, never fail
            self.unavailable = f"NVML unavailable: {error}"

    def _call(self, name: str, *args) -> Any:
        try:
            return getattr(self._nvml, name)(self._handle, *args)
        except Exception:  # one unsupported query (e.g. power on some boards) must not hide the rest
            return None

    def sample(self) -> dict[str, Any]:
        if self._nvml is None:
            return {"unavailable": self.unavailable}
        nvml = self._nvml
        reasons_fn = "nvmlDeviceGetCurrentClocksEventReasons"
        if not hasattr(nvml, reasons_fn):
            reasons_fn = "nvmlDeviceGetCurrentClocksThrottleReasons"
        bits = self._call(reasons_fn)
        power_mw = self._call("nvmlDeviceGetPowerUsage")
        limit_mw = self._call("nvmlDeviceGetEnforcedPowerLimit")
        return {
            "sm_clock_mhz": self._call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": self._call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
            "temperature_c": self._call("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
            "power_w": None if power_mw is None else power_mw / 1000,
            "power_limit_w": None if limit_mw is None else limit_mw / 1000,
            "clock_event_reasons": None if bits is None else [n for b, n in _REASONS.items() if bits & b],
        }

    def energy_mj(self) -> int | None:
        """The board's total energy since the driver loaded, in millijoules (Volta and later); None without it."""
        return None if self._nvml is None else self._call("nvmlDeviceGetTotalEnergyConsumption")

    def driver_version(self) -> str | None:
        if self._nvml is None:
            return None
        try:
            version = self._nvml.nvmlSystemGetDriverVersion()
        except Exception:
            return None
        return version.decode() if isinstance(version, bytes) else version


def _handle_for(pynvml, device: torch.device):
    """Match the CUDA device to its NVML handle by UUID (CUDA_VISIBLE_DEVICES renumbers indices)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def throttle_verdict(after: dict[str, Any]) -> tuple[bool | None, list[str]]:
    """Did the GPU run slowed down? Judged on a sample taken right after the timed repeats."""
    if "unavailable" in after:
        return None, []
    why = [r for r in after.get("clock_event_reasons") or [] if r in SLOWDOWN_REASONS]
    clock, peak = after.get("sm_clock_mhz"), after.get("max_sm_clock_mhz")
    if clock and peak and clock < LOW_CLOCK_FRACTION * peak:
        why.append(f"sm_clock {clock} MHz < {LOW_CLOCK_FRACTION:.0%} of max {peak} MHz")
    return bool(why), why
