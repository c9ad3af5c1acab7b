"""Node telemetry for the agent: host figures from psutil and GPU figures from
NVML. Never raises for a missing or broken GPU stack.

- `NvmlReader(nvml_module)` wraps a pynvml-shaped module (passed in, so tests
  can replay a fake one). `nvmlInit` is called once, on first use; device
  handles are cached per index. If the module is None, or init fails for any
  reason (no library, no driver, no device), the node has no GPU: `inventory()`
  and `sample()` return []. Per tick each GPU reports utilization, memory,
  temperature and power; an `NVMLError` on one field makes that field None.
- `HostSampler` reports CPU (non-blocking `cpu_percent(interval=None)`, primed
  at construction), memory and load average.

Units: memory in MiB (`*_mb`, integers, as nvidia-smi prints) for GPUs and in
GiB (`*_gb`) for the host; power in watts; temperature in degrees Celsius.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil

MIB = 1024 * 1024
GIB = 1024 * 1024 * 1024


def load_pynvml() -> Any | None:
    """The real pynvml module, or None when it is not installed."""
    try:
        import pynvml
    except Exception:  # ImportError, or a broken install
        return None
    return pynvml


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class NvmlReader:
    """Reads GPU inventory and per-tick figures through a pynvml-like module."""

    def __init__(self, nvml: Any | None) -> None:
        self._nvml = nvml
        self._error: type[BaseException] = Exception
        if nvml is not None:
            err = getattr(nvml, "NVMLError", None)
            if isinstance(err, type) and issubclass(err, BaseException):
                self._error = err
        self._initialized = False
        self._handles: dict[int, Any] = {}
        self.unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        self._ensure_init()
        return bool(self._handles)

    def _ensure_init(self) -> None:
        if self._initialized:
            return
        self._initialized = True
        nvml = self._nvml
        if nvml is None:
            self.unavailable_reason = "pynvml is not installed"
            return
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError...
            self.unavailable_reason = f"NVML unavailable: {e}"
            return
        for index in range(count):
            try:
                self._handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as e:
                print(f"agent: GPU {index} skipped: {e}", file=sys.stderr)
        if not self._handles:
            self.unavailable_reason = "NVML reports no usable GPU"

    def _field(self, fn: str, *args: Any) -> Any:
        """One NVML call; None when it raises NVMLError (e.g. NotSupported)."""
        try:
            return getattr(self._nvml, fn)(*args)
        except self._error:
            return None

    def inventory(self) -> list[dict[str, Any]]:
        """[{"index", "name", "memory_total_mb", "uuid"}] for each GPU, or []."""
        self._ensure_init()
        gpus = []
        for index, handle in sorted(self._handles.items()):
            name = self._field("nvmlDeviceGetName", handle)
            uuid = self._field("nvmlDeviceGetUUID", handle)
            mem = self._field("nvmlDeviceGetMemoryInfo", handle)
            gpus.append({
                "index": index,
                "name": None if name is None else _text(name),
                "memory_total_mb": None if mem is None else int(mem.total) // MIB,
                "uuid": None if uuid is None else _text(uuid),
            })
        return gpus

    def sample(self) -> list[dict[str, Any]]:
        """[{"index", "util_percent", "memory_used_mb", "memory_total_mb",
        "temperature_c", "power_w"}] for each GPU, or []."""
        self._ensure_init()
        if not self._handles:
            return []
        sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        gpus = []
        for index, handle in sorted(self._handles.items()):
            util = self._field("nvmlDeviceGetUtilizationRates", handle)
            mem = self._field("nvmlDeviceGetMemoryInfo", handle)
            temp = self._field("nvmlDeviceGetTemperature", handle, sensor)
            power_mw = self._field("nvmlDeviceGetPowerUsage", handle)
            gpus.append({
                "index": index,
                "util_percent": None if util is None else int(util.gpu),
                "memory_used_mb": None if mem is None else int(mem.used) // MIB,
                "memory_total_mb": None if mem is None else int(mem.total) // MIB,
                "temperature_c": None if temp is None else int(temp),
                "power_w": None if power_mw is None else round(int(power_mw) / 1000.0, 1),
            })
        return gpus

    def close(self) -> None:
        if self._handles and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:  # shutting down: nothing more to do
                print(f"agent: nvmlShutdown failed: {e}", file=sys.stderr)
        self._handles.clear()


class HostSampler:
    """CPU, memory and load of this host."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # prime: the first call returns 0.0

    @staticmethod
    def memory_total_gb() -> float:
        return round(psutil.virtual_memory().total / GIB, 2)

    def sample(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        load: list[float | None]
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = [None, None, None]
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_percent": vm.percent,
            "memory_used_gb": round((vm.total - vm.available) / GIB, 2),
            "load": load,
        }
