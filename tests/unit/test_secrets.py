"""Secrets of a job's [env] (engine/secrets.py): which names are secrets,
how a horovodrun job's argv goes around horovodrun (engine/launch.py), and
the real chain on this machine with horovod's own command builders:
secret_exec.py hold -> sshwrap launch -> a stand-in horovodrun that builds
each rank's command exactly as horovodrun does (`env A=1 ... PROGRAM`,
through `sh -c`, and through ssh for a rank on another node) -> the rank
gets the value, and no command line ever holds it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine import secret_exec, secrets
from engine.launch import SECRET_EXEC_SCRIPT, job_environment, launch_argv
from engine.model import JobSpec, NodeSpec, Placement, Resources
from engine.sshwrap import ssh as wrapper

SECRET = "hf_unit-" + os.urandom(8).hex()


@pytest.mark.parametrize("name, secret", [
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("DB_PASSWORD", True), ("MYSQL_PASSWD", True), ("GOOGLE_APPLICATION_CREDENTIALS", True),
    ("hf_token", True), ("Api_Keys", True), ("TOKEN", True), ("GH_TOKENS", True),
    ("KEYBOARD", False), ("KEYBOARD_LAYOUT", False), ("MONKEY_PATCH", False),
    ("TOKENIZERS_PARALLELISM", False), ("NCCL_IB_PKEY", False), ("APIKEY", False),
    ("HOROVOD_CYCLE_TIME", False), ("PATH", False), ("SEED", False),
])
def test_a_secret_is_a_name_with_a_whole_secret_word(name: str, secret: bool) -> None:
    assert secrets.is_secret_name(name) is secret


def test_secret_names_picks_the_secrets_of_an_env() -> None:
    env = {"HF_TOKEN": SECRET, "SEED": "42", "WANDB_API_KEY": "k-1234"}
    assert secrets.secret_names(env) == ("HF_TOKEN", "WANDB_API_KEY")
    assert secrets.secret_names(["PATH", "HOME"]) == ()


def spec(launcher: str, env: dict[str, str], nodes: int = 2) -> JobSpec:
    return JobSpec(name="s", kind="command", argv=("python3", "train.py"), launcher=launcher,
                   env=tuple(sorted(env.items())),
                   resources=Resources(nodes=nodes, cpus=1))


NODES = {"a": NodeSpec("a"), "b": NodeSpec("b", host="10.0.0.2", port=2222)}
PLACED = [Placement("a", (), 1), Placement("b", (), 1)]


def test_a_horovodrun_job_with_secrets_starts_behind_hold_and_each_rank_behind_rank() -> None:
    py = "/venv/bin/python"
    held = launch_argv(spec("horovodrun", {"HF_TOKEN": SECRET, "SEED": "1"}), PLACED, NODES,
                       py)
    script = str(SECRET_EXEC_SCRIPT)
    assert held[:8] == [py, "-I", "-S", script, "hold", "--names", "HF_TOKEN", "--"]
    assert held[8:12] == [py, "-I", "-S", str(wrapper.__file__)]  # then sshwrap's prelude
    rank_at = held.index("rank")
    assert held[rank_at - 4:rank_at + 2] == [py, "-I", "-S", script, "rank", "--"]
    assert held[rank_at + 2:] == ["python3", "train.py"]
    assert SECRET not in " ".join(held)
    # one node: no ssh, the same hold and rank; no secrets: horovodrun as before
    one = launch_argv(spec("horovodrun", {"HF_TOKEN": SECRET}, 1), PLACED[:1], NODES, py)
    assert one[4] == "hold" and "rank" in one and str(wrapper.__file__) not in one
    plain = launch_argv(spec("horovodrun", {"SEED": "1"}), PLACED, NODES, py)
    assert script not in plain
    # torchrun and local jobs get their environment from the agent, never argv
    for launcher in ("torchrun", "local"):
        assert script not in launch_argv(spec(launcher, {"HF_TOKEN": SECRET}), PLACED, NODES, py)
    # the engine's own secret-looking variables never reach a job, allow-listed or not
    env = job_environment({"PATH": "/bin", "HOROVOD_SECRET_KEY": "x", "NCCL_TOKEN": "y",
                           "HOROVOD_CYCLE_TIME": "1", "FOO_TOKEN": "z"},
                          spec("horovodrun", {"HF_TOKEN": SECRET}))
    assert {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"} == {
        "PATH": "/bin", "HOROVOD_CYCLE_TIME": "1", "HF_TOKEN": SECRET}


# ---------------------------------------------------------------- the real chain

#: A stand-in for horovodrun: rank 0 here and rank 1 "on 10.0.0.2", each
#: command built by horovod 0.28.1's own functions from this process's
#: environment (as horovodrun builds them) and run through a shell, plus
#: horovodrun's ssh check of the host.
HOROVODRUN = """\
import os, shlex, subprocess, sys
from horovod.runner.common.util.hosts import SlotInfo
from horovod.runner.gloo_run import _slot_info_to_command_fn
from horovod.runner.util.remote import get_remote_command
to_command = _slot_info_to_command_fn(" ".join(shlex.quote(a) for a in sys.argv[1:]),
                                      dict(os.environ))
