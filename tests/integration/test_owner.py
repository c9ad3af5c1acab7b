"""Jobs run as their owner: a root agent starts a job submitted by another
uid with that uid, gid and groups, in a run directory the job cannot tamper
with; an agent that is not root refuses; a shared engine run by root runs a
second uid's job as that uid. Real agents, real setuid, real daemon."""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chaos.engine_handle import REPO, EngineHandle, kill_marked, new_engine
from tests.integration.agent_driver import Driver, marked_processes, run_dir

NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
# The processes run as nobody (the CLI, an agent) need this checkout's
# packages from an interpreter nobody may run.
NOBODY_PYTHONPATH = os.pathsep.join([str(REPO), *site.getsitepackages()])


# An agent as nobody starts its supervisors with its own sys.executable.
_CHECK = ("import subprocess, sys, psutil, engine.agent.agent, engine.cli; "
          "subprocess.run([sys.executable, '-c', ''], check=True)")


@functools.cache
def python_for_nobody() -> str:
    """This interpreter when uid 65534 may run it; else the system Python of
    the same version (this machine's venv Python lies under /root, 0700)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if candidate and subprocess.run(
                [*AS_NOBODY, candidate, "-c", _CHECK],
                env={**os.environ, "PYTHONPATH": NOBODY_PYTHONPATH}, cwd="/",
                capture_output=True).returncode == 0:
            return candidate
    raise AssertionError(f"no {version} that uid {NOBODY} may run: install the project where "
                         "other users can run it")


def _kill_jobs(root: Path) -> None:
    for pid in marked_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture()
def shared_root() -> Iterator[Path]:
    """An agent root on a path every user may traverse (/tmp/llc-own-*/node),
    unlike pytest's tmp_path (/tmp/pytest-of-root is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="llc-own-", dir="/tmp"))
    top.chmod(0o711)
    yield top / "node"
    _kill_jobs(top / "node")
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture()
async def root_agent(shared_root: Path) -> AsyncIterator[Driver]:
    d = await Driver(shared_root).start()
    yield d
    await d.close()


OWNER_JOB = r"""
run=$LLMCONSOLE_RUN_DIR
for f in pid exit.json new-file; do
    if (echo '{}' > "$run/$f") 2>/dev/null; then echo "$f written"; else echo "$f denied"; fi
done
echo '{"step": 1, "loss": 1.5}' >> "$run/metrics.jsonl"
: > made-here
id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; pwd
"""


async def test_root_agent_runs_a_job_as_its_owner_who_cannot_touch_the_records(
        root_agent: Driver, shared_root: Path) -> None:
    await root_agent.start_argv("30.1", ["sh", "-c", OWNER_JOB], uid=NOBODY)
    exited = await root_agent.exited("30.1")
    assert exited["code"] == 0, root_agent.lines("30.1")
    pw = pwd.getpwuid(NOBODY)
    d = run_dir(shared_root, "30.1")
    groups = " ".join(str(g) for g in os.getgrouplist(pw.pw_name, pw.pw_gid))
    assert root_agent.lines("30.1") == [
        "pid denied", "exit.json denied", "new-file denied",
        str(NOBODY), str(pw.pw_gid), groups, f"{pw.pw_dir} {pw.pw_name} {pw.pw_name}",
        str(d / "work")]
    # the metric the job wrote was streamed; the records are the supervisor's
    assert [m["record"] for m in root_agent.of("30.1", "metric")] == [{"step": 1, "loss": 1.5}]
    assert stat.S_IMODE(d.stat().st_mode) == 0o711 and d.stat().st_uid == 0
    for name in ("pid", "exit.json", "heartbeat", "spec.json", "output.log"):
        st = (d / name).stat()
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0, name
    for name in ("metrics.jsonl", "work", "work/made-here"):
        assert (d / name).stat().st_uid == NOBODY, name
    assert not (d / "new-file").exists()
    assert json.loads((d / "pid").read_text())["child"] == root_agent.of(
        "30.1", "started")[0]["pid"]
    for path in (shared_root, shared_root / "runs"):  # traversable, never listable
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o001 and not mode & 0o006, (path, oct(mode))


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


