"""The engine <-> agent wire protocol: one JSON object per line, commands on
the agent's stdin, events on its stdout, typed in both directions. It does
no I/O.

- Commands (engine -> agent): `Start`, `Stop`, `Attach`, `Reap`, `Dump`,
  `Procs`, `Probe`, `Simple` (list, ping, shutdown). `cmd.to_wire()` is the
  JSON object the engine sends; `parse_command(line)` is its exact inverse
  on the agent's side
  (parse_command(json.dumps(cmd.to_wire())) == cmd), and validates: a
  `ProtocolError` says what is wrong and is answered with an "error" event.
  `start` carries "uid": the job's owner, whom the agent runs it as (null:
  the agent's own user; an agent that is not root refuses any other uid).
- Events (agent -> engine): `Hello`, `Telemetry`, `Started`, `Log`,
  `Metric`, `Exited`, `Lost`, `Error`, `Runs`, `Pong`, `ProbeResult`,
  `ProcsResult`, `Dumped`; the agent writes
  `ev.to_wire()`, the engine reads `parse_event(obj)`, again exact inverses.
  An event name this engine does not know parses to `Unknown` (a newer agent
  may say more); a known event with a missing or mistyped field, or an
  object without an "ev" name, is a `ProtocolError`. Fields a known event
  does not define are ignored.
- `VERSION` is in every hello; `check_hello` refuses an agent that speaks
  another version (the engine and every node must run the same llmconsole).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_COMMAND_BYTES = 16 * 1024 * 1024
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no change" to setreuid, so it is never a user


_ATTEMPT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def valid_attempt(value: object) -> bool:
    """An attempt id is used as a directory name: "12.1" (see
    engine.model.attempt_key); letters, digits, '.', '_' and '-' only, no '..'."""
    return (isinstance(value, str) and _ATTEMPT_RE.fullmatch(value) is not None
            and ".." not in value)


class ProtocolError(ValueError):
    """A command the agent cannot act on, or an event the engine cannot read.
    `attempt`/`op` name it when known."""

    def __init__(self, message: str, attempt: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.attempt = attempt
        self.op = op


@dataclass(frozen=True)
class Start:
    attempt: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    gpus: tuple[int, ...] = ()
    uid: int | None = None  # the job's owner; None: run as the agent's own user

    def to_wire(self) -> dict[str, Any]:
        return {"op": "start", "attempt": self.attempt, "argv": list(self.argv),
                "env": dict(self.env), "cwd": self.cwd, "gpus": list(self.gpus),
                "uid": self.uid}


@dataclass(frozen=True)
class Stop:
    attempt: str
    grace: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"op": "stop", "attempt": self.attempt, "grace": self.grace}


@dataclass(frozen=True)
class Reap:
    """End what is left of an attempt on a node that runs no part of it:
    the ranks horovodrun started there over SSH, which carry the markers of
    the launching node (LLMCONSOLE_ATTEMPT=attempt, LLMCONSOLE_RUN_DIR=
    run_dir, that node's run directory). SIGTERM, then SIGKILL after
    `grace` (None: the agent's own)."""

    attempt: str
    run_dir: str
    grace: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"op": "reap", "attempt": self.attempt, "run_dir": self.run_dir,
                "grace": self.grace}


@dataclass(frozen=True)
class Attach:
    attempt: str
    output: int = 0
    metrics: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"op": "attach", "attempt": self.attempt,
                "offsets": {"output": self.output, "metrics": self.metrics}}


@dataclass(frozen=True)
class Simple:
    """list, shutdown and ping (`id` is echoed back in the pong)."""

    op: str
    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "id": self.id}


@dataclass(frozen=True)
class Peer:
    """Another node, as the first node of a job across nodes reaches it over
    ssh (the way horovodrun will)."""

    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.user,
                "identity": self.identity, "known_hosts": self.known_hosts}


@dataclass(frozen=True)
class Probe:
    """`nodes check`: report the clock, free disk under the root, and whether
    each peer answers over ssh with strict host keys; answered by a
    ProbeResult with the same id."""

    id: int
    peers: tuple[Peer, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"op": "probe", "id": self.id, "peers": [p.to_wire() for p in self.peers]}