assert subprocess.run(get_remote_command("true", "10.0.0.2", 2222), shell=True).returncode == 0
for rank in (0, 1):
    command = to_command(SlotInfo("h", rank, 0, rank, 2, 1, 2))
    if rank == 1:
        command = get_remote_command(shlex.quote(f"cd /tmp > /dev/null 2>&1 ; {command}"),
                                     "10.0.0.2", 2222)
    assert subprocess.run(command, shell=True).returncode == 0, rank
"""
#: The rank: a hash of the secret, the variables it sees, and a pause so
#: that the process table is seen while the chain is up.
RANK = ("import hashlib, os, time; v = os.environ['HF_TOKEN']; "
        "print(os.environ['HOROVOD_RANK'], hashlib.sha256(v.encode()).hexdigest(), "
        "'LLMCONSOLE_SECRETS_FD' in os.environ, flush=True); time.sleep(0.5)")


def fake_ssh(folder: Path) -> Path:
    """A "real ssh" that records its argv and runs the remote command here,
    with stdin passed on, as sshd would on the other node."""
    folder.mkdir()
    record = folder / "calls.jsonl"
    script = folder / "ssh"
    script.write_text(
        f"#!{sys.executable}\nimport json, subprocess, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
        "sys.exit(subprocess.run(['/bin/sh', '-c', sys.argv[-1]]).returncode)\n")
    script.chmod(0o755)
    return record


def test_secrets_reach_every_rank_through_horovods_commands_and_no_command_line(
        tmp_path: Path) -> None:
    record = fake_ssh(tmp_path / "fake")
    stand_in = tmp_path / "horovodrun.py"
    stand_in.write_text(HOROVODRUN)
    env = {"PATH": f"{tmp_path / 'fake'}:{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": str(tmp_path), "HF_TOKEN": SECRET, "PYTHONPATH": os.pathsep.join(sys.path)}
    hosts = json.dumps({"10.0.0.2": {"port": 2222}})
    argv = [sys.executable, "-I", "-S", str(SECRET_EXEC_SCRIPT), "hold", "--names", "HF_TOKEN",
            "--", sys.executable, "-I", "-S", wrapper.__file__, "launch", "--hosts", hosts, "--",
            sys.executable, str(stand_in),
            sys.executable, "-I", "-S", str(SECRET_EXEC_SCRIPT), "rank", "--",
            sys.executable, "-c", RANK]
    leaks: list[str] = []
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    while proc.poll() is None:
        for p in psutil.process_iter(["cmdline"]):
            if SECRET in " ".join(p.info["cmdline"] or []):
                leaks.append(" ".join(p.info["cmdline"]))
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    # both ranks, the one on "this node" and the one over ssh, see the value;
    # neither keeps llmconsole's variable
    assert sorted(out.decode().split("\n")[:-1]) == [f"0 {digest} False", f"1 {digest} False"]
    assert not leaks, leaks
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls[0][-1] == "true"  # horovodrun's check: no secrets for it
    remote = calls[1][-1]
    assert remote.startswith(f"env {secret_exec.ENV_STDIN}=1 sh -c "), remote
    assert SECRET not in record.read_text() and SECRET not in err.decode()
    # the keeper is gone with the launch
    fd_path = [w for w in shlex.split(shlex.split(remote)[-1]) if w.startswith(
        f"{secret_exec.ENV_FD}=")][0].split("=", 1)[1]
    assert not Path(fd_path).exists()


def test_a_rank_without_its_secrets_says_why_in_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-I", "-S", str(SECRET_EXEC_SCRIPT), "rank", "--", "true"]
    gone = subprocess.run(base, env={secret_exec.ENV_FD: str(tmp_path / "gone")},
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 126 and "cannot read the job's secrets" in gone.stderr
    assert len(gone.stderr.splitlines()) == 1
    bad = subprocess.run(base, env={secret_exec.ENV_STDIN: "1"}, input="[1]",
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 126 and "not a JSON object" in bad.stderr
    usage = subprocess.run(base[:5], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_only_a_ranks_remote_command_is_rewritten_and_a_lost_keeper_is_one_line(
        tmp_path: Path) -> None:
    rank = f"cd /w > /dev/null 2>&1 ; env A=1 /py -I -S {SECRET_EXEC_SCRIPT} rank -- /py x.py"
    wrapped = wrapper.secret_command([rank])
    assert wrapped is not None and shlex.split(wrapped[0]) == [
        "env", f"{secret_exec.ENV_STDIN}=1", "sh", "-c", rank]
    quoted = "env A=1 /py -I -S '/a b/secret_exec.py' rank -- /py x.py"
    assert wrapper.secret_command(quoted.split(" ")) is not None  # ssh joins the words
    for other in (["true"], ["/py", "-m", "horovod.runner.task_fn", "secret_exec.py"]):
        assert wrapper.secret_command(other) is None
    fake_ssh(tmp_path / "fake")
    run = subprocess.run(
        [sys.executable, "-I", "-S", wrapper.__file__, "wrap", "10.0.0.2", rank],
        env={"PATH": f"{tmp_path / 'fake'}:/usr/bin:/bin",
             wrapper.ENV_SECRETS_FD: str(tmp_path / "gone")},
        capture_output=True, text=True, timeout=30)
    assert run.returncode == 255 and len(run.stderr.splitlines()) == 1, run.stderr
    assert "cannot read the job's secrets" in run.stderr
    assert not (tmp_path / "fake" / "calls.jsonl").exists()  # ssh never ran


def test_the_engines_copy_of_output_masks_the_jobs_secret_values(tmp_path: Path) -> None:
    from engine.agent.protocol import Log
    from engine.hub import EventHub
    from engine.ingest import Ingest, Running
    from engine.store import Store

    store = Store(tmp_path / "engine.db")
    hub = EventHub()
    seen: list[dict[str, object]] = []
    hub.publish = seen.append  # type: ignore[method-assign]
    ingest = Ingest(store, tmp_path / "logs", hub, time.time)
    spec = JobSpec(name="j", kind="command", argv=("true",),
                   env=(("HF_TOKEN", SECRET), ("PIN_KEY", "12345"), ("PLAIN", SECRET + "x")))
    run = Running(job_id=1, number=1, spec=spec, placements=(Placement("local", (), 1),))
    lines = [f"token={SECRET}", f"twice {SECRET}{SECRET}", "pin 12345 stays (too short to mask)",
             "nothing here"]
    offset = 0
    for line in lines:
        ingest.log(run, run.parts["local"], Log("1.1", offset, offset + len(line) + 1, line))
        offset += len(line) + 1
    ingest.close(run)
    copy = ingest.log_path(1, 1).read_text().splitlines()
    assert copy == ["token=***", "twice ******", "pin 12345 stays (too short to mask)",
                    "nothing here"]
    streamed = [e["line"] for e in seen if e.get("type") == "log"]
    assert streamed == copy and SECRET not in json.dumps(seen)
    store.close()
