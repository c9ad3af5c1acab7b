"""What an agent answers to `dump`: a py-spy stack dump of every live process
of the attempt on this node, one file each, for a stalled job.

The processes are found as `procs` and `reap` find them, by the markers in
their environment (LLMCONSOLE_ATTEMPT and LLMCONSOLE_RUN_DIR: see
protocol.Dump for which run directories count), so the ranks horovodrun
started over SSH count too; the supervisor of the attempt is left out (it is
llmconsole's, not the job's), and so are processes that run no Python
(`is_python`: a shell, ssh, mpirun), which py-spy cannot read. Each is
dumped with `py-spy dump --pid P` (py-spy next to sys.executable first, then
on PATH), DUMP_TIMEOUT_S each, at most CONCURRENCY at once, as asyncio
subprocesses: the agent's event loop never waits on one. Each dump goes to

    <run dir>/stacks/<label>/rank-<R>-<node>-pid<P>.txt

where the run directory is this node's for the attempt (created, as the
agent would create it, on a node that runs only ranks started over SSH), R
is the rank from the process's environment (RANK_VARIABLES, "x" when none)
and the file's first line names node, rank, pid and command line. When the
agent is root, the label folder and its files are given to the process's
owner, so the job's owner reads them. A process that cannot be dumped
(py-spy missing, permission denied, the process gone, not Python, timed
out) is one line in `errors` naming its pid and the reason; nothing here
raises."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.agent import runs
from engine.agent.protocol import Dump, Dumped

DUMP_TIMEOUT_S = 10.0
CONCURRENCY = 4  # py-spy pauses each target while it reads it: a few at a time
RANK_VARIABLES = ("HOROVOD_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
STACKS = "stacks"


@dataclass(frozen=True)
class Target:
    """A process to dump, as /proc showed it when it was found."""

    pid: int
    rank: str
    uid: int | None
    cmdline: tuple[str, ...]


def find_py_spy() -> str | None:
    """The py-spy binary of this installation (the wheel puts it beside the
    interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def _environ(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep:
            env[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def is_python(pid: int) -> bool:
    """Whether the process runs a Python interpreter: its program is named
    python*/pypy*, or it has libpython mapped (an embedding program)."""
    try:
        name = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        name = ""
    if name.startswith(("python", "pypy")):
        return True
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return any(b"libpython" in line for line in f)
    except OSError:
        return not name  # unreadable: let py-spy say why


def rank_of(env: dict[str, str]) -> str:
    """The process's rank from the first rank variable that holds a number."""
    for name in RANK_VARIABLES:
        value = env.get(name, "")
        if value.isdigit():
            return value
    return "x"


def find_targets(attempt: str, run_dirs: set[str], exclude: set[int]) -> list[Target]:
    """Live processes marked with `attempt` whose LLMCONSOLE_RUN_DIR is one
    of `run_dirs` (empty: any), sorted by rank then pid."""
    skip = exclude | {os.getpid()}
    try:
        pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        return []
    out = []
    for pid in pids:
        if pid in skip:
            continue
        env = _environ(pid)
        if env is None or env.get("LLMCONSOLE_ATTEMPT") != attempt:
            continue
        if run_dirs and env.get("LLMCONSOLE_RUN_DIR") not in run_dirs:
            continue
        if not is_python(pid):
            continue
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                uid: int | None = proc.uids().real
                cmdline = tuple(proc.cmdline())
        except psutil.Error:
            continue  # ended meanwhile
        out.append(Target(pid, rank_of(env), uid, cmdline))
    return sorted(out, key=lambda t: (not t.rank.isdigit(),
                                      int(t.rank) if t.rank.isdigit() else 0, t.pid))


def _reason(stderr: bytes, rc: int | None) -> str:
    """py-spy's own words, without its backtrace: the "Error:" line and its
    first cause."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    error = next((ln for ln in lines if ln.startswith("Error:")), None)
    if error is None:
        return lines[-1][:300] if lines else f"py-spy exited with status {rc}"
    error = error.removeprefix("Error:").strip()
    cause = next((ln.split(":", 1)[1].strip() for ln in lines
                  if ln.startswith("0:") and ":" in ln), None)
    return (f"{error} ({cause})" if cause and cause not in error else error)[:300]


async def _py_spy(py_spy: str, pid: int) -> tuple[bytes | None, str | None]:
    """(the dump, None), or (None, why not)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_BACKTRACE": "0"}
    try:
        proc = await asyncio.create_subprocess_exec(
            py_spy, "dump", "--pid", str(pid), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    except OSError as e:
        return None, f"cannot run {py_spy}: {e.strerror or e}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DUMP_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"py-spy timed out after {DUMP_TIMEOUT_S:g} s"
    if proc.returncode != 0:
        if not psutil.pid_exists(pid):
            return None, "the process ended before it could be dumped"
        return None, _reason(err, proc.returncode)
    return out, None


def _mkdir(path: Path, mode: int, owner: int | None) -> None:
    path.mkdir(exist_ok=True, mode=mode)
    os.chmod(path, mode)  # mkdir's mode goes through the umask
    if owner is not None:
        os.chown(path, owner, -1)


def _write(folder: Path, node: str, target: Target, dump: bytes) -> Path:
    """The dump file, written whole then renamed into place; the owner's
    when the agent is root (its group stays the agent's)."""
    path = folder / f"rank-{target.rank}-{node}-pid{target.pid}.txt"
    header = (f"# node={node} rank={target.rank} pid={target.pid} "
              f"cmdline={shlex.join(target.cmdline)}\n").encode("utf-8", "replace")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        if os.geteuid() == 0 and target.uid is not None and target.uid != 0:
            os.fchown(f.fileno(), target.uid, -1)
        f.write(header + dump)
    os.replace(tmp, path)
    return path


def prepare_folder(root: Path, attempt: str, label: str, owner: int | None) -> Path:
    """<run dir>/stacks/<label>/, creating the run directory as the agent's
    start would (0711 and the root's way opened when the job is another
    user's, see agent._start) where this node has none. `owner`: the uid to
    give the label folder to (None: keep the agent's)."""
    run_dir = runs.runs_dir(root) / attempt
    if not run_dir.is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            for path, drop in ((root, 0), (runs.runs_dir(root), 0o006)):
                mode = path.stat().st_mode & 0o7777
                os.chmod(path, (mode & ~drop) | 0o001)
            os.chmod(run_dir, 0o711)  # noqa: S103 — traverse only, as a run dir of the owner's
    stacks = run_dir / STACKS
    _mkdir(stacks, 0o711 if owner is not None else 0o755, None)  # noqa: S103 — traverse only
    folder = stacks / label
    _mkdir(folder, 0o700 if owner is not None else 0o755, owner)
    return folder


async def dump(cmd: Dump, node: str, root: Path, py_spy: str | None = None) -> Dumped:
    """Answer one Dump (see the module docstring); never raises."""
    try:
        return await _dump(cmd, node, root, py_spy or find_py_spy())
    except Exception as e:  # the agent lives on whatever one dump meets
        return Dumped(cmd.attempt, (), (f"dump failed: {e}",))


async def _dump(cmd: Dump, node: str, root: Path, py_spy: str | None) -> Dumped:
    local = runs.runs_dir(root) / cmd.attempt
    run_dirs: set[str] = set()
    exclude: set[int] = set()
    for d in ([str(local)] if local.is_dir() else []) + ([cmd.run_dir] if cmd.run_dir else []):
        run_dirs |= {d, os.path.realpath(os.path.expanduser(d))}
        doc = runs.read_json(Path(d) / runs.PID)  # the supervisor is llmconsole's own
        if doc is not None and doc.get("host") == runs.this_host() \
                and isinstance(doc.get("supervisor"), int):
            exclude.add(doc["supervisor"])
    targets = await asyncio.to_thread(find_targets, cmd.attempt, run_dirs, exclude)
    if not targets:
        return Dumped(cmd.attempt, (), ())
    if py_spy is None:
        return Dumped(cmd.attempt, (), tuple(
            f"pid {t.pid} (rank {t.rank}): py-spy not found beside {sys.executable} or on PATH "
            "(pip install 'py-spy>=0.4')" for t in targets))
    owners = {t.uid for t in targets if t.uid not in (None, 0)}
    owner = next(iter(owners)) if os.geteuid() == 0 and len(owners) == 1 else None
    try:
        folder = await asyncio.to_thread(prepare_folder, root, cmd.attempt, cmd.label, owner)
    except OSError as e:
        return Dumped(cmd.attempt, (), (f"cannot create the stacks folder under {local}: {e}",))
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(t: Target) -> tuple[str | None, str | None]:
        async with gate:
            out, why = await _py_spy(py_spy, t.pid)
        if out is None:
            return None, f"pid {t.pid} (rank {t.rank}): {why}"
        try:
            return str(await asyncio.to_thread(_write, folder, node, t, out)), None
        except OSError as e:
            return None, f"pid {t.pid} (rank {t.rank}): cannot write its dump: {e}"

    results = await asyncio.gather(*(one(t) for t in targets))
    return Dumped(cmd.attempt, tuple(f for f, _ in results if f is not None),
                  tuple(e for _, e in results if e is not None))