@dataclass(frozen=True)
class Procs:
    """List the processes of an attempt on this node (those carrying its
    markers, as `reap` finds them): answered by a ProcsResult, same id."""

    id: int
    attempt: str
    run_dir: str

    def to_wire(self) -> dict[str, Any]:
        return {"op": "procs", "id": self.id, "attempt": self.attempt, "run_dir": self.run_dir}


LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def valid_label(value: object) -> bool:
    """A dump label names a folder (stacks/<label>/): 1-64 letters, digits,
    '.', '_' or '-', and not "." or ".."."""
    return (isinstance(value, str) and LABEL_RE.fullmatch(value) is not None
            and value not in (".", ".."))


@dataclass(frozen=True)
class Dump:
    """Take a stack dump (py-spy) of every live process of the attempt on
    this node: those whose environment carries LLMCONSOLE_ATTEMPT=attempt and
    LLMCONSOLE_RUN_DIR = this node's run directory of the attempt or
    `run_dir` (the launching node's, as in Reap; None: this node's only, or,
    where this node has no run directory for the attempt, any process marked
    with the attempt). Each dump goes to <run dir>/stacks/<label>/
    rank-<R>-<node>-pid<P>.txt; answered by exactly one `Dumped` for the
    attempt (a bad label or attempt: an "error" event with op "dump")."""

    attempt: str
    label: str
    run_dir: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"op": "dump", "attempt": self.attempt, "label": self.label,
                "run_dir": self.run_dir}


Command = Start | Stop | Attach | Reap | Simple | Probe | Procs | Dump


def _no_nul(value: str, what: str, attempt: str, op: str) -> str:
    """`value` if it can reach exec(): no NUL byte, no lone surrogate."""
    if "\0" in value:
        raise ProtocolError(f"{what} contains a NUL byte", attempt, op)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} is not UTF-8 text (a lone surrogate)", attempt,
                            op) from None
    return value


def _attempt(msg: dict[str, Any], op: str) -> str:
    attempt = msg.get("attempt")
    if not valid_attempt(attempt):
        raise ProtocolError(f"{op}: invalid attempt id {attempt!r}", None, op)
    return str(attempt)


def _parse_start(msg: dict[str, Any]) -> Start:
    attempt = _attempt(msg, "start")
    argv = msg.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("start: argv must be a non-empty list of strings", attempt, "start")
    if not argv[0]:
        raise ProtocolError("start: argv[0] is empty", attempt, "start")
    for a in argv:
        _no_nul(a, "an argument", attempt, "start")
    env = msg.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise ProtocolError("start: env must be an object of strings", attempt, "start")
    clean_env: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(v, str) or not k or "=" in k:
            raise ProtocolError(f"start: bad env entry {k!r} (names without '=', string "
                                "values)", attempt, "start")
        clean_env[_no_nul(k, "an env name", attempt, "start")] = _no_nul(
            v, f"env {k}", attempt, "start")
    cwd = msg.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
        raise ProtocolError("start: cwd must be null or an absolute path", attempt, "start")
    if cwd is not None:
        _no_nul(cwd, "cwd", attempt, "start")
    gpus = msg.get("gpus", [])
    if gpus is None:
        gpus = []
    if not isinstance(gpus, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
        raise ProtocolError("start: gpus must be a list of GPU indices", attempt, "start")
    uid = msg.get("uid")
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)
                            or not 0 <= uid <= MAX_UID):
        raise ProtocolError(f"start: uid must be null or a user id in [0, {MAX_UID}]",
                            attempt, "start")
    return Start(attempt, tuple(argv), clean_env, cwd, tuple(gpus), uid)


def _grace(msg: dict[str, Any], attempt: str, op: str) -> float | None:
    grace = msg.get("grace")
    if grace is not None and (not isinstance(grace, (int, float)) or isinstance(grace, bool)
                              or not 0 <= grace <= 86400):
        raise ProtocolError(f"{op}: grace must be seconds in [0, 86400]", attempt, op)
    return None if grace is None else float(grace)


