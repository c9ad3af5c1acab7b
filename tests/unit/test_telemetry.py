"""NvmlReader against a fake pynvml replaying tests/unit/data/nvml/h200_x2.json
(2x H200, GPU 1 without power readings), against failure modes, and against
the real pynvml of this machine; HostSampler's shape."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from engine.agent.telemetry import HostSampler, NvmlReader, load_pynvml

FIXTURE = Path(__file__).parent / "data" / "nvml" / "h200_x2.json"
MIB = 1 << 20


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's naming
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


ERRORS = {c.__name__: c for c in (NVMLError_NotSupported, NVMLError_LibraryNotFound,
                                  NVMLError_GpuIsLost)}


class FakeNvml:
    """The pynvml calls NvmlReader uses, answered from the fixture at `tick`."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, doc: dict[str, Any], init_error: type[Exception] | None = None,
                 names_as_bytes: bool = False) -> None:
        self.devices = doc["devices"]
        self.tick = 0
        self.init_error = init_error
        self.names_as_bytes = names_as_bytes
        self.calls: dict[str, int] = {}

    def _count(self, fn: str) -> None:
        self.calls[fn] = self.calls.get(fn, 0) + 1

    def _answer(self, fn: str, handle: int) -> Any:
        self._count(fn)
        dev = self.devices[handle]
        if fn in dev["raises"]:
            raise ERRORS[dev["raises"][fn]]()
        return dev["ticks"][self.tick][fn]

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise self.init_error()

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._count("nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        name = self.devices[handle]["name"]
        return name.encode() if self.names_as_bytes else name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.devices[handle]["uuid"]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self._answer("nvmlDeviceGetUtilizationRates", handle))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self._answer("nvmlDeviceGetMemoryInfo", handle))

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._answer("nvmlDeviceGetTemperature", handle)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._answer("nvmlDeviceGetPowerUsage", handle)


@pytest.fixture()
def doc() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_inventory_of_two_h200(doc: dict[str, Any]) -> None:
    reader = NvmlReader(FakeNvml(doc, names_as_bytes=True))
    assert reader.available
    assert reader.inventory() == [
        {"index": 0, "name": "NVIDIA H200", "memory_total_mb": 143771,
         "uuid": "GPU-3f2a9c41-7b1e-4c55-9d0a-6e8b2f17c3a0"},
        {"index": 1, "name": "NVIDIA H200", "memory_total_mb": 143771,
         "uuid": "GPU-a81c07e2-19d4-4f3b-b6c2-0d95e4a7f218"},
    ]


def test_samples_replay_the_recording(doc: dict[str, Any]) -> None:
    fake = FakeNvml(doc)
    reader = NvmlReader(fake)
    for tick in range(3):
        fake.tick = tick
        got = reader.sample()
        assert [g["index"] for g in got] == [0, 1]
        for gpu, dev in zip(got, doc["devices"], strict=True):
            rec = dev["ticks"][tick]
            assert gpu["util_percent"] == rec["nvmlDeviceGetUtilizationRates"]["gpu"]
            assert gpu["memory_used_mb"] == rec["nvmlDeviceGetMemoryInfo"]["used"] // MIB
            assert gpu["memory_total_mb"] == 143771
            assert gpu["temperature_c"] == rec["nvmlDeviceGetTemperature"]
        # GPU 0 reports power in mW -> W; GPU 1 raises NotSupported -> None
        assert got[0]["power_w"] == round(
            doc["devices"][0]["ticks"][tick]["nvmlDeviceGetPowerUsage"] / 1000, 1)
        assert got[1]["power_w"] is None
    assert fake.tick == 2 and reader.sample()[0] == {
        "index": 0, "util_percent": 0, "memory_used_mb": 130215, "memory_total_mb": 143771,
        "temperature_c": 49, "power_w": 121.5}


def test_init_once_and_handles_cached(doc: dict[str, Any]) -> None:
    fake = FakeNvml(doc)
    reader = NvmlReader(fake)
    reader.inventory()
    for _ in range(5):
        reader.sample()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetCount"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 2
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 10
    reader.close()
    assert fake.calls["nvmlShutdown"] == 1


@pytest.mark.parametrize("error", [NVMLError_LibraryNotFound, NVMLError, OSError])
def test_init_failure_means_no_gpu(doc: dict[str, Any], error: type[Exception]) -> None:
    fake = FakeNvml(doc, init_error=error)
    reader = NvmlReader(fake)
    assert reader.inventory() == []
    assert reader.sample() == []
    assert not reader.available
    assert reader.unavailable_reason is not None
    assert fake.calls["nvmlInit"] == 1  # not retried every tick
    reader.close()
    assert "nvmlShutdown" not in fake.calls


def test_lost_gpu_gives_nulls_not_a_crash(doc: dict[str, Any]) -> None:
    every = {fn: "NVMLError_GpuIsLost" for fn in (
        "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage")}
    doc["devices"][1]["raises"] = every
    got = NvmlReader(FakeNvml(doc)).sample()
    assert got[1] == {"index": 1, "util_percent": None, "memory_used_mb": None,
                      "memory_total_mb": None, "temperature_c": None, "power_w": None}
    assert got[0]["util_percent"] == 97


def test_no_module_means_no_gpu() -> None:
    reader = NvmlReader(None)
    assert reader.inventory() == [] and reader.sample() == []
    assert reader.unavailable_reason == "pynvml is not installed"


def test_real_pynvml_on_this_machine() -> None:
    """On a machine without NVIDIA driver this must be [] (this CI box); on a
    GPU node the same call must give well-formed entries."""
    assert load_pynvml() is not None
    try:
        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        has_gpu = False
    reader = NvmlReader(pynvml)
    inventory, sample = reader.inventory(), reader.sample()
    reader.close()
    if not has_gpu:
        assert inventory == [] and sample == []
        assert reader.unavailable_reason
        return
    assert inventory and all(g["memory_total_mb"] > 0 and g["name"] for g in inventory)
    assert [g["index"] for g in sample] == [g["index"] for g in inventory]
    for g in sample:
        assert set(g) == {"index", "util_percent", "memory_used_mb", "memory_total_mb",
                          "temperature_c", "power_w"}


def test_host_sampler() -> None:
    sampler = HostSampler()
    s = sampler.sample()
    assert set(s) == {"cpu_percent", "memory_percent", "memory_used_gb", "load"}
    assert 0.0 <= s["cpu_percent"] <= 100.0
    assert 0.0 < s["memory_percent"] < 100.0
    assert 0.0 < s["memory_used_gb"] <= HostSampler.memory_total_gb()
    assert len(s["load"]) == 3 and all(x >= 0 for x in s["load"])
