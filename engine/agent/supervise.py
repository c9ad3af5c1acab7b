"""The per-job supervisor: a stdlib-only script the agent starts as

    python -I -S supervise.py RUN_DIR [--cwd DIR] [--grace SECONDS] [--uid UID] -- PROGRAM [ARG...]

in a new session (the agent uses start_new_session=True), so it outlives the
agent and any SSH connection. It imports nothing from the package and must
stay that way: it runs under `-I -S` for a fast start.

Contract, all files inside RUN_DIR:
- stdin is /dev/null; stdout and stderr of the supervisor and of the job are
  `output.log`, opened in append mode (the job's env should set
  PYTHONUNBUFFERED=1; the agent does, and so does this script by default).
- The job runs in its OWN process group (pgid == job pid), inside the
  supervisor's session but outside the supervisor's group, so that signalling
  the job's group (stop, SIGKILL after grace) never kills the supervisor and
  the exit status is always recorded.
- `pid` is written atomically once the job has started:
  {"supervisor": pid, "pgid": job pgid, "child": job pid, "started": time,
   "host": nodename}.
- `heartbeat` is created at start and its mtime touched every 2 s. On the
  same beat, if the agent's `stop` file ({"requested", "grace"}) shows the
  grace has run out, the job's group gets SIGKILL (the agent normally does
  this itself; this covers an agent that went away mid-stop).
- SIGTERM, SIGINT or SIGHUP sent to the supervisor itself are forwarded to
  the job process and the supervisor keeps waiting.
- When the job process ends, anything left of it (its process group, and
  processes carrying this run's LLMCONSOLE_ATTEMPT + LLMCONSOLE_RUN_DIR in
  their environment, i.e. children that escaped with setsid) gets SIGTERM,
  then SIGKILL after the grace period, so a finished job holds no GPU.
- `exit.json` is written atomically last: {"code": int|null, "signal":
  int|null, "ended": time, "child": pid|null} plus "error": message when the
  program could not be started (code 127: not found; 126: any other
  exec/chdir failure), in which case a line naming the cause is also
  appended to output.log and no `pid` file is written.
- `--uid UID` (the supervisor runs as root): the job runs as that user, with
  the uid, primary gid and supplementary groups (os.getgrouplist) of its
  passwd entry on this node, and HOME, USER, LOGNAME and SHELL from that entry
  in its environment; it enters its working directory as that user, and its
  umask is the supervisor's original one. Before the job starts the
  supervisor checks that the user can traverse every directory down to
  RUN_DIR, then creates the two things in RUN_DIR the job may write, owned by
  the user: `metrics.jsonl` (mode 0600) and `work/` (mode 0700). Its own files
  (pid, heartbeat, exit.json) are created with umask 077 in a RUN_DIR the
  user cannot write, so the job can neither rewrite `pid` (which the root
  agent signals) nor fake its exit. A uid with no passwd entry here, or a run
  directory the user cannot reach, is an exit.json error with code 126.
- A full disk: before the job starts the supervisor writes `.reserve`
  (64 KiB) in RUN_DIR and releases it at the end, so that exit.json (and the
  pid file, if need be) can still be written when the job has filled the
  disk. A job that failed while its run directory's filesystem has under
  1 MiB free gets "error": "no space left on device: ..." (naming the mount
  and what is free) in exit.json and that line in output.log: the attempt's
  reason. No room even for the reserve: the job is not started (code 126).
Exit status of the supervisor: 0 once exit.json is written, 2 on usage error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

HEARTBEAT_S = 2.0
RESERVE = ".reserve"
RESERVE_BYTES = 64 * 1024
FULL_BELOW = 1 << 20  # bytes free: a job that failed with less left failed for want of it
_child: subprocess.Popen[bytes] | None = None
_pending: list[int] = []


def _write_json_atomic(path: str, doc: dict[str, object], fsync: bool = False) -> None:
    import json  # deferred: it costs ~10 ms (re), and the job starts before any write

    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        if fsync:  # exit.json only: the one record that cannot be re-derived
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _mount_point(path: str) -> str:
    """The mount point of the filesystem holding `path`."""
    here = os.path.abspath(path)
    try:
        dev = os.stat(here).st_dev
        while here != "/" and os.stat(os.path.dirname(here)).st_dev == dev:
            here = os.path.dirname(here)
    except OSError:
        pass
    return here


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _disk_full(run_dir: str) -> str | None:
    """The message for a run directory on a (nearly) full disk, else None."""
    try:
        st = os.statvfs(run_dir)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= FULL_BELOW:
        return None
    return (f"no space left on device: {_mount_point(run_dir)} has {_human(free)} free "
            f"(the job's output.log and metrics.jsonl are in {run_dir}); free space on that "
            "disk, then retry")


def _reserve(run_dir: str) -> bool:
    """Hold RESERVE_BYTES in RUN_DIR/.reserve for the last writes; False
    (nothing left behind) when even that does not fit."""
    path = os.path.join(run_dir, RESERVE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = b"\0" * RESERVE_BYTES
            if os.write(fd, data) != len(data):
                raise OSError(28, os.strerror(28))
        finally:
            os.close(fd)
    except OSError:
        _release(run_dir)
        return False
    return True


def _release(run_dir: str) -> None:
    try:
        os.unlink(os.path.join(run_dir, RESERVE))
    except OSError:
        pass


def _say(message: str, own_line: str | None = None) -> None:
    """A line on stderr (output.log); with `own_line` (that file's path),
    after a newline if the job's last write there was cut short."""
    lead = ""
    if own_line is not None:
        try:
            with open(own_line, "rb") as f:
                f.seek(-1, os.SEEK_END)
                lead = "" if f.read(1) == b"\n" else "\n"
        except OSError:  # empty or unreadable: nothing to end
            pass
    try:
        os.write(2, f"{lead}llmconsole: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _parse(args: list[str]) -> tuple[str, str | None, float, int | None, list[str]] | None:
    """-> (run_dir, cwd, grace, uid, argv) or None on a usage error."""
    if len(args) < 3:
        return None
    run_dir, rest = args[0], args[1:]
    cwd: str | None = None
    grace = 10.0
    uid: int | None = None
    i = 0
    while i < len(rest) and rest[i] != "--":
        if rest[i] == "--cwd" and i + 1 < len(rest):
            cwd = rest[i + 1]
        elif rest[i] in ("--grace", "--uid") and i + 1 < len(rest):
            try:
                if rest[i] == "--grace":
                    grace = float(rest[i + 1])
                else:
                    uid = int(rest[i + 1])
            except ValueError:
                return None
        else:
            return None
        i += 2
    argv = rest[i + 1:]
    if i >= len(rest) or not argv:
        return None
    return run_dir, cwd, grace, uid, argv


class Owner:
    """The user a job runs as (from this node's passwd and group files)."""

    def __init__(self, uid: int, gid: int, name: str, home: str, shell: str,
                 groups: list[int]) -> None:
        self.uid, self.gid, self.name = uid, gid, name
        self.home, self.shell, self.groups = home, shell, groups

    def __str__(self) -> str:
        return f"user {self.name} (uid {self.uid})"


def _owner(uid: int) -> Owner | str:
    """The passwd entry of `uid` on this node, or an error message."""
    import pwd

    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return (f"no user with uid {uid} on this node ({os.uname().nodename}): a job runs as "
                "its owner, so every node needs the same users (uids) as the head node")
    return Owner(uid, pw.pw_gid, pw.pw_name, pw.pw_dir, pw.pw_shell,
                 os.getgrouplist(pw.pw_name, pw.pw_gid))


def _untraversable(path: str, owner: Owner) -> tuple[str, int] | None:
    """The first directory on the way down to `path` that `owner` may not
    search (the kernel's owner / group / other rule), with its mode."""
    parts = path.strip("/").split("/")
    for depth in range(len(parts) + 1):
        d = "/" + "/".join(parts[:depth])
        st = os.stat(d)
        if st.st_uid == owner.uid:
            bit = 0o100
        elif st.st_gid in owner.groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return d, st.st_mode & 0o7777
    return None


def _prepare_for(owner: Owner, run_dir: str) -> str | None:
    """Check the way to RUN_DIR and create what the job may write there;
    an error message if the job could not run as `owner`."""
    try:
        blocked = _untraversable(run_dir, owner)
    except OSError as e:
        return f"cannot check the way to the run directory {run_dir}: {e}"
    if blocked is not None:
        where, mode = blocked
        return (f"{owner} cannot reach the run directory {run_dir}: {where} is mode "
                f"{mode:04o}; make it traversable (chmod o+x {where}) or put the engine "
                "home (LLMCONSOLE_HOME) where other users can traverse")
    work = os.path.join(run_dir, "work")
    try:
        os.mkdir(work, 0o700)
        os.lchown(work, owner.uid, owner.gid)
        fd = os.open(os.path.join(run_dir, "metrics.jsonl"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.fchown(fd, owner.uid, owner.gid)
        finally:
            os.close(fd)
    except OSError as e:
        return f"cannot prepare the run directory {run_dir} for {owner}: {e}"
    return None


def _forward(signum: int, frame: object) -> None:
    if _child is None:
        _pending.append(signum)
        return
    try:
        os.kill(_child.pid, signum)
    except OSError:
        pass


def _stop_deadline(run_dir: str) -> float | None:
    """When the grace of a requested stop (the agent's `stop` file) runs
    out, as time.time(); None if no stop was requested."""
    import json

    try:
        with open(os.path.join(run_dir, "stop"), encoding="utf-8") as f:
            doc = json.load(f)
        return float(doc["requested"]) + float(doc["grace"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _stop_overdue(run_dir: str) -> bool:
    """A stop was requested and its grace has run out. The agent escalates
    to SIGKILL itself; this covers an agent that died or exited during the
    grace period."""
    deadline = _stop_deadline(run_dir)
    return deadline is not None and time.time() >= deadline


def _heartbeat(run_dir: str, pgid: int, done: threading.Event) -> None:
    path = os.path.join(run_dir, "heartbeat")
    while not done.is_set():
        try:
            os.utime(path, None)
        except OSError:
            try:
                open(path, "a").close()
            except OSError:
                pass
        if _stop_overdue(run_dir):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        done.wait(HEARTBEAT_S)


def _leftovers(pgid: int) -> list[int]:
    """Live (non-zombie) processes still belonging to the job: members of its
    process group, and processes whose initial environment carries this
    run's LLMCONSOLE_ATTEMPT and LLMCONSOLE_RUN_DIR (children that left the
    group with setsid). Zombies are ignored: under a PID 1 that never reaps
    (some containers) dead orphans stay zombies forever."""
    marks = set()
    for name in ("LLMCONSOLE_ATTEMPT", "LLMCONSOLE_RUN_DIR"):
        if name in os.environ:
            marks.add(f"{name}={os.environ[name]}".encode())
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: the group is all we can see
        try:
            os.killpg(pgid, 0)
        except OSError:
            return []
        return [-pgid]
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # after "pid (comm)": state ppid pgrp ...
            if len(fields) < 3 or fields[0] == b"Z":
                continue
            if int(fields[2]) == pgid:
                found.append(int(name))
                continue
            if len(marks) == 2:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if marks <= set(f.read().split(b"\0")):
                        found.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            if pid < 0:
                os.killpg(-pid, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass


def _reap_leftovers(pgid: int, grace: float, run_dir: str) -> None:
    """SIGTERM what is left of the job, SIGKILL after grace: a finished job
    holds no GPU. After a stop, the agent has sent SIGTERM already (each
    process gets it once): only the SIGKILL is left, when the stop's grace
    runs out."""
    left = _leftovers(pgid)
    if not left:
        return
    stop_deadline = _stop_deadline(run_dir)
    if stop_deadline is None:
        _kill_all(left, signal.SIGTERM)
        deadline = time.monotonic() + grace
    else:
        deadline = time.monotonic() + max(0.0, stop_deadline - time.time())
    while time.monotonic() < deadline:
        time.sleep(0.05)
        left = _leftovers(pgid)
        if not left:
            return
    _kill_all(left, signal.SIGKILL)


def _fail(exit_path: str, code: int, error: str) -> int:
    """The job could not be started: say why in output.log and exit.json."""
    _release(os.path.dirname(exit_path))
    _say(error)
    _write_json_atomic(exit_path, {"code": code, "signal": None, "ended": time.time(),
                                   "child": None, "error": error}, fsync=True)
    return 0


def _write_last(run_dir: str, path: str, doc: dict[str, object], fsync: bool = False) -> None:
    """Write a record the agent needs; on a full disk, release the reserve
    and try once more."""
    try:
        _write_json_atomic(path, doc, fsync)
    except OSError:
        for leftover in (f"{path}.tmp.{os.getpid()}",):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        _release(run_dir)
        _write_json_atomic(path, doc, fsync)


def main(args: list[str]) -> int:
    global _child
    parsed = _parse(args)
    if parsed is None:
        _say("usage: supervise.py RUN_DIR [--cwd DIR] [--grace S] [--uid UID] -- PROGRAM "
             "[ARG...]")
        return 2
    run_dir, cwd, grace, uid, argv = parsed
    run_dir = os.path.abspath(run_dir)
    # another user's job: the supervisor's own files are private (umask 077)
    job_umask = os.umask(0o077) if uid is not None else -1
    out = os.open(os.path.join(run_dir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _forward)

    hb_path = os.path.join(run_dir, "heartbeat")
    open(hb_path, "a").close()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    exit_path = os.path.join(run_dir, "exit.json")
    kwargs: dict[str, object] = {}
    steps = []  # preexec_fn: single-threaded here, so it is safe
    if sys.version_info >= (3, 11):
        kwargs["process_group"] = 0
    else:
        steps.append(os.setpgrp)
    owner: Owner | None = None
    popen_cwd = cwd
    if uid is not None:
        found = _owner(uid)
        if isinstance(found, str):
            return _fail(exit_path, 126, found)
        problem = _prepare_for(found, run_dir)
        if problem is not None:
            return _fail(exit_path, 126, problem)
        owner = found
        env.update(HOME=owner.home, USER=owner.name, LOGNAME=owner.name, SHELL=owner.shell)
        kwargs.update(user=owner.uid, group=owner.gid, extra_groups=owner.groups,
                      umask=job_umask)
        if cwd is not None:  # entered as the owner (Popen's cwd= would chdir as root)
            where = cwd
            steps.append(lambda: os.chdir(where))
            popen_cwd = None
    if steps:
        kwargs["preexec_fn"] = lambda: [step() for step in steps]
    if not _reserve(run_dir):
        return _fail(exit_path, 126, _disk_full(run_dir) or
                     f"cannot write to the run directory {run_dir}")
    try:
        child = subprocess.Popen(argv, cwd=popen_cwd, env=env, stdin=subprocess.DEVNULL,
                                 close_fds=True, restore_signals=True,
                                 **kwargs)  # type: ignore[call-overload]
    except OSError as e:
        if cwd is not None and getattr(e, "filename", None) == cwd:
            code, error = 126, f"cannot change to working directory {cwd}: {e.strerror}"
        elif isinstance(e, FileNotFoundError):
            code, error = 127, f"program not found: {argv[0]}"
        elif isinstance(e, PermissionError):
            code, error = 126, f"permission denied: {argv[0]}"
        else:
            code, error = 126, f"cannot run {argv[0]}: {e}"
        return _fail(exit_path, code, error)
    except subprocess.SubprocessError:  # only the chdir runs in preexec_fn
        why = "it is not a directory" if not os.path.isdir(str(cwd)) else \
            f"{owner} may not enter it"
        return _fail(exit_path, 126, f"cannot change to working directory {cwd}: {why}")
    except ValueError as e:  # e.g. an embedded NUL byte
        return _fail(exit_path, 126, f"cannot run {argv[0]}: {e}")

    _child = child
    _write_last(run_dir, os.path.join(run_dir, "pid"), {
        "supervisor": os.getpid(), "pgid": child.pid, "child": child.pid,
        "started": time.time(), "host": os.uname().nodename,
    })
    for pending in _pending:
        _forward(pending, None)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(run_dir, child.pid, done), daemon=True)
    beat.start()

    returncode = child.wait()  # retried after each forwarded signal (PEP 475)
    ended = time.time()
    _reap_leftovers(child.pid, grace, run_dir)
    done.set()
    exit_code = returncode if returncode >= 0 else None
    exit_signal = -returncode if returncode < 0 else None
    doc: dict[str, object] = {"code": exit_code, "signal": exit_signal, "ended": ended,
                              "child": child.pid}
    full = _disk_full(run_dir) if returncode != 0 else None  # measured before the release
    _release(run_dir)
    if full is not None:
        _say(full, own_line=os.path.join(run_dir, "output.log"))
        doc["error"] = full
    _write_last(run_dir, exit_path, doc, fsync=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