def _offset(value: object, name: str, attempt: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"attach: offsets.{name} must be a byte offset >= 0",
                            attempt, "attach")
    return value


def _parse_probe(msg: dict[str, Any]) -> Probe:
    probe_id = msg.get("id")
    if not isinstance(probe_id, int) or isinstance(probe_id, bool):
        raise ProtocolError("probe: id must be an integer", op="probe")
    peers = msg.get("peers") or []
    if not isinstance(peers, list):
        raise ProtocolError("probe: peers must be a list", op="probe")
    out = []
    for item in peers:
        if not isinstance(item, dict) or not isinstance(item.get("host"), str) \
                or not item["host"] or item["host"].startswith("-"):
            raise ProtocolError("probe: each peer needs a host (not starting with '-')",
                                op="probe")
        port = item.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                                 or not 1 <= port <= 65535):
            raise ProtocolError("probe: a peer's port must be 1-65535", op="probe")
        text = {}
        for key in ("user", "identity", "known_hosts"):
            value = item.get(key)
            if value is not None and (not isinstance(value, str) or "\0" in value
                                      or value.startswith("-")):
                raise ProtocolError(f"probe: a peer's {key} must be a string", op="probe")
            text[key] = value
        out.append(Peer(item["host"], port, text["user"], text["identity"],
                        text["known_hosts"]))
    return Probe(probe_id, tuple(out))


def parse_command(line: bytes) -> Command:
    """One stdin line -> a command. Raises ProtocolError."""
    if len(line) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command longer than {MAX_COMMAND_BYTES} bytes")
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"malformed command (not JSON): {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed command: not a JSON object")
    op = msg.get("op")
    if op == "start":
        return _parse_start(msg)
    if op == "stop":
        attempt = _attempt(msg, "stop")
        return Stop(attempt, _grace(msg, attempt, "stop"))
    if op == "procs":
        attempt = _attempt(msg, "procs")
        run_dir, procs_id = msg.get("run_dir"), msg.get("id")
        if not isinstance(run_dir, str) or not os.path.isabs(run_dir):
            raise ProtocolError("procs: run_dir must be an absolute path", attempt, "procs")
        if not isinstance(procs_id, int) or isinstance(procs_id, bool):
            raise ProtocolError("procs: id must be an integer", attempt, "procs")
        return Procs(procs_id, attempt, _no_nul(run_dir, "run_dir", attempt, "procs"))
    if op == "reap":
        attempt = _attempt(msg, "reap")
        run_dir = msg.get("run_dir")
        if not isinstance(run_dir, str) or not os.path.isabs(run_dir):
            raise ProtocolError("reap: run_dir must be an absolute path", attempt, "reap")
        return Reap(attempt, _no_nul(run_dir, "run_dir", attempt, "reap"),
                    _grace(msg, attempt, "reap"))
    if op == "dump":
        attempt = _attempt(msg, "dump")
        label, run_dir = msg.get("label"), msg.get("run_dir")
        if not valid_label(label):
            raise ProtocolError(f"dump: label {label!r:.80} is not a folder name: use 1-64 "
                                "letters, digits, '.', '_' or '-'", attempt, "dump")
        if run_dir is not None and (not isinstance(run_dir, str) or not os.path.isabs(run_dir)):
            raise ProtocolError("dump: run_dir must be null or an absolute path", attempt,
                                "dump")
        if run_dir is not None:
            _no_nul(run_dir, "run_dir", attempt, "dump")
        return Dump(attempt, str(label), run_dir)
    if op == "attach":
        attempt = _attempt(msg, "attach")
        offsets = msg.get("offsets") or {}
        if not isinstance(offsets, dict):
            raise ProtocolError("attach: offsets must be an object", attempt, "attach")
        return Attach(attempt, _offset(offsets.get("output"), "output", attempt),
                      _offset(offsets.get("metrics"), "metrics", attempt))
    if op in ("list", "shutdown", "ping"):
        return Simple(op, msg.get("id"))
    if op == "probe":
        return _parse_probe(msg)
    raise ProtocolError(f"unknown op {op!r}", op=op if isinstance(op, str) else None)


