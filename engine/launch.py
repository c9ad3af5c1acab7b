"""Pure builders for what a job process gets: its argv (wrapped by the
profile's launcher: local, horovodrun or torchrun) and its environment,
allow-listed from the engine's own. No I/O; nothing here ever goes through a
shell, so names and arguments stay plain bytes whatever they contain.

horovodrun copies the environment it is given onto every worker's command
line, which is why the job environment is an allow-list and not a copy."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.model import JobSpec, NodeSpec, Placement

ALLOWED_ENV = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "TERM", "VIRTUAL_ENV", "PYTHONPATH", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME",
        "TRANSFORMERS_OFFLINE", "TORCH_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "SSL_CERT_FILE",
    }
)
ALLOWED_PREFIXES = ("LC_", "NCCL_", "HOROVOD_", "GLOO_", "CUDA_")


def job_environment(base: Mapping[str, str], spec: JobSpec) -> dict[str, str]:
    """The allow-listed part of `base`, then the profile's own variables."""
    env = {
        k: v for k, v in base.items() if k in ALLOWED_ENV or k.startswith(ALLOWED_PREFIXES)
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the agent sets it from the allocation
    env.update(dict(spec.env))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ranks_per_node(spec: JobSpec) -> int:
    """A rank per GPU; on CPU-only jobs, a rank per CPU slot."""
    return spec.resources.gpus_per_node or spec.resources.cpus


def launcher_program(name: str, python: str = sys.executable) -> str:
    """The launcher installed beside the engine's interpreter, else PATH's."""
    beside = Path(python).parent / name
    return str(beside) if beside.exists() else name


def launch_argv(
    spec: JobSpec,
    placements: Sequence[Placement],
    nodes: Mapping[str, NodeSpec],
    python: str = sys.executable,
) -> list[str]:
    """The full argv run on the first node of the allocation."""
    argv = list(spec.argv)
    if spec.launcher == "local":
        return argv
    per_node = ranks_per_node(spec)
    total = per_node * len(placements)
    if spec.launcher == "horovodrun":
        hosts = ",".join(f"{_host(nodes[p.node])}:{per_node}" for p in placements)
        wrapped = [launcher_program("horovodrun", python), "-np", str(total), "-H", hosts]
        if spec.resources.gpus_per_node == 0:
            wrapped.append("--gloo")
        return [*wrapped, *argv]
    if spec.launcher == "torchrun":
        wrapped = [launcher_program("torchrun", python), f"--nproc-per-node={per_node}"]
        if len(placements) == 1:
            wrapped.append("--standalone")
        else:
            head = _host(nodes[placements[0].node])
            wrapped += [f"--nnodes={len(placements)}", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint={head}:29400"]
        if Path(argv[0]).name.startswith("python"):
            return [*wrapped, *argv[1:]]  # torchrun starts Python itself (-m is its flag too)
        return [*wrapped, "--no-python", *argv]
    raise ValueError(f"unknown launcher {spec.launcher!r}")


def _host(node: NodeSpec) -> str:
    return node.host or "localhost"
