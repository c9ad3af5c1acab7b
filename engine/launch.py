"""Pure builders for what a job process gets: its argv (wrapped by the
profile's launcher: local, horovodrun or torchrun) and its environment,
allow-listed from the engine's own. No I/O; nothing here ever goes through a
shell, so names and arguments stay plain bytes whatever they contain.

horovodrun copies the environment it is given onto every worker's command
line, which is why the job environment is an allow-list and not a copy,
and why a horovodrun job with secrets starts behind engine/secret_exec.py
(`secret_hold_prefix`, and `rank` before each rank's program): the secrets
reach the ranks around horovodrun (engine/secrets.py).
Across nodes it also runs ssh with host-key checking off, so there the
launch goes through engine/sshwrap (`ssh.py launch` before horovodrun: the
job's ssh is ours, strict, with each node's port, user and identity).

A job of a part kind (`engine.model.PART_KINDS`: prepare) on N nodes needs
no launcher: its argv starts on every node of the allocation, each with
``--part K/N`` appended (K from 0, the head node's part first), the way
torchrun across nodes starts on every node; the attempt ends when every part
has, and the first part to fail stops the others (`engine.runtime`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import host_gpus, secret_exec, secrets
from engine.model import PART_KINDS, JobSpec, NodeSpec, Placement
from engine.sshwrap import ssh as sshwrap

HOST_GPUS_SCRIPT = Path(host_gpus.__file__).resolve()
SSHWRAP_SCRIPT = Path(sshwrap.__file__).resolve()
SECRET_EXEC_SCRIPT = Path(secret_exec.__file__).resolve()
TORCHRUN_RDZV_PORT = 29400  # torchrun's own default for its c10d rendezvous

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
    """The allow-listed part of `base`, then the profile's own variables.
    Secret-looking names of `base` are left out, allow-listed or not: only
    the profile gives a job secrets (engine/secrets.py)."""
    env = {
        k: v for k, v in base.items() if (k in ALLOWED_ENV or k.startswith(ALLOWED_PREFIXES))
        and not secrets.is_secret_name(k)
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the agent sets it from the allocation
    if spec.launcher == "horovodrun" and base.get(sshwrap.ENV_CONFIG):
        env[sshwrap.ENV_CONFIG] = base[sshwrap.ENV_CONFIG]  # a path: the engine's ssh config
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
    *,
    known_hosts: str | None = None,
) -> list[str]:
    """The full argv run on the first node of the allocation (for torchrun
    across nodes, on every node: see `launch_parts`). horovodrun across
    nodes starts behind `sshwrap_prefix`; `known_hosts` is the cluster's."""
    argv = list(spec.argv)
    if spec.launcher == "local":
        return argv
    placements = head_first(placements, nodes)
    per_node = ranks_per_node(spec)
    total = per_node * len(placements)
    if spec.launcher == "horovodrun":
        # on one node the launch runs there: localhost, so horovodrun needs no ssh
        hosts = f"localhost:{per_node}" if len(placements) == 1 else \
            ",".join(f"{_host(nodes[p.node])}:{per_node}" for p in placements)
        wrapped = [launcher_program("horovodrun", python), "-np", str(total), "-H", hosts]
        if len(placements) > 1:
            wrapped = [*sshwrap_prefix(placements, nodes, python, known_hosts), *wrapped]
        if spec.resources.gpus_per_node == 0:
            wrapped.append("--gloo")
        held = secrets.secret_names(dict(spec.env))
        if held:
            # horovodrun writes its environment onto every rank's command line:
            # the secrets go around it (engine/secrets.py)
            wrapped = [*secret_hold_prefix(held, python), *wrapped,
                       python, "-I", "-S", str(SECRET_EXEC_SCRIPT), "rank", "--"]
        if _per_host_gpus(spec, placements):
            # every rank gets the same env: it picks its host's GPUs itself
            wrapped += [python, "-I", "-S", str(HOST_GPUS_SCRIPT), "--"]
        return [*wrapped, *argv]
    if spec.launcher == "torchrun":
        wrapped = [launcher_program("torchrun", python), f"--nproc-per-node={per_node}"]
        if len(placements) == 1:
            wrapped.append("--standalone")
        else:
            head = _host(nodes[placements[0].node])
            wrapped += [f"--nnodes={len(placements)}", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint={head}:{TORCHRUN_RDZV_PORT}"]
        if Path(argv[0]).name.startswith("python"):
            return [*wrapped, *argv[1:]]  # torchrun starts Python itself (-m is its flag too)
        return [*wrapped, "--no-python", *argv]
    raise ValueError(f"unknown launcher {spec.launcher!r}")


@dataclass(frozen=True)
class LaunchPart:
    """What one node's agent is asked to start for an attempt."""

    node: str
    argv: tuple[str, ...]
    gpus: tuple[int, ...]  # this node's GPUs: the launcher's CUDA_VISIBLE_DEVICES


def head_first(placements: Sequence[Placement], nodes: Mapping[str, NodeSpec]
               ) -> list[Placement]:
    """The allocation with the head node (no host) first, the rest in their
    order: the head is "localhost" in `-H` and the rendezvous, which only
    means the head on the head itself, so the launch starts there."""
    return sorted(placements, key=lambda p: not nodes[p.node].is_local)


PART_OPTION = "--part"
FIRST_PART = 0  # parts are numbered 0..N-1, as prepare's --part reads them


def part_argv(argv: Sequence[str], index: int, count: int) -> tuple[str, ...]:
    """`argv` for part `index` (from 0) of `count`: ``--part K/N`` appended."""
    return (*argv, PART_OPTION, f"{index + FIRST_PART}/{count}")


def runs_in_parts(spec: JobSpec) -> bool:
    """Whether `spec` starts one part per node (a part kind on several nodes)."""
    return spec.kind in PART_KINDS and spec.resources.nodes > 1


def launch_parts(
    spec: JobSpec,
    placements: Sequence[Placement],
    nodes: Mapping[str, NodeSpec],
    python: str = sys.executable,
    *,
    known_hosts: str | None = None,
) -> list[LaunchPart]:
    """The processes to start, one per node that runs a launcher: the first
    node for local and horovodrun jobs (horovodrun reaches the others over
    SSH itself), every node for torchrun across nodes (each node's torchrun
    meets the others at the rendezvous on the first), and every node for a
    part kind on several nodes, each with its ``--part K/N``."""
    placements = head_first(placements, nodes)
    argv = tuple(launch_argv(spec, placements, nodes, python, known_hosts=known_hosts))
    if runs_in_parts(spec) and len(placements) > 1:
        return [LaunchPart(p.node, part_argv(argv, i, len(placements)), p.gpus)
                for i, p in enumerate(placements)]
    if spec.launcher == "torchrun" and len(placements) > 1:
        return [LaunchPart(p.node, argv, p.gpus) for p in placements]
    return [LaunchPart(placements[0].node, argv, placements[0].gpus)]


def ssh_hosts(placements: Sequence[Placement], nodes: Mapping[str, NodeSpec]
              ) -> dict[str, dict[str, str | int]]:
    """How the launching node reaches each host of the allocation, by the
    name horovodrun is given (`-H`): the node's port, user and identity
    (paths, never secrets), for the hosts whose profile sets any."""
    table: dict[str, dict[str, str | int]] = {}
    for p in placements:
        node = nodes[p.node]
        entry: dict[str, str | int] = {k: v for k, v in (("port", node.port), ("user", node.user),
                                                         ("identity", node.identity))
                                       if v is not None}
        if node.host is not None and entry:
            table[node.host] = entry
    return table


def sshwrap_prefix(placements: Sequence[Placement], nodes: Mapping[str, NodeSpec],
                   python: str = sys.executable, known_hosts: str | None = None) -> list[str]:
    """`python -I -S ssh.py launch --hosts JSON [--known-hosts FILE] --`: what
    horovodrun across nodes starts behind, so that every ssh it runs is
    engine/sshwrap's (see its docstring)."""
    table = json.dumps(ssh_hosts(placements, nodes), sort_keys=True, separators=(",", ":"))
    prefix = [python, "-I", "-S", str(SSHWRAP_SCRIPT), "launch", "--hosts", table]
    if known_hosts is not None:
        prefix += ["--known-hosts", known_hosts]
    return [*prefix, "--"]


def secret_hold_prefix(names: Sequence[str], python: str = sys.executable) -> list[str]:
    """`python -I -S secret_exec.py hold --names A,B --`: the first program
    of a horovodrun job with secrets; `names` are names, never values."""
    return [python, "-I", "-S", str(SECRET_EXEC_SCRIPT), "hold", "--names", ",".join(names),
            "--"]


def placement_environment(spec: JobSpec, placements: Sequence[Placement],
                          nodes: Mapping[str, NodeSpec]) -> dict[str, str]:
    """Variables that depend on where the job was placed: for horovodrun with
    GPUs on several nodes, each host's GPUs (read by host_gpus.py)."""
    if not _per_host_gpus(spec, placements):
        return {}
    table = {_host(nodes[p.node]): p.gpus for p in placements}
    return {host_gpus.VARIABLE: host_gpus.format_map(table)}


def _per_host_gpus(spec: JobSpec, placements: Sequence[Placement]) -> bool:
    return spec.launcher == "horovodrun" and len(placements) > 1 \
        and spec.resources.gpus_per_node > 0


def _host(node: NodeSpec) -> str:
    return node.host or "localhost"