# ---- events (agent -> engine) ---------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run directory as `hello` and `runs` list it (runs.run_summary)."""

    attempt: str
    pid: int | None  # the job process; None before it started or if it never did
    alive: bool
    exit: dict[str, Any] | None  # exit.json as the supervisor wrote it

    def to_wire(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "pid": self.pid, "alive": self.alive,
                "exit": self.exit}


@dataclass(frozen=True)
class Hello:
    """The first line: who the agent is, its inventory and its runs."""

    node: str
    pid: int
    version: int
    host: str
    cpus: int | None
    memory_gb: float | None
    gpus: tuple[dict[str, Any], ...]  # NVML inventory, one object per GPU
    runs: tuple[RunSummary, ...]
    # engine.versions.software_versions() of the node; empty from an older agent
    software: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "hello", "node": self.node, "pid": self.pid, "version": self.version,
                "host": self.host, "cpus": self.cpus, "memory_gb": self.memory_gb,
                "gpus": [dict(g) for g in self.gpus],
                "runs": [r.to_wire() for r in self.runs], "software": dict(self.software)}


@dataclass(frozen=True)
class Telemetry:
    """One sample of the node, every `interval` seconds (engine.agent.telemetry).

    `gpus` is one object per GPU (none on a node without one), each with:
    "index"; "util_percent"; "memory_used_mb" and "memory_total_mb" (MiB);
    "temperature_c"; "power_w" (draw) and "power_limit_w" (the enforced
    limit), in watts; "processes", the processes on the GPU by pid, each
    {"pid", "used_memory_mb", "attempt"}, where "attempt" is the attempt id
    from the process's LLMCONSOLE_ATTEMPT marker, or null for an unknown
    process (not started by llmconsole, or its environment unreadable by
    the agent). Any figure NVML cannot give is null ("processes" too, when
    neither process list can be read). Keys an engine does not know are
    kept: readers use .get()."""

    node: str
    time: float
    cpu_percent: float | None
    memory_percent: float | None
    memory_used_gb: float | None
    load: tuple[float | None, ...]  # 1, 5 and 15 minutes; None where the OS has none
    gpus: tuple[dict[str, Any], ...]  # NVML samples, one object per GPU

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "telemetry", "node": self.node, "time": self.time,
                "cpu_percent": self.cpu_percent, "memory_percent": self.memory_percent,
                "memory_used_gb": self.memory_used_gb, "load": list(self.load),
                "gpus": [dict(g) for g in self.gpus]}


@dataclass(frozen=True)
class Started:
    attempt: str
    pid: int | None
    pgid: int | None
    supervisor: int | None
    time: float | None

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "started", "attempt": self.attempt, "pid": self.pid, "pgid": self.pgid,
                "supervisor": self.supervisor, "time": self.time}


@dataclass(frozen=True)
class Log:
    """One line of output.log: bytes [offset, end) of the file, `line`
    without its newline, decoded with surrogateescape (exact bytes back with
    line.encode("utf-8", "surrogateescape"))."""

    attempt: str
    offset: int
    end: int
    line: str

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "log", "attempt": self.attempt, "offset": self.offset, "end": self.end,
                "line": self.line}


@dataclass(frozen=True)
class Metric:
    """One record of metrics.jsonl, at bytes [offset, end) of the file."""

    attempt: str
    offset: int
    end: int
    record: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "metric", "attempt": self.attempt, "offset": self.offset,
                "end": self.end, "record": self.record}


@dataclass(frozen=True)
class Exited:
    attempt: str
    code: int | None  # None when ended by a signal
    signal: int | None
    time: float | None

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "exited", "attempt": self.attempt, "code": self.code,
                "signal": self.signal, "time": self.time}


@dataclass(frozen=True)
class Lost:
    attempt: str
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "lost", "attempt": self.attempt, "reason": self.reason}


