"""Node telemetry for the agent: host figures from psutil and GPU figures from
NVML. Never raises for a missing or broken GPU stack.

- `NvmlReader(nvml_module)` wraps a pynvml-shaped module (passed in, so tests
  can replay a fake one). `nvmlInit` is called once, on first use; device
  handles are cached per index. If the module is None, or init fails for any
  reason (no library, no driver, no device), the node has no GPU: `inventory()`
  and `sample()` return [] on every call, without retrying NVML or logging
  again. Per tick each GPU reports utilization, memory, temperature, power
  (draw and enforced limit) and the processes on it; an `NVMLError` (or
  pynvml's `NVMLLibraryMismatchError`, an older driver than the binding) on
  one field makes that field None.
- The processes on a GPU are NVML's compute and graphics process lists
  merged by pid (a process in both is listed once, with the larger memory
  figure), each `{"pid", "used_memory_mb", "attempt"}`: `attempt` is the
  `LLMCONSOLE_ATTEMPT` marker of the process's initial environment
  (/proc/PID/environ), which every job process started by an agent carries.
  It is None for an unknown process: one without the marker (not started by
  llmconsole), one whose environment this agent may not read (another
  user's process and an agent that is not root), or one that has ended.
  `used_memory_mb` is None where NVML cannot tell (it reports "not
  available" under some drivers and for MIG without privileges). NVML
  reports pids of the host's pid namespace: an agent in a container sees
  them only with the host's /proc.
- `HostSampler` reports CPU (non-blocking `cpu_percent(interval=None)`, primed
  at construction), memory and load average.

Units: memory in MiB (`*_mb`, integers, as nvidia-smi prints) for GPUs and in
GiB (`*_gb`) for the host; power in watts (NVML's milliwatts / 1000, one
decimal); temperature in degrees Celsius.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import psutil

MIB = 1024 * 1024
GIB = 1024 * 1024 * 1024
ATTEMPT_MARKER = b"LLMCONSOLE_ATTEMPT="  # set by the agent in every job's environment
# NVML's process lists, merged: what runs CUDA and what holds a graphics context.
PROCESS_LISTS = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")


def load_pynvml() -> Any | None:
    """The real pynvml module, or None when it is not installed."""
    try:
        import pynvml
    except Exception:  # ImportError, or a broken install
        return None
    return pynvml


def attempt_marker(pid: int) -> str | None:
    """The attempt process `pid` belongs to: the LLMCONSOLE_ATTEMPT value of
    its initial environment. None when it has none, when its environment may
    not be read (another user's process, and this is not root), or when it
    has ended (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as f:
            environ = f.read()
    except (OSError, ValueError, OverflowError):
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(ATTEMPT_MARKER):
            value = entry[len(ATTEMPT_MARKER):].decode("utf-8", errors="replace")
            return value or None
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class NvmlReader:
    """Reads GPU inventory and per-tick figures through a pynvml-like module."""

    def __init__(self, nvml: Any | None,
                 attempt_of: Callable[[int], str | None] = attempt_marker) -> None:
        """`attempt_of(pid)` names the attempt a GPU process belongs to."""
        self._nvml = nvml
        self._attempt_of = attempt_of
        errors: list[type[BaseException]] = []
        if nvml is not None:
            for name in ("NVMLError", "NVMLLibraryMismatchError"):
                err = getattr(nvml, name, None)
                if isinstance(err, type) and issubclass(err, BaseException):
                    errors.append(err)
        self._errors: tuple[type[BaseException], ...] = tuple(errors) or (Exception,)
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
        except self._errors:
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
        "temperature_c", "power_w", "power_limit_w", "processes"}] for each
        GPU, or []; "processes" is [{"pid", "used_memory_mb", "attempt"}], by
        pid, or None when neither process list could be read."""
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
            limit_mw = self._field("nvmlDeviceGetEnforcedPowerLimit", handle)
            gpus.append({
                "index": index,
                "util_percent": None if util is None else int(util.gpu),
                "memory_used_mb": None if mem is None else int(mem.used) // MIB,
                "memory_total_mb": None if mem is None else int(mem.total) // MIB,
                "temperature_c": None if temp is None else int(temp),
                "power_w": _watts(power_mw),
                "power_limit_w": _watts(limit_mw),
                "processes": self._processes(handle),
            })
        return gpus

    def _processes(self, handle: Any) -> list[dict[str, Any]] | None:
        """The GPU's compute and graphics processes merged by pid, each with
        its attempt marker; None when NVML lists neither."""
        used: dict[int, int | None] = {}
        listed = False
        for fn in PROCESS_LISTS:
            procs = self._field(fn, handle)
            if procs is None:
                continue
            listed = True
            for proc in procs:
                pid = getattr(proc, "pid", None)
                if not isinstance(pid, int):
                    continue
                memory = getattr(proc, "usedGpuMemory", None)
                mb = int(memory) // MIB if isinstance(memory, int) else None
                before = used.get(pid)
                used[pid] = mb if before is None else max(before, mb or 0)
        if not listed:
            return None
        return [{"pid": pid, "used_memory_mb": mb, "attempt": self._attempt_of(pid)}
                for pid, mb in sorted(used.items())]

    def close(self) -> None:
        if self._handles and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:  # shutting down: nothing more to do
                print(f"agent: nvmlShutdown failed: {e}", file=sys.stderr)
        self._handles.clear()


def _watts(milliwatts: Any) -> float | None:
    return None if milliwatts is None else round(int(milliwatts) / 1000.0, 1)


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
