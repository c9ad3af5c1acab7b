"""Values the engine passes around: the blueprint of a job (`JobSpec`), its
instances (`Job`, `Attempt`), and the nodes it runs on. Plain frozen
dataclasses, no I/O; `lifecycle` owns the states, `store` persists these."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from engine.guard import GuardSpec, from_stored
from engine.lifecycle import JobState

KINDS = ("train", "compress", "eval", "prepare", "command")
LAUNCHERS = ("local", "horovodrun", "torchrun")

# Bounds on a job's numbers, the same for profiles and for specs sent to the API.
# memory_gb (per node, also a node's in a cluster profile) is a finite number
# within its bounds; the others are integers.
LIMITS: dict[str, tuple[int, int]] = {
    "nodes": (1, 4096),
    "gpus_per_node": (0, 64),
    "cpus": (1, 4096),
    "memory_gb": (0, 1 << 20),
    "priority": (-1000, 1000),
    "retries": (0, 20),
}


@dataclass(frozen=True)
class Resources:
    """What one job asks for. `cpus` and `memory_gb` are per node.

    `nodes_with` narrows the nodes the job may use: each entry is a label or
    a node name, and a node qualifies when every entry is one of its labels
    or its name (`engine.scheduler` applies it). Empty: any node."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus: int = 1
    memory_gb: float = 0.0
    nodes_with: tuple[str, ...] = ()

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class JobSpec:
    """The blueprint of a job, as a profile describes it (after `--set`).

    `argv` is the program and its arguments as a list: nothing is ever parsed
    by a shell. `env` holds only the variables the profile names explicitly.
    """

    name: str
    kind: str
    argv: tuple[str, ...]
    launcher: str = "local"
    resources: Resources = field(default_factory=Resources)
    env: tuple[tuple[str, str], ...] = ()
    retries: int = 0
    priority: int = 0
    workdir: str | None = None
    profile: str | None = None
    guard: GuardSpec | None = None  # the profile's [guard] (engine.guard)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON; "guard" only when the job has one (specs
        without it keep the shape they had before guards existed)."""
        guard = {"guard": self.guard.to_dict()} if self.guard is not None else {}
        return {
            "name": self.name,
            "kind": self.kind,
            "argv": list(self.argv),
            "launcher": self.launcher,
            "resources": {
                "nodes": self.resources.nodes,
                "gpus_per_node": self.resources.gpus_per_node,
                "cpus": self.resources.cpus,
                "memory_gb": self.resources.memory_gb,
                "nodes_with": list(self.resources.nodes_with),
            },
            "env": dict(self.env),
            "retries": self.retries,
            "priority": self.priority,
            "workdir": self.workdir,
            "profile": self.profile,
            **guard,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        res = data.get("resources") or {}
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            argv=tuple(str(a) for a in data["argv"]),
            launcher=str(data.get("launcher", "local")),
            resources=Resources(
                nodes=int(res.get("nodes", 1)),
                gpus_per_node=int(res.get("gpus_per_node", 0)),
                cpus=int(res.get("cpus", 1)),
                memory_gb=float(res.get("memory_gb", 0.0)),
                # absent from specs stored before nodes_with existed: any node
                nodes_with=tuple(str(x) for x in res.get("nodes_with") or ()),
            ),
            env=tuple(sorted((str(k), str(v)) for k, v in (data.get("env") or {}).items())),
            retries=int(data.get("retries", 0)),
            priority=int(data.get("priority", 0)),
            workdir=data.get("workdir"),
            profile=data.get("profile"),
            guard=from_stored(data.get("guard")),  # absent from older specs: no guard
        )


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline: a job spec, and the stages it waits for
    (None: the ones its ``@stage`` arguments name, else the previous one)."""

    name: str
    spec: JobSpec
    after: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """Stages that run as dependent jobs, each passing its output folder on."""

    name: str
    stages: tuple[StageSpec, ...]
    description: str = ""


@dataclass(frozen=True)
class BatchRef:
    """In a batch submit, a dependency on the batch's item `index` (an
    earlier item), whose id is not known until it is inserted."""

    index: int


#: The kinds whose argv is an `engine.workloads` module with an ``--output``
#: folder: what ``@stage`` references name and what gets an output assigned.
WORKLOAD_KINDS = ("train", "compress", "eval", "prepare")

#: The kinds that run one process per node without a distributed launcher:
#: a job of such a kind on N nodes starts its argv on every node with
#: ``--part K/N`` appended (`engine.launch.launch_parts`).
PART_KINDS = ("prepare",)


