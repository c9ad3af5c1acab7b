"""NvmlReader against a fake pynvml replaying tests/unit/data/nvml/h200_x2.json
(2x H200, GPU 1 without power readings; a training process on each GPU and a
foreign one on GPU 1), against failure modes, and against the real pynvml of
this machine; GPU processes mapped to attempts through real processes'
/proc environments (root's, and an unprivileged reader's); HostSampler's
shape."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from engine.agent.telemetry import HostSampler, NvmlReader, attempt_marker, load_pynvml

FIXTURE = Path(__file__).parent / "data" / "nvml" / "h200_x2.json"
REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
NOBODY = 65534
# The recording's pids, as an agent would map them: two training attempts
# and a process llmconsole did not start.
RECORDED_ATTEMPTS = {48213: "12.1", 48377: "13.2", 51002: None}


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's naming
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


class NVMLLibraryMismatchError(Exception):
    """pynvml's: an unversioned call the driver's NVML lacks. Not an NVMLError."""


ERRORS = {c.__name__: c for c in (NVMLError_NotSupported, NVMLError_LibraryNotFound,
                                  NVMLError_GpuIsLost, NVMLLibraryMismatchError)}


class FakeNvml:
    """The pynvml calls NvmlReader uses, answered from the fixture at `tick`."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLLibraryMismatchError = NVMLLibraryMismatchError
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

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._answer("nvmlDeviceGetEnforcedPowerLimit", handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(**p)
                for p in self._answer("nvmlDeviceGetComputeRunningProcesses", handle)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(**p)
                for p in self._answer("nvmlDeviceGetGraphicsRunningProcesses", handle)]


def recorded_attempt(pid: int) -> str | None:
    return RECORDED_ATTEMPTS[pid]


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
    reader = NvmlReader(fake, attempt_of=recorded_attempt)
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
        assert got[0]["power_limit_w"] == 700.0
        assert got[1]["power_w"] is None and got[1]["power_limit_w"] is None
        for gpu, dev in zip(got, doc["devices"], strict=True):
            rec = dev["ticks"][tick]["nvmlDeviceGetComputeRunningProcesses"]
            assert [p["pid"] for p in gpu["processes"]] == [p["pid"] for p in rec]
            assert [p["used_memory_mb"] for p in gpu["processes"]] == [
                None if p["usedGpuMemory"] is None else p["usedGpuMemory"] // MIB for p in rec]
    # Power and processes are new keys of the sample: the exact sample of GPU 0, tick 2.
    assert fake.tick == 2 and reader.sample()[0] == {
        "index": 0, "util_percent": 0, "memory_used_mb": 130215, "memory_total_mb": 143771,
        "temperature_c": 49, "power_w": 121.5, "power_limit_w": 700.0,
        "processes": [{"pid": 48213, "used_memory_mb": 129472, "attempt": "12.1"}]}


def test_gpu_processes_are_mapped_to_their_attempts(doc: dict[str, Any]) -> None:
    fake = FakeNvml(doc)
    reader = NvmlReader(fake, attempt_of=recorded_attempt)
    assert reader.sample()[1]["processes"] == []  # tick 0: GPU 1 idle, nothing on it
    fake.tick = 1
    assert reader.sample()[1]["processes"] == [
        {"pid": 48377, "used_memory_mb": 86016, "attempt": "13.2"},
        {"pid": 51002, "used_memory_mb": 768, "attempt": None},  # not llmconsole's
    ]
    fake.tick = 2  # NVML could not say what 48377 uses
    assert reader.sample()[1]["processes"][0] == {
        "pid": 48377, "used_memory_mb": None, "attempt": "13.2"}


def test_compute_and_graphics_lists_merge_by_pid(doc: dict[str, Any]) -> None:
    tick = doc["devices"][0]["ticks"][0]
    tick["nvmlDeviceGetGraphicsRunningProcesses"] = [
        {"pid": 48213, "usedGpuMemory": 2 * MIB},  # the same process: listed once
        {"pid": 700, "usedGpuMemory": 64 * MIB}]
    doc["devices"][1]["raises"]["nvmlDeviceGetGraphicsRunningProcesses"] = (
        "NVMLError_NotSupported")
    got = NvmlReader(FakeNvml(doc), attempt_of=lambda pid: None).sample()
    assert got[0]["processes"] == [
        {"pid": 700, "used_memory_mb": 64, "attempt": None},
        {"pid": 48213, "used_memory_mb": 129472, "attempt": None}]
    assert got[1]["processes"] == []  # the compute list alone still answers


@pytest.mark.parametrize("error", ["NVMLError_NotSupported", "NVMLLibraryMismatchError"])
def test_no_process_list_means_processes_unknown(doc: dict[str, Any], error: str) -> None:
    for dev in doc["devices"]:
        dev["raises"].update({fn: error for fn in ("nvmlDeviceGetComputeRunningProcesses",
                                                   "nvmlDeviceGetGraphicsRunningProcesses")})
    got = NvmlReader(FakeNvml(doc), attempt_of=recorded_attempt).sample()
    assert [g["processes"] for g in got] == [None, None]
    assert got[0]["util_percent"] == 97  # the rest of the sample is unaffected


@pytest.fixture()
def marked_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process started with the agent's attempt marker, as a job is."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE,
                            env={**os.environ, "LLMCONSOLE_ATTEMPT": "7.1"})
    yield proc
    proc.kill()
    proc.wait()