async def test_root_agent_refuses_an_unknown_uid_and_an_unreachable_directory(
        root_agent: Driver, tmp_path: Path) -> None:
    unknown = next(u for u in range(42000, 43000) if not _has_user(u))
    await root_agent.start_argv("31.1", ["echo", "never"], uid=unknown)
    assert (await root_agent.exited("31.1"))["code"] == 126
    err = root_agent.of("31.1", "error")
    assert len(err) == 1 and f"no user with uid {unknown}" in err[0]["message"]
    assert not root_agent.of("31.1", "started") and "never" not in root_agent.lines("31.1")

    root_only = tmp_path / "private"
    root_only.mkdir(mode=0o700)
    await root_agent.start_argv("31.2", ["echo", "never"], uid=NOBODY, cwd=str(root_only))
    assert (await root_agent.exited("31.2"))["code"] == 126
    message = root_agent.of("31.2", "error")[0]["message"]
    assert str(root_only) in message and "uid 65534" in message and "may not enter" in message

    # pytest's own tmp_path lies under /tmp/pytest-of-root (0700): a job of
    # nobody could not reach a run directory there
    hidden = await Driver(tmp_path / "node").start()
    try:
        await hidden.start_argv("31.3", ["echo", "never"], uid=NOBODY)
        assert (await hidden.exited("31.3"))["code"] == 126
        message = hidden.of("31.3", "error")[0]["message"]
        assert "cannot reach the run directory" in message and "chmod o+x" in message
        assert not hidden.of("31.3", "started")
    finally:
        await hidden.close()
        _kill_jobs(tmp_path / "node")


async def test_agent_that_is_not_root_refuses_other_uids_and_runs_its_own(
        shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared_root.mkdir()
    os.chown(shared_root, NOBODY, NOBODY)
    monkeypatch.setenv("PYTHONPATH", NOBODY_PYTHONPATH)
    d = Driver(shared_root, prefix=AS_NOBODY)
    d.ch.argv[len(AS_NOBODY)] = python_for_nobody()
    await d.start()
    try:
        await d.start_argv("32.1", ["echo", "as root?"], uid=0)
        err = await d.until(lambda e: e["ev"] == "error" and e.get("attempt") == "32.1")
        assert err["op"] == "start"
        assert "uid 0" in err["message"] and "runs as uid 65534, not root" in err["message"]
        assert not run_dir(shared_root, "32.1").exists()
        await d.start_argv("32.2", ["id", "-u"], uid=NOBODY)
        assert (await d.exited("32.2"))["code"] == 0
        assert d.lines("32.2") == [str(NOBODY)]
        assert not d.of("32.1", "exited") and not d.of("32.1", "started")
    finally:
        await d.close()


# --------------------------------------------------------------- the engine


@pytest.fixture()
def shared_engine() -> Iterator[EngineHandle]:
    """A daemon run by root with its socket open to everyone (mode 666), in
    a home others may traverse."""
    handle = new_engine(traversable=True)
    handle.env["PYTHONPATH"] = NOBODY_PYTHONPATH
    try:
        handle.serve("--socket-mode", "666")
        yield handle
    finally:
        handle.close()
        kill_marked(str(handle.home))
        shutil.rmtree(handle.home, ignore_errors=True)


def test_shared_root_engine_runs_a_second_uids_job_as_that_uid(
        shared_engine: EngineHandle) -> None:
    shared_engine.write_profile("whoami", """
kind = "command"
command = ["sh", "-c", "id -u; id -g; echo $HOME"]
""")
    submitted = json.loads(shared_engine.cli("submit", "whoami", "--json", prefix=AS_NOBODY,
                                             python=python_for_nobody()).stdout)
    job = shared_engine.wait_state(int(submitted["id"]), {"succeeded", "failed"})
    log = shared_engine.cli("logs", str(job["id"])).stdout.splitlines()
    assert job["state"] == "succeeded", (job, log)
    assert log == [str(NOBODY), str(NOBODY), pwd.getpwuid(NOBODY).pw_dir]


@pytest.fixture()
def nobodys_engine() -> Iterator[EngineHandle]:
    """A daemon run by uid 65534 (not root), its socket open to everyone."""
    handle = new_engine(traversable=True)
    handle.env["PYTHONPATH"] = NOBODY_PYTHONPATH
    for path in (handle.home, handle.profiles):
        os.chown(path, NOBODY, NOBODY)
    try:
        handle.serve("--socket-mode", "666", prefix=AS_NOBODY, python=python_for_nobody())
        yield handle
    finally:
        handle.close()
        kill_marked(str(handle.home))
        shutil.rmtree(handle.home, ignore_errors=True)


def test_an_engine_that_is_not_root_refuses_another_users_job_and_runs_its_own(
        nobodys_engine: EngineHandle) -> None:
    nobodys_engine.write_profile("whoami", """
kind = "command"
command = ["id", "-u"]
""")
    refused = nobodys_engine.cli("submit", "whoami", check=False)  # as root
    assert refused.returncode != 0
    [line] = refused.stderr.strip().splitlines()
    assert "this engine runs as nobody, not as root, so it cannot run jobs as root" in line
    assert "LLMCONSOLE_HOME" in line  # the fix: an engine of one's own
    assert nobodys_engine.json("jobs", "--all") == []  # nothing was queued
    mine = json.loads(nobodys_engine.cli("submit", "whoami", "--json", prefix=AS_NOBODY,
                                         python=python_for_nobody()).stdout)
    job = nobodys_engine.wait_state(int(mine["id"]), {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert nobodys_engine.cli("logs", str(job["id"])).stdout.split() == [str(NOBODY)]