@dataclass(frozen=True)
class Error:
    """A command the agent could not act on, or trouble with a run; with
    op "start" and an attempt, that start was refused outright."""

    message: str
    attempt: str | None = None
    op: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"ev": "error", "message": self.message}
        if self.attempt is not None:
            wire["attempt"] = self.attempt
        if self.op is not None:
            wire["op"] = self.op
        return wire


@dataclass(frozen=True)
class Runs:
    """The answer to `list`."""

    runs: tuple[RunSummary, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "runs", "runs": [r.to_wire() for r in self.runs]}


@dataclass(frozen=True)
class Pong:
    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "pong", "id": self.id}


@dataclass(frozen=True)
class ProbeResult:
    """The answer to a Probe: the agent's clock (for the skew), free disk
    under its root, and each peer: {"host", "ok", "detail", "seconds"}."""

    id: int
    time: float
    root: str
    disk_free_gb: float | None
    peers: tuple[dict[str, Any], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "probe", "id": self.id, "time": self.time, "root": self.root,
                "disk_free_gb": self.disk_free_gb, "peers": [dict(p) for p in self.peers]}


@dataclass(frozen=True)
class ProcsResult:
    """The answer to Procs: one object per process, {"pid", "ppid", "name",
    "rank" (HOROVOD_RANK or RANK, or null), "cpu_percent", "rss_mb",
    "gpu_memory_mb" (from NVML, null without a GPU), "state"}."""

    id: int
    processes: tuple[dict[str, Any], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "procs", "id": self.id, "processes": [dict(p) for p in self.processes]}


@dataclass(frozen=True)
class Dumped:
    """The answer to Dump: the files written on this node (absolute paths,
    one per process dumped) and one line per process that could not be
    dumped, naming its pid and the reason (py-spy missing, permission
    denied, process gone, timed out). Both empty: no process of the attempt
    runs on this node."""

    attempt: str
    files: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "dumped", "attempt": self.attempt, "files": list(self.files),
                "errors": list(self.errors)}


@dataclass(frozen=True)
class Unknown:
    """An event this engine does not know (from a newer agent): kept whole."""

    ev: str
    fields: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {**self.fields, "ev": self.ev}


Event = (Hello | Telemetry | Started | Log | Metric | Exited | Lost | Error | Runs | Pong
         | ProbeResult | ProcsResult | Dumped | Unknown)


class _Fields:
    """Typed reads of one event object; a wrong field is a ProtocolError
    naming the event and the field."""

    def __init__(self, ev: str, obj: dict[str, Any]) -> None:
        self.ev, self.obj = ev, obj
        attempt = obj.get("attempt")
        self.attempt = attempt if isinstance(attempt, str) else None

    def bad(self, key: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self.ev} event: {key} must be {expected}, got "
                             f"{self.obj.get(key)!r:.80}", self.attempt)

    def text(self, key: str) -> str:
        value = self.obj.get(key)
        if not isinstance(value, str):
            raise self.bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.obj.get(key) is None else self.text(key)

    def attempt_id(self) -> str:
        value = self.obj.get("attempt")
        if not valid_attempt(value):
            raise self.bad("attempt", "an attempt id")
        return str(value)

    def integer(self, key: str, minimum: int | None = None) -> int:
        value = self.obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or (
                minimum is not None and value < minimum):
            raise self.bad(key, "an integer" if minimum is None else f"an integer >= {minimum}")
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self.obj.get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self.obj.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.bad(key, "a number")
        return value

    def opt_number(self, key: str) -> float | None:
        return None if self.obj.get(key) is None else self.number(key)

    def flag(self, key: str) -> bool:
        value = self.obj.get(key)
        if not isinstance(value, bool):
            raise self.bad(key, "true or false")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.obj.get(key)
        if not isinstance(value, dict):
            raise self.bad(key, "an object")
        return value

    def opt_mapping(self, key: str) -> dict[str, Any] | None:
        return None if self.obj.get(key) is None else self.mapping(key)

    def objects(self, key: str) -> tuple[dict[str, Any], ...]:
        value = self.obj.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.bad(key, "a list of objects")
        return tuple(value)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.obj.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "a list of strings")
        return tuple(value)

    def numbers(self, key: str) -> tuple[float | None, ...]:
        value = self.obj.get(key)
        if not isinstance(value, list) or not all(
                v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value):
            raise self.bad(key, "a list of numbers (or nulls)")
        return tuple(value)

    def strings(self, key: str) -> dict[str, str]:
        """An object of strings; absent means empty."""
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.bad(key, "an object of strings")
        return dict(value)

    def runs(self) -> tuple[RunSummary, ...]:
        out = []
        for item in self.objects("runs"):
            f = _Fields(f"{self.ev} event's run", item)
            out.append(RunSummary(f.attempt_id(), f.opt_integer("pid"), f.flag("alive"),
                                  f.opt_mapping("exit")))
        return tuple(out)