def test_real_processes_are_mapped_by_their_environment(
        doc: dict[str, Any], marked_process: subprocess.Popen[bytes]) -> None:
    ended = subprocess.Popen([sys.executable, "-c", ""], env={"LLMCONSOLE_ATTEMPT": "8.1"})
    ended.wait()  # reaped: its pid names no process any more
    procs = doc["devices"][1]["ticks"][1]["nvmlDeviceGetComputeRunningProcesses"]
    procs[0]["pid"], procs[1]["pid"] = marked_process.pid, os.getpid()
    procs.append({"pid": ended.pid, "usedGpuMemory": MIB})
    fake = FakeNvml(doc)
    fake.tick = 1
    got = NvmlReader(fake).sample()[1]["processes"]
    assert {p["pid"]: p["attempt"] for p in got} == {
        marked_process.pid: "7.1",
        os.getpid(): None,  # no marker: a process llmconsole did not start
        ended.pid: None,
    }


# What the unprivileged reader does: import the telemetry module, start a child.
_NOBODY_CHECK = ("import subprocess, sys, engine.agent.telemetry; "
                 "subprocess.run([sys.executable, '-c', ''], check=True)")


def _python_for(uid: int, env: dict[str, str]) -> str:
    """This interpreter when `uid` may run it; else the system Python of the
    same version (a venv under /root is out of other users' reach)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if candidate and subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", candidate,
                 "-c", _NOBODY_CHECK],
                env=env, cwd="/", capture_output=True).returncode == 0:
            return candidate
    raise AssertionError(f"no {version} that uid {uid} may run with this checkout")


def test_an_agent_that_is_not_root_sees_other_users_processes_as_unknown(
        marked_process: subprocess.Popen[bytes]) -> None:
    """Run as uid 65534: root's marked job is an unknown process (its
    environment is unreadable), while the reader's own marked child is named."""
    assert os.getuid() == 0, "the test runs as root, to have another user's process"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    python = _python_for(NOBODY, env)
    script = (
        "import os, subprocess, sys\n"
        "from engine.agent.telemetry import attempt_marker\n"
        "own = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],\n"
        "                       stdin=subprocess.PIPE, env={'LLMCONSOLE_ATTEMPT': '9.1'})\n"
        f"print(repr(attempt_marker({marked_process.pid})), repr(attempt_marker(own.pid)))\n"
        "own.kill(); own.wait()\n")
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", python, "-c", script],
                          env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "'9.1'"]
    assert attempt_marker(marked_process.pid) == "7.1"  # root reads it


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
    for _ in range(5):  # every tick: an empty list, NVML not tried again
        assert reader.sample() == []
    assert not reader.available
    assert reader.unavailable_reason is not None
    assert fake.calls["nvmlInit"] == 1  # not retried every tick
    reader.close()
    assert "nvmlShutdown" not in fake.calls


def test_lost_gpu_gives_nulls_not_a_crash(doc: dict[str, Any]) -> None:
    every = {fn: "NVMLError_GpuIsLost" for fn in (
        "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetGraphicsRunningProcesses")}
    doc["devices"][1]["raises"] = every
    got = NvmlReader(FakeNvml(doc), attempt_of=recorded_attempt).sample()
    # power_limit_w and processes are new keys of the sample
    assert got[1] == {"index": 1, "util_percent": None, "memory_used_mb": None,
                      "memory_total_mb": None, "temperature_c": None, "power_w": None,
                      "power_limit_w": None, "processes": None}
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
                          "temperature_c", "power_w", "power_limit_w", "processes"}
        for p in g["processes"] or []:
            assert set(p) == {"pid", "used_memory_mb", "attempt"} and p["pid"] > 0


def test_host_sampler() -> None:
    sampler = HostSampler()
    s = sampler.sample()
    assert set(s) == {"cpu_percent", "memory_percent", "memory_used_gb", "load"}
    assert 0.0 <= s["cpu_percent"] <= 100.0
    assert 0.0 < s["memory_percent"] < 100.0
    assert 0.0 < s["memory_used_gb"] <= HostSampler.memory_total_gb()
    assert len(s["load"]) == 3 and all(x >= 0 for x in s["load"])
