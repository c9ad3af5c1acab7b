"""Run directories on a node, and reading them back.

Layout: ROOT/runs/<attempt>/ holds
  spec.json      written by the agent before spawning: argv, cwd, gpus, env
                 NAMES (never values), created; its presence claims the attempt
  output.log     the job's stdout+stderr (appended by the supervisor)
  metrics.jsonl  JSON records appended by the job (optional)
  pid            {"supervisor","pgid","child","started","host"}, written
                 atomically by the supervisor once the job has started
  heartbeat      touched every 2 s by the supervisor
  stop           {"requested","grace"}, written by the agent on a stop
  exit.json      {"code","signal","ended","child"[, "error"]}, written
                 atomically by the supervisor last
  work/          only for a job run as another user (see supervise.py): its
                 default working directory, owned by that user

A job run as another user (a root agent, a start with that "uid") finds its
run directory mode 0711, the supervisor's files (spec.json, output.log, pid,
heartbeat, stop, exit.json) owned by root and private, and only
metrics.jsonl and work/ its own: it cannot rewrite `pid`, whose pgid the
root agent signals. ROOT and ROOT/runs get o+x (never o+r or o+w) so that it
can reach them. Everything below reads these files as root, so it works
unchanged for either layout.

This module owns: atomic JSON files, liveness of supervisors and process groups (robust to pid reuse
and zombies), the run summary used by `hello`/`list`, the /proc environ
backstop used by stop, and `LineTail`, an incremental line reader with byte
offsets. Everything here is synchronous and quick; nothing blocks on a job.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from engine.agent.protocol import valid_attempt

SPEC = "spec.json"
OUTPUT = "output.log"
METRICS = "metrics.jsonl"
PID = "pid"
HEARTBEAT = "heartbeat"
STOP = "stop"
EXIT = "exit.json"
WORK = "work"

STALE_S = 30.0
# psutil's create_time and time.time() can disagree by about a second.
CREATE_TIME_SLACK_S = 2.0

def runs_dir(root: Path) -> Path:
    return root / "runs"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json_atomic(path: Path, doc: dict[str, Any], fsync: bool = False) -> None:
    """Readers see the old file or the whole new one, never a part (tmp +
    os.replace); a write that fails (a full disk) leaves no temporary file.
    fsync only where losing the file in a crash matters."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:  # a full disk: no partial file left behind
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def process_alive(pid: int | None, started_by: float | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when `started_by` is given, was
    created no later than that time (so a reused pid does not count)."""
    if pid is None or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_by is not None and proc.create_time() > started_by + CREATE_TIME_SLACK_S:
            return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Non-zombie processes in process group `pgid` (Linux /proc)."""
    members = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "pid (comm)": state ppid pgrp ...
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def group_alive(pgid: int | None) -> bool:
    """True if some live (non-zombie) process is left in process group
    `pgid`. Zombies do not count: under a PID 1 that never reaps (some
    containers), dead orphans stay zombies forever."""
    if pgid is None or pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True  # no procfs: trust killpg
    return bool(group_members(pgid))


def signal_group(pgid: int | None, sig: int) -> bool:
    """Send `sig` to group `pgid`; False if the group is gone (or pgid bogus)."""
    if pgid is None or pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def supervisor_alive(pid_doc: dict[str, Any]) -> bool:
    started = pid_doc.get("started")
    return process_alive(_int_or_none(pid_doc.get("supervisor")),
                         float(started) if isinstance(started, (int, float)) else None)


def mtime_age(paths: Iterable[Path], now: float | None = None) -> float | None:
    """Seconds since the newest mtime among `paths`; None if none exist."""
    newest = None
    for p in paths:
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        newest = m if newest is None else max(newest, m)
    if newest is None:
        return None
    return (time.time() if now is None else now) - newest


def this_host() -> str:
    return os.uname().nodename


def run_summary(run_dir: Path, host: str | None = None) -> dict[str, Any]:
    """{"attempt", "pid", "alive", "exit"} for the `hello` and `list` replies.
    `pid` is the job process (null before it started or if it never did);
    `alive` is true while no exit.json exists and the job's supervisor (or,
    if that died, the job's process group) is still there."""
    exit_doc = read_json(run_dir / EXIT)
    pid_doc = read_json(run_dir / PID)
    pid = _int_or_none(pid_doc.get("child")) if pid_doc else None
    alive = False
    if exit_doc is None and pid_doc is not None:
        doc_host = pid_doc.get("host")
        if isinstance(doc_host, str) and doc_host != (host or this_host()):
            age = mtime_age([run_dir / HEARTBEAT])
            alive = age is not None and age <= STALE_S
        else:
            alive = (supervisor_alive(pid_doc)
                     or group_alive(_int_or_none(pid_doc.get("pgid"))))
    return {"attempt": run_dir.name, "pid": pid, "alive": alive, "exit": exit_doc}


def scan_runs(root: Path, host: str | None = None) -> list[dict[str, Any]]:
    base = runs_dir(root)
    try:
        names = sorted(e.name for e in os.scandir(base) if e.is_dir())
    except OSError:
        return []
    return [run_summary(base / n, host) for n in names if valid_attempt(n)]


def _environ_has(pid: int, entries: set[bytes]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = set(f.read().split(b"\0"))
    except OSError:
        return False
    return entries <= env


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def find_attempt_processes(attempt: str, run_dir: Path, exclude: Iterable[int] = (),
                           outside_group: int | None = None) -> list[int]:
    """Processes whose initial environment marks them as this attempt's
    (LLMCONSOLE_ATTEMPT and LLMCONSOLE_RUN_DIR both match, so another root's
    attempt with the same id is never touched). Catches children that left
    the job's process group with setsid; with `outside_group`, members of
    that process group (already signalled through it) are left out, so that
    no process gets a signal twice. Linux /proc only; [] elsewhere."""
    skip = set(exclude) | {os.getpid()}
    entries = {f"LLMCONSOLE_ATTEMPT={attempt}".encode(),
               f"LLMCONSOLE_RUN_DIR={run_dir}".encode()}
    found = []
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid not in skip and _environ_has(pid, entries) and (
                outside_group is None or _pgid(pid) not in (outside_group, None)):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class LineTail:
    """Reads complete lines appended to one file, remembering byte offsets.

    `offset` is the file position of the first byte not yet returned as part
    of a line. `read()` returns (start, end, raw) for each complete line, where
    raw excludes the newline and end is the offset just past it (the value to
    resume from). A line longer than `max_line` bytes is cut into pieces of
    `max_line` bytes. `flush()` returns the final unterminated piece, if any,
    once the writer is known to be finished.
    """

    def __init__(self, path: Path, offset: int = 0, max_line: int = 1 << 20) -> None:
        self.path = path
        self.offset = offset
        self.max_line = max_line
        self._buf = b""
        self._f: Any = None
        self.at_eof = False
        self.truncated = False

    def _open(self) -> bool:
        if self._f is None:
            try:
                self._f = open(self.path, "rb")  # kept open across polls
            except OSError:
                return False
        return True

    def read(self, max_bytes: int = 1 << 20) -> list[tuple[int, int, bytes]]:
        """Lines completed since the last call; reads at most `max_bytes`
        (sets `at_eof` when nothing more is waiting)."""
        self.at_eof = True
        if not self._open():
            return []
        pos = self.offset + len(self._buf)
        try:
            size = os.fstat(self._f.fileno()).st_size
        except OSError:
            return []
        if size < pos:  # truncated or replaced: restart from its beginning
            self.truncated = True
            self.offset, self._buf, pos = 0, b"", 0
        if size == pos:
            return []
        self._f.seek(pos)
        data = self._f.read(max_bytes)
        self.at_eof = pos + len(data) >= size
        return self._split(data)

    def _split(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf + data
        lines = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0 or nl - start > self.max_line:
                if len(buf) - start > self.max_line:
                    end = start + self.max_line
                    lines.append((self.offset + start, self.offset + end, buf[start:end]))
                    start = end
                    continue
                break
            lines.append((self.offset + start, self.offset + nl + 1, buf[start:nl]))
            start = nl + 1
        self.offset += start
        self._buf = buf[start:]
        return lines

    def flush(self) -> tuple[int, int, bytes] | None:
        if not self._buf:
            return None
        line = (self.offset, self.offset + len(self._buf), self._buf)
        self.offset += len(self._buf)
        self._buf = b""
        return line

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