def output_dir(spec: JobSpec) -> str | None:
    """The ``--output`` folder of a workload job (None for other jobs): the
    value of its last ``--output DIR`` or ``--output=DIR``, as the workload's
    parser reads it. For a prepare job it is the prepared data folder that a
    later stage's ``data = "@prepare"`` receives."""
    if spec.kind not in WORKLOAD_KINDS:
        return None
    argv = list(spec.argv)
    found: str | None = None
    for i, arg in enumerate(argv):
        if arg == "--output" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--output="):
            found = arg.removeprefix("--output=")
    return found


@dataclass(frozen=True)
class Placement:
    """The share of one node given to one attempt: GPU indices and CPU slots."""

    node: str
    gpus: tuple[int, ...]
    cpus: int


@dataclass(frozen=True)
class Attempt:
    """One run of a job. A retry is a new attempt; an attempt's terminal state
    is never left."""

    job_id: int
    number: int
    state: JobState
    placements: tuple[Placement, ...] = ()
    pid: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    cancel_requested: bool = False
    not_before: float | None = None  # queued until then (a retry's backoff); None: at once

    @property
    def key(self) -> str:
        """The attempt id used on the nodes: run directories, env markers."""
        return attempt_key(self.job_id, self.number)


def attempt_key(job_id: int, number: int) -> str:
    return f"{job_id}.{number}"


@dataclass(frozen=True)
class Job:
    """An instance of a `JobSpec` in the queue. `state` is the state of its
    latest attempt (jobs start with attempt 1)."""

    id: int
    spec: JobSpec
    owner_uid: int
    state: JobState
    attempt: int
    submitted_at: float
    updated_at: float
    after: tuple[int, ...] = ()
    reason: str | None = None
    exit_code: int | None = None
    not_before: float | None = None  # the current attempt's (see Attempt.not_before)


@dataclass(frozen=True)
class Event:
    """One line of a job's history: a state transition, with why and who."""

    job_id: int
    attempt: int
    time: float
    from_state: JobState | None
    to_state: JobState
    cause: str
    actor: str


@dataclass(frozen=True)
class NodeSpec:
    """One node of a cluster profile. `host` is None for the head node itself
    (the agent runs as a local subprocess); otherwise an address or an alias
    of the user's ~/.ssh/config, reached with the OpenSSH client."""

    name: str
    host: str | None = None
    port: int | None = None  # None: ssh's own choice (~/.ssh/config, else 22)
    user: str | None = None  # None: ssh's own choice
    identity: str | None = None  # a private key file (ssh -i); None: ssh's own choice
    python: str | None = None  # the interpreter on the node; None: see node_python()
    root: str | None = None  # the node's run directory; None: see node_root()
    gpus: int | None = None  # None: as many as the node's agent reports
    slots: int | None = None  # None: the node's CPU count, as its agent reports
    memory_gb: float | None = None  # None: not limited by the scheduler
    labels: tuple[str, ...] = ()  # what jobs may ask for (resources.nodes_with)

    @property
    def is_local(self) -> bool:
        return self.host is None


NODES_DIR = "nodes"  # under the engine home: one run root per remote node, by name


def node_root(spec: NodeSpec, engine_home: Path | str) -> str:
    """The node's run directory (its agent's ``--root``; run folders go in
    ``runs/`` under it), as a path on that node.

    - `spec.root` when the profile sets it, verbatim: it may start with
      ``~``, the home of the node's user, expanded on the node (by whoever
      starts the agent there, never here).
    - else, for the head node (no host), the engine home itself: its
      ``runs/`` hold the head node's attempts, as before clusters existed.
    - else ``<engine home>/nodes/<node name>``: the engine home's path (the
      same on every node, see `node_python`) with the node's name in it, so
      nodes that share a home, such as the test hosts on one machine or a
      home on NFS, never share a run directory.
    """
    if spec.root is not None:
        return spec.root
    if spec.is_local:
        return str(engine_home)
    return str(PurePosixPath(engine_home) / NODES_DIR / spec.name)


def node_python(spec: NodeSpec) -> str:
    """The interpreter that runs the agent on the node: `spec.python` when
    the profile sets it (verbatim, ``~`` expanded on the node), else the
    engine's own `sys.executable`. The default assumes the same software
    everywhere: the project and its .venv at the same path on every node (a
    shared home, or the same `make setup` on each)."""
    return spec.python if spec.python is not None else sys.executable


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    nodes: tuple[NodeSpec, ...]
    admins: tuple[str, ...] = ()
    known_hosts: str | None = None  # None: the user's ~/.ssh/known_hosts
    share_logs: bool = False  # True: every user may read every job's logs, metrics, processes

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)