def parse_event(obj: dict[str, Any]) -> Event:
    """One decoded stdout line of the agent -> a typed event (see the module
    docstring). Raises ProtocolError."""
    if not isinstance(obj, dict):
        raise ProtocolError("malformed event: not a JSON object")
    ev = obj.get("ev")
    if not isinstance(ev, str):
        raise ProtocolError(f"malformed event: no \"ev\" name in {obj!r:.120}")
    f = _Fields(ev, obj)
    if ev == "log":
        offset = f.integer("offset", 0)
        return Log(f.attempt_id(), offset, f.integer("end", offset), f.text("line"))
    if ev == "metric":
        offset = f.integer("offset", 0)
        return Metric(f.attempt_id(), offset, f.integer("end", offset), f.mapping("record"))
    if ev == "telemetry":
        return Telemetry(f.text("node"), f.number("time"), f.opt_number("cpu_percent"),
                         f.opt_number("memory_percent"), f.opt_number("memory_used_gb"),
                         f.numbers("load"), f.objects("gpus"))
    if ev == "started":
        return Started(f.attempt_id(), f.opt_integer("pid"), f.opt_integer("pgid"),
                       f.opt_integer("supervisor"), f.opt_number("time"))
    if ev == "exited":
        return Exited(f.attempt_id(), f.opt_integer("code"), f.opt_integer("signal"),
                      f.opt_number("time"))
    if ev == "lost":
        return Lost(f.attempt_id(), f.text("reason"))
    if ev == "error":
        attempt = obj.get("attempt")
        return Error(f.text("message"), None if attempt is None else f.attempt_id(),
                     f.opt_text("op"))
    if ev == "hello":
        return Hello(f.text("node"), f.integer("pid"), f.integer("version"), f.text("host"),
                     f.opt_integer("cpus"), f.opt_number("memory_gb"), f.objects("gpus"), f.runs(),
                     f.strings("software"))
    if ev == "runs":
        return Runs(f.runs())
    if ev == "pong":
        return Pong(obj.get("id"))
    if ev == "procs":
        return ProcsResult(f.integer("id"), f.objects("processes"))
    if ev == "dumped":
        return Dumped(f.attempt_id(), f.texts("files"), f.texts("errors"))
    if ev == "probe":
        return ProbeResult(f.integer("id"), f.number("time"), f.text("root"),
                           f.opt_number("disk_free_gb"), f.objects("peers"))
    return Unknown(ev, {k: v for k, v in obj.items() if k != "ev"})


class VersionMismatch(ProtocolError):
    """The agent speaks another protocol version than this engine. `detail`
    is the message without the node (for errors that name it already)."""

    def __init__(self, node: str, agent_version: int) -> None:
        self.detail = (f"speaks protocol version {agent_version}, this engine version "
                       f"{VERSION}: install the same llmconsole on the engine's host and every "
                       "node")
        super().__init__(f"the agent on node {node} {self.detail}")
        self.node, self.agent_version = node, agent_version


def check_hello(hello: Hello, node: str | None = None) -> None:
    """Refuse (VersionMismatch) an agent whose protocol version is not this
    engine's; `node` names it (default: the name it gave itself)."""
    if hello.version != VERSION:
        raise VersionMismatch(node or hello.node, hello.version)
