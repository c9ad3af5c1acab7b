"""The node agent end to end: real `python -m engine.agent` processes, real
jobs, real signals. The protocol's tests (start, stream, exit, stop, attach,
bytes) are one suite per transport: `[local]` drives the agent through
LocalAgentChannel, `[ssh]` through SshAgentChannel on a real sshd test host
on loopback (chaos/hosts.py), with the same assertions. Each test
uses its own tmp_path root; leftover job processes of that root are killed
afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chaos.hosts import SshHosts
from engine.agent import stacks
from engine.agent.protocol import VERSION, Dump, Exited, Log, Pong, Simple, Start, parse_event
from engine.model import NodeSpec
from engine.transport import (
    AgentChannel,
    AgentError,
    LocalAgentChannel,
    SubprocessChannel,
    agent_argv,
)
from engine.transport.factory import channel_factory
from engine.transport.local import agent_env
from engine.transport.ssh import SshAgentChannel
from tests.integration.agent_driver import (
    JOB_ENV,
    PY,
    Driver,
    Event,
    gone,
    marked_processes,
    run_dir,
    wait_gone,
)
from tests.integration.test_owner import NOBODY, python_for_nobody


@pytest.fixture()
def root(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "node"
    yield r
    for pid in marked_processes(r):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


MakeDriver = Callable[..., Driver]


@pytest.fixture(scope="module")
def agent_hosts() -> Iterator[SshHosts]:
    """One sshd test host for the [ssh] suite of this module."""
    with SshHosts.start(1) as hosts:
        yield hosts


@pytest.fixture(params=["local", "ssh"])
def backend(request: pytest.FixtureRequest) -> MakeDriver:
    """Makes Drivers over one transport: the local one, or SSH to a test host."""
    if request.param == "local":
        return Driver
    hosts: SshHosts = request.getfixturevalue("agent_hosts")

    def make(root: Path, **kw: Any) -> Driver:
        return Driver(root, ssh=hosts, **kw)
    return make


@pytest.fixture()
async def agent(root: Path, backend: MakeDriver) -> AsyncIterator[Driver]:
    d = await backend(root).start()
    yield d
    await d.close()


# ---------------------------------------------------------------------------


async def test_hello_and_telemetry_at_interval(agent: Driver) -> None:
    hello = agent.ch.hello
    assert isinstance(agent.ch, AgentChannel)
    assert hello is not None and agent.ch.alive
    assert hello["ev"] == "hello" and hello["node"] == "n1" and hello["version"] == 1
    assert hello["pid"] == agent.agent_pid() and hello["cpus"] == os.cpu_count()
    assert hello["memory_gb"] > 0 and hello["runs"] == []
    assert hello["gpus"] == []  # no NVIDIA driver on this machine
    await agent.until(lambda e: sum(x["ev"] == "telemetry" for x in agent.events) >= 6,
                      timeout=5)
    tele = [(e, t) for e, t in zip(agent.events, agent.times, strict=True)
            if e["ev"] == "telemetry"]
    gaps = [b[1] - a[1] for a, b in zip(tele, tele[1:], strict=False)]
    assert 0.15 < sum(gaps) / len(gaps) < 0.3 and max(gaps) < 0.6, gaps
    for ev, _ in tele:
        assert ev["node"] == "n1" and ev["gpus"] == []
        assert 0 <= ev["cpu_percent"] <= 100 and 0 < ev["memory_percent"] < 100
        assert ev["memory_used_gb"] > 0 and len(ev["load"]) == 3
        assert abs(ev["time"] - time.time()) < 5


async def test_ping_and_malformed_commands(agent: Driver) -> None:
    await agent.ch.send({"op": "ping", "id": "x1"})
    assert (await agent.until(lambda e: e["ev"] == "pong"))["id"] == "x1"
    assert agent.ch.pid is not None
    proc = agent.ch._proc  # raw bytes, bypassing send()'s JSON encoding
    assert proc is not None and proc.stdin is not None
    proc.stdin.write(b"this is not json\n[1,2]\n")
    await agent.ch.send({"op": "frobnicate"})
    await agent.ch.send({"op": "start", "attempt": "../etc", "argv": ["x"]})
    await agent.ch.send({"op": "start", "attempt": "3.1", "argv": "echo hi"})
    await agent.ch.send({"op": "ping", "id": 2})
    await agent.until(lambda e: e["ev"] == "pong" and e["id"] == 2)
    errors = [e for e in agent.events if e["ev"] == "error"]
    assert len(errors) == 5, errors
    assert "not JSON" in errors[0]["message"] and "not a JSON object" in errors[1]["message"]
    assert "frobnicate" in errors[2]["message"]
    assert "invalid attempt id" in errors[3]["message"]
    assert errors[4]["attempt"] == "3.1" and "argv" in errors[4]["message"]
    assert not (agent.root / "etc").exists() and not run_dir(agent.root, "3.1").exists()
    assert agent.ch.alive


JOB = r"""
import json, os, sys
run = os.environ["LLMCONSOLE_RUN_DIR"]
print("line one")
sys.stderr.write("to stderr\n"); sys.stderr.flush()
sys.stdout.buffer.write(b"bad \xff utf8 \xc3\xa9\n"); sys.stdout.flush()
print("")
with open(os.path.join(run, "metrics.jsonl"), "a") as m:
    m.write(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    m.write("{not json\n")
    m.write(json.dumps({"step": 2, "loss": float("nan")}) + "\n")
    m.flush()
print("last line, no newline", end="")
"""


async def test_command_job_streams_lines_metrics_and_exit(agent: Driver, root: Path) -> None:
    await agent.start_job("12.1", JOB)
    exited = await agent.exited("12.1")
    assert exited["code"] == 0 and exited["signal"] is None
    kinds = [e["ev"] for e in agent.events if e.get("attempt") == "12.1"]
    assert kinds[0] == "started" and kinds[-1] == "exited"
    started = agent.of("12.1", "started")[0]
    assert started["pid"] > 0 and started["pgid"] == started["pid"]
    assert agent.lines("12.1") == ["line one", "to stderr", "bad \udcff utf8 \u00e9", "",
                                   "last line, no newline"]
    # offsets address the raw bytes of output.log
    raw = (run_dir(root, "12.1") / "output.log").read_bytes()
    logs = agent.of("12.1", "log")
    assert logs[0]["offset"] == 0
    for ev, nxt in zip(logs, logs[1:] + [None], strict=True):
        assert raw[ev["offset"]:ev["end"]].rstrip(b"\n").decode(
            errors="surrogateescape") == ev["line"]
        assert ev["end"] == (nxt["offset"] if nxt else len(raw))
    metrics = agent.of("12.1", "metric")
    assert [m["record"]["step"] for m in metrics] == [1, 2]
    assert metrics[0]["record"]["loss"] == 2.5 and metrics[1]["record"]["loss"] != 2.5  # NaN
    assert metrics[0]["offset"] == 0 and metrics[1]["offset"] > metrics[0]["end"]
    bad = [e for e in agent.of("12.1", "error") if "metrics.jsonl" in e["message"]]
    assert len(bad) == 1 and f"offset {metrics[0]['end']}" in bad[0]["message"]
    assert agent.ch.alive
    files = {p.name for p in run_dir(root, "12.1").iterdir()}
    assert {"spec.json", "pid", "heartbeat", "exit.json", "output.log",
            "metrics.jsonl"} <= files


async def test_failing_job_reports_its_exit_code(agent: Driver) -> None:
    await agent.start_job("4.1", "import sys; print('boom'); sys.exit(3)")
    ev = await agent.exited("4.1")
    assert ev["code"] == 3 and ev["signal"] is None
    assert agent.lines("4.1") == ["boom"]


async def test_missing_program_exits_127_with_message(agent: Driver, root: Path) -> None:
    await agent.ch.send({"op": "start", "attempt": "5.1", "argv": ["no-such-program-xyz", "a"],
                         "env": JOB_ENV, "cwd": None, "gpus": []})
    ev = await agent.exited("5.1")
    assert ev["code"] == 127
    err = agent.of("5.1", "error")
    assert len(err) == 1 and "no-such-program-xyz" in err[0]["message"]
    assert not agent.of("5.1", "started")
    assert any("no-such-program-xyz" in line for line in agent.lines("5.1"))
    assert json.loads((run_dir(root, "5.1") / "exit.json").read_text())["code"] == 127


async def test_missing_cwd_is_reported(agent: Driver, tmp_path: Path) -> None:
    await agent.start_job("5.2", "print(1)", cwd=str(tmp_path / "nowhere"))
    ev = await agent.exited("5.2")
    assert ev["code"] == 126
    assert "nowhere" in agent.of("5.2", "error")[0]["message"]


async def test_cwd_defaults_to_run_dir_and_can_be_set(agent: Driver, root: Path,
                                                      tmp_path: Path) -> None:
    await agent.start_job("6.1", "import os; print(os.getcwd())")
    await agent.start_job("6.2", "import os; print(os.getcwd())", cwd=str(tmp_path))
    await agent.exited("6.1")
    await agent.exited("6.2")
    assert agent.lines("6.1") == [str(run_dir(root, "6.1").resolve())]
    assert agent.lines("6.2") == [str(tmp_path)]


TREE = r"""
import os, subprocess, sys, time
kid = subprocess.Popen(["sleep", "60"])
escapee = subprocess.Popen(["sleep", "61"], start_new_session=True)
print(os.getpid(), kid.pid, escapee.pid, flush=True)
time.sleep(60)
"""


async def test_stop_kills_the_whole_process_group(agent: Driver) -> None:
    await agent.start_job("7.1", TREE)
    ev = await agent.until(lambda e: e["ev"] == "log" and e["attempt"] == "7.1")
    pids = [int(x) for x in ev["line"].split()]
    job, kid, escapee = pids
    assert os.getpgid(kid) == job and os.getpgid(escapee) != job
    assert not any(gone(p) for p in pids)
    t0 = time.monotonic()
    await agent.ch.send({"op": "stop", "attempt": "7.1", "grace": 5})
    exited = await agent.exited("7.1")
    assert exited["signal"] == signal.SIGTERM and exited["code"] is None
    assert await wait_gone(pids), [p for p in pids if not gone(p)]
    assert time.monotonic() - t0 < 3  # SIGTERM was enough: no wait for the grace


async def test_job_ignoring_sigterm_is_killed_after_grace(agent: Driver) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    await agent.start_job("8.1", code)
    await agent.until(lambda e: e["ev"] == "log" and e["line"] == "ready")
    t0 = time.monotonic()
    await agent.ch.send({"op": "stop", "attempt": "8.1", "grace": 0.5})
    exited = await agent.exited("8.1")
    elapsed = time.monotonic() - t0
    assert exited["signal"] == signal.SIGKILL
    assert 0.5 <= elapsed < 3, elapsed
    pid = agent.of("8.1", "started")[0]["pid"]
    assert gone(pid)


async def test_stop_right_after_start(agent: Driver) -> None:
    await agent.start_job("8.2", "import time; time.sleep(60)")
    await agent.ch.send({"op": "stop", "attempt": "8.2", "grace": 5})
    exited = await agent.exited("8.2")
    assert exited["signal"] == signal.SIGTERM


async def test_hostile_arguments_arrive_verbatim(agent: Driver, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    args = ['; rm -rf ~ $(reboot) "\'', f"$(touch {canary})", f"`touch {canary}`",
            f"; touch {canary}", "&& echo pwned |", "$HOME", "*", "--", "-c", "", "a\tb",
            "naïve ☃", "\\n"]
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    await agent.start_job("9.1", code, *args)
    ev = await agent.exited("9.1")
    assert ev["code"] == 0
    lines = agent.lines("9.1")
    assert len(lines) == 1 and json.loads(lines[0]) == args
    assert not canary.exists()
    assert Path.home().exists()


async def test_environment_and_gpus(agent: Driver, root: Path) -> None:
    code = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            "['CUDA_VISIBLE_DEVICES', 'LLMCONSOLE_ATTEMPT', 'LLMCONSOLE_RUN_DIR', "
            "'PYTHONUNBUFFERED', 'HF_TOKEN', 'HOME', 'CUDA_DEVICE_ORDER']}))")
    secret = "hf_s3cr3t-value-never-on-disk"
    await agent.start_job("10.1", code, gpus=[2, 3], env={**JOB_ENV, "HF_TOKEN": secret})
    await agent.start_job("10.2", code)
    await agent.exited("10.1")
    await agent.exited("10.2")
    one = json.loads(agent.lines("10.1")[0])
    d = run_dir(root, "10.1")
    assert one == {"CUDA_VISIBLE_DEVICES": "2,3", "LLMCONSOLE_ATTEMPT": "10.1",
                   "LLMCONSOLE_RUN_DIR": str(d.resolve()), "PYTHONUNBUFFERED": "1",
                   "HF_TOKEN": secret, "HOME": None, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    two = json.loads(agent.lines("10.2")[0])
    assert two["CUDA_VISIBLE_DEVICES"] == "" and two["HF_TOKEN"] is None
    spec = json.loads((d / "spec.json").read_text())
    assert spec["argv"][:2] == [PY, "-c"] and spec["gpus"] == [2, 3] and spec["cwd"] is None
    assert spec["env_names"] == ["HF_TOKEN", "PATH"]
    for f in d.iterdir():  # the value is in no file the agent or supervisor wrote
        if f.name != "output.log":  # (the job itself printed it)
            assert secret.encode() not in f.read_bytes(), f


async def test_double_start_is_idempotent(agent: Driver, root: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = ("import os, sys, time\nprint('run', flush=True)\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n")
    msg = {"op": "start", "attempt": "11.1", "argv": [PY, "-c", code, str(gate)],
           "env": JOB_ENV, "cwd": None, "gpus": []}
    await agent.ch.send(msg)
    await agent.ch.send(msg)  # back to back: before the job even started
    first = await agent.until(lambda e: e["ev"] == "started" and e["attempt"] == "11.1")
    await agent.until(lambda e: e["ev"] == "log" and e["attempt"] == "11.1")
    await agent.ch.send(msg)  # while it runs: "started" again, same pid
    await agent.until(lambda e: len(agent.of("11.1", "started")) == 2)
    assert [s["pid"] for s in agent.of("11.1", "started")] == [first["pid"]] * 2
    gate.touch()
    await agent.exited("11.1")
    await agent.ch.send(msg)  # after it finished: "exited" again, nothing started
    await agent.until(lambda e: len(agent.of("11.1", "exited")) == 2)
    await agent.ch.send({"op": "ping", "id": 1})
    await agent.until(lambda e: e["ev"] == "pong")
    assert len(agent.of("11.1", "started")) == 2
    assert agent.lines("11.1") == ["run"]
    assert (run_dir(root, "11.1") / "output.log").read_text() == "run\n"


async def test_list_reports_runs(agent: Driver, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    await agent.start_job("13.1", "print(1)")
    await agent.start_job("13.2", "import os, sys, time\n"
                                  "while not os.path.exists(sys.argv[1]): time.sleep(0.01)",
                          str(gate))
    await agent.exited("13.1")
    started = await agent.until(lambda e: e["ev"] == "started" and e["attempt"] == "13.2")
    await agent.ch.send({"op": "list"})
    runs = {r["attempt"]: r for r in (await agent.until(lambda e: e["ev"] == "runs"))["runs"]}
    assert runs["13.1"]["alive"] is False and runs["13.1"]["exit"]["code"] == 0
    assert runs["13.2"] == {"attempt": "13.2", "pid": started["pid"], "alive": True,
                            "exit": None}
    gate.touch()
    await agent.exited("13.2")


SLOW = r"""
import json, os, sys, time
run = os.environ["LLMCONSOLE_RUN_DIR"]
def gate(name):
    while not os.path.exists(os.path.join(sys.argv[1], name)):
        time.sleep(0.01)
def metric(step):
    with open(os.path.join(run, "metrics.jsonl"), "a") as m:
        m.write(json.dumps({"step": step}) + "\n")
print("first", flush=True); metric(1)
gate("one")
print("while the agent was dead", flush=True); metric(2)
gate("two")
print("after", flush=True); metric(3)
"""


async def test_job_survives_agent_kill_and_new_agent_reattaches(root: Path, tmp_path: Path,
                                                                backend: MakeDriver) -> None:
    first = await backend(root).start()
    await first.start_job("14.1", SLOW, str(tmp_path))
    line = await first.until(lambda e: e["ev"] == "log" and e["line"] == "first")
    metric = await first.until(lambda e: e["ev"] == "metric")
    job = first.of("14.1", "started")[0]["pid"]
    assert first.ch.pid is not None
    first.kill_agent()
    await asyncio.wait_for(first.ended.wait(), 5)
    assert not first.ch.alive
    (tmp_path / "one").touch()
    out = run_dir(root, "14.1") / "output.log"
    for _ in range(500):
        if b"dead" in out.read_bytes():
            break
        await asyncio.sleep(0.01)
    assert not gone(job)  # the job outlived its agent

    second = await backend(root).start()
    try:
        hello = second.ch.hello
        assert hello is not None
        assert hello["runs"] == [{"attempt": "14.1", "pid": job, "alive": True, "exit": None}]
        await second.ch.send({"op": "attach", "attempt": "14.1",
                              "offsets": {"output": line["end"], "metrics": metric["end"]}})
        await second.until(lambda e: e["ev"] == "log" and e["line"] == "while the agent was dead")
        (tmp_path / "two").touch()
        exited = await second.exited("14.1")
        assert exited["code"] == 0
        assert second.lines("14.1") == ["while the agent was dead", "after"]
        assert second.of("14.1", "log")[0]["offset"] == line["end"]
        assert [m["record"]["step"] for m in second.of("14.1", "metric")] == [2, 3]
        assert not second.of("14.1", "started")
    finally:
        await second.close()


async def test_lost_when_supervisor_and_job_die_without_exit_record(agent: Driver,
                                                                    root: Path) -> None:
    await agent.start_job("15.1", "import time; print('up', flush=True); time.sleep(60)")
    started = await agent.until(lambda e: e["ev"] == "started" and e["attempt"] == "15.1")
    await agent.until(lambda e: e["ev"] == "log" and e["attempt"] == "15.1")
    os.kill(started["supervisor"], signal.SIGKILL)
    os.killpg(started["pgid"], signal.SIGKILL)
    lost = await agent.until(lambda e: e["ev"] == "lost" and e["attempt"] == "15.1", 5)
    assert str(started["supervisor"]) in lost["reason"]
    assert not agent.of("15.1", "exited")


async def test_start_to_first_output_is_fast(agent: Driver) -> None:
    await agent.ch.send({"op": "ping", "id": "warm"})
    await agent.until(lambda e: e["ev"] == "pong")
    t0 = time.monotonic()
    await agent.start_job("16.1", "print('hi')")
    await agent.until(lambda e: e["ev"] == "log" and e["attempt"] == "16.1")
    latency = time.monotonic() - t0
    print(f"start -> first output line: {latency * 1000:.0f} ms")
    assert latency < 1.0  # target 0.25 s; loose here so a loaded CI box passes
    await agent.exited("16.1")


async def test_close_leaves_jobs_running_and_dead_agent_is_an_error(root: Path,
                                                                    tmp_path: Path) -> None:
    d = await Driver(root).start()
    await d.start_job("17.1", "import time; print('up', flush=True); time.sleep(60)")
    started = await d.until(lambda e: e["ev"] == "started")
    await d.close()
    assert not d.ch.alive and not gone(started["pid"])
    with pytest.raises(AgentError, match="n1"):
        await d.ch.send({"op": "ping"})
    broken = LocalAgentChannel("bad", root, extra_args=["--no-such-flag"])
    with pytest.raises(AgentError, match="node bad.*before hello"):
        await broken.start()
    assert agent_argv("n", "/r", 0.5, "py", ["--grace", "3"]) == [
        "py", "-m", "engine.agent", "--node", "n", "--root", "/r", "--interval", "0.5",
        "--grace", "3"]


async def test_eof_on_stdin_exits_cleanly_and_stdout_is_only_events(root: Path) -> None:
    """Raw process, no channel: every stdout line is a JSON event, the job's
    own output never reaches the agent's stdout, EOF ends the agent (rc 0),
    and the job keeps running."""
    from engine.transport.local import agent_env

    proc = await asyncio.create_subprocess_exec(
        *agent_argv("raw", root, 0.2), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=agent_env())
    assert proc.stdin is not None and proc.stdout is not None
    start = {"op": "start", "attempt": "18.1", "env": JOB_ENV, "gpus": [],
             "argv": [PY, "-c", "import sys, time; print('job says hi', flush=True); "
                                "sys.stderr.write('job err\\n'); time.sleep(60)"]}
    proc.stdin.write(json.dumps(start).encode() + b"\n")
    await proc.stdin.drain()
    out = b""
    while b'"ev":"log"' not in out:
        out += await asyncio.wait_for(proc.stdout.readline(), 5)
    proc.stdin.close()
    rest, err = await asyncio.wait_for(proc.communicate(), 5)
    assert proc.returncode == 0
    events = [json.loads(line) for line in (out + rest).splitlines()]
    assert events[0]["ev"] == "hello" and events[0]["node"] == "raw"
    mentions = [e for e in events if "job says hi" in json.dumps(e)]
    assert [(e["ev"], e["line"]) for e in mentions] == [("log", "job says hi")]
    assert b"job err" not in err and (out + rest).count(b"job says hi") == 1
    started = next(e for e in events if e["ev"] == "started")
    assert not gone(started["pid"])


async def test_stop_without_attach_after_agent_restart(root: Path,
                                                     backend: MakeDriver) -> None:
    first = await backend(root).start()
    await first.start_job("19.1", "import time; print('up', flush=True); time.sleep(60)")
    await first.until(lambda e: e["ev"] == "log" and e["attempt"] == "19.1")
    job = first.of("19.1", "started")[0]["pid"]
    assert first.ch.pid is not None
    first.kill_agent()
    await asyncio.wait_for(first.ended.wait(), 5)
    second = await backend(root).start()
    try:
        await second.ch.send({"op": "stop", "attempt": "19.1", "grace": 5})
        exited = await second.exited("19.1")
        assert exited["signal"] == signal.SIGTERM
        assert not second.of("19.1", "log")  # no replay of what the engine already has
        assert await wait_gone([job])
        await second.ch.send({"op": "stop", "attempt": "19.1"})  # finished: exited again
        await second.until(lambda e: len(second.of("19.1", "exited")) == 2)
        await second.ch.send({"op": "stop", "attempt": "99.9"})
        err = await second.until(lambda e: e["ev"] == "error" and e.get("attempt") == "99.9")
        assert "no run directory" in err["message"]
    finally:
        await second.close()


async def test_leftover_processes_are_ended_with_the_job(agent: Driver) -> None:
    """The main process exits leaving a background child in its group and one
    that escaped with setsid: both are gone by the time "exited" arrives."""
    code = ("import subprocess\n"
            "a = subprocess.Popen(['sleep', '60'])\n"
            "b = subprocess.Popen(['sleep', '61'], start_new_session=True)\n"
            "print(a.pid, b.pid, flush=True)\n")
    await agent.start_job("20.1", code)
    exited = await agent.exited("20.1")
    assert exited["code"] == 0
    pids = [int(x) for x in agent.lines("20.1")[0].split()]
    assert all(gone(p) for p in pids), [psutil.Process(p).status() for p in pids if not gone(p)]


async def test_supervisor_finishes_a_stop_when_the_agent_dies_mid_grace(
        root: Path, backend: MakeDriver) -> None:
    d = await backend(root).start()
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    await d.start_job("21.1", code)
    await d.until(lambda e: e["ev"] == "log" and e["line"] == "ready")
    job = d.of("21.1", "started")[0]["pid"]
    await d.ch.send({"op": "stop", "attempt": "21.1", "grace": 0.3})
    stop_file = run_dir(root, "21.1") / "stop"
    for _ in range(200):
        if stop_file.exists():
            break
        await asyncio.sleep(0.01)
    assert d.ch.pid is not None
    d.kill_agent()  # before its SIGKILL escalation
    assert await wait_gone([job], timeout=5)
    exit_file = run_dir(root, "21.1") / "exit.json"
    for _ in range(200):
        if exit_file.exists():
            break
        await asyncio.sleep(0.01)
    assert json.loads(exit_file.read_text())["signal"] == signal.SIGKILL


async def test_oversized_and_long_lines(agent: Driver, root: Path) -> None:
    code = ("import sys; sys.stdout.write('a' * 2_500_000 + '\\n' + 'tail\\r\\n'); "
            "sys.stdout.flush()")
    await agent.start_job("22.1", code)
    await agent.exited("22.1")
    logs = agent.of("22.1", "log")
    assert [len(e["line"]) for e in logs] == [1 << 20, 1 << 20, 2_500_000 - 2 * (1 << 20), 4]
    assert logs[-1]["line"] == "tail" and logs[-1]["end"] == 2_500_000 + 1 + 6
    assert [e["offset"] for e in logs[1:]] == [e["end"] for e in logs[:-1]]
    proc = agent.ch._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.write(b"x" * (17 * 1024 * 1024) + b"\n")
    await agent.ch.send({"op": "ping", "id": "after"})
    await agent.until(lambda e: e["ev"] == "pong")
    errors = [e for e in agent.events if e["ev"] == "error"]
    assert len(errors) == 1 and "longer than" in errors[0]["message"]


COUNT_TERMS = r"""
import os, signal, subprocess, sys, time
def say(*words):  # one write per line: the three processes share output.log
    os.write(1, (" ".join(words) + "\n").encode())
def counted(name, then_exit):
    seen = []
    def on_term(*_):
        seen.append(1)
        say(name, "TERM", str(len(seen)))
        if then_exit:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
if len(sys.argv) > 2:  # a helper: the kid (in the job's group) or the escapee (setsid)
    counted(sys.argv[1], False)
    say(sys.argv[1], "ready")
    while True:
        time.sleep(1)
main_exits = sys.argv[1] == "exits"
helpers = [subprocess.Popen([sys.executable, "-c", __CODE__, name, "helper"],
                            start_new_session=name == "escapee") for name in ("kid", "escapee")]
counted("main", main_exits)
say("main ready")
while True:
    time.sleep(1)
"""


async def test_a_job_ignoring_sigterm_gets_it_once_per_process(agent: Driver) -> None:
    """The stop's SIGTERM reaches the job's group and the processes that left
    it once each, whether the main process ignores it (SIGKILL after grace)
    or exits on it (the supervisor then ends what is left, without a second
    SIGTERM)."""
    code = COUNT_TERMS.replace("__CODE__", repr(COUNT_TERMS))
    for attempt, main in (("23.1", "ignores"), ("23.2", "exits")):
        await agent.start_job(attempt, code, main)
    def all_ready(_: Event) -> bool:
        return all(sum(line.endswith("ready") for line in agent.lines(a)) == 3
                   for a in ("23.1", "23.2"))
    await agent.until(all_ready)
    for attempt in ("23.1", "23.2"):
        await agent.ch.send({"op": "stop", "attempt": attempt, "grace": 1})
    ignored, exited = await agent.exited("23.1"), await agent.exited("23.2")
    assert ignored["signal"] == signal.SIGKILL and exited["code"] == 0
    for attempt in ("23.1", "23.2"):
        terms = sorted(line for line in agent.lines(attempt) if "TERM" in line)
        assert terms == ["escapee TERM 1", "kid TERM 1", "main TERM 1"], (attempt, terms)
    await agent.ch.send({"op": "list"})
    listed = await agent.until(lambda e: e["ev"] == "runs")
    assert not any(r["alive"] for r in listed["runs"])


async def test_log_lines_keep_every_byte(agent: Driver, root: Path) -> None:
    """Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape),
    so the engine can write back exactly what the job wrote."""
    code = ("import sys; out = sys.stdout.buffer\n"
            "out.write(bytes(range(0x80, 0x100)) + b'\\n')\n"
            "out.write(b'half \\xe2\\x82 euro \\xe2\\x82\\xac cr\\r\\n'); out.flush()")
    await agent.start_job("24.1", code)
    assert (await agent.exited("24.1"))["code"] == 0
    raw = (run_dir(root, "24.1") / "output.log").read_bytes()
    assert [line.encode("utf-8", "surrogateescape") for line in agent.lines("24.1")] == [
        bytes(range(0x80, 0x100)), b"half \xe2\x82 euro \xe2\x82\xac cr"]
    assert raw.split(b"\n")[0] == bytes(range(0x80, 0x100))
    assert agent.lines("24.1")[1] == "half \udce2\udc82 euro \u20ac cr"
    # a lone surrogate cannot be exec()'d: the start is refused, nothing runs
    await agent.ch.send({"op": "start", "attempt": "24.2", "argv": ["echo", "\udcff"],
                         "env": JOB_ENV})
    err = await agent.until(lambda e: e["ev"] == "error" and e.get("attempt") == "24.2")
    assert err["op"] == "start" and "not UTF-8" in err["message"]
    assert not run_dir(root, "24.2").exists()


async def test_an_agent_of_another_protocol_version_is_refused_at_hello(root: Path) -> None:
    """A node running another llmconsole: the channel refuses its hello
    with both versions and the fix, and ends that agent."""
    hello = {"ev": "hello", "node": "old", "pid": 1, "version": VERSION + 1, "host": "h",
             "cpus": 1, "memory_gb": 1.0, "gpus": [], "runs": []}
    for said, complaint in ((hello, f"speaks protocol version {VERSION + 1}, this engine "
                                     f"version {VERSION}: install the same llmconsole"),
                            ({**hello, "version": VERSION, "pid": "one"},
                             "hello event: pid must be an integer")):
        fake = LocalAgentChannel("old", root)
        fake.argv = [PY, "-c", f"import time; print({json.dumps(said)!r}, flush=True); "
                               "time.sleep(60)"]
        with pytest.raises(AgentError, match=f"agent on node old: {complaint}"):
            await fake.start()
        assert not fake.alive and fake.hello is None


async def test_any_command_line_that_runs_the_agent_is_a_channel(root: Path) -> None:
    """SubprocessChannel is the transport-independent part: the agent behind
    another command in front of its argv (as ssh will be) works the same,
    and typed commands travel as their to_wire()."""
    ch = SubprocessChannel("n2", ["env", "LLMCONSOLE_VIA=wrapper",
                                  *agent_argv("n2", root, 0.2)], agent_env())
    await ch.start()
    try:
        assert ch.hello is not None and ch.hello_event is not None
        assert ch.hello_event.node == "n2" and ch.hello_event.version == VERSION
        assert parse_event(ch.hello) == ch.hello_event
        with open(f"/proc/{ch.pid}/environ", "rb") as f:  # the agent ran behind `env`
            assert b"LLMCONSOLE_VIA=wrapper" in f.read().split(b"\0")
        await ch.send(Start("25.1", (PY, "-c", "print('via the wrapper')"), JOB_ENV))
        await ch.send(Simple("ping", 25))
        seen = []
        async for ev in ch.events():
            event = parse_event(ev)
            seen.append(event)
            if isinstance(event, Exited):
                break
        lines = [e.line for e in seen if isinstance(e, Log)]
        assert lines == ["via the wrapper"] and Pong(25) in seen
    finally:
        await ch.close()
    assert not ch.alive


def test_channel_factory_gives_the_head_node_a_local_agent_and_others_ssh(
        tmp_path: Path) -> None:
    """Changed with the SSH transport: a node with a host gets an ssh channel
    (before, it was refused as needing a transport this engine lacked)."""
    make = channel_factory(tmp_path, 0.5, known_hosts="/k/known_hosts")
    local = make(NodeSpec("head"))
    assert isinstance(local, LocalAgentChannel) and local.root == tmp_path
    assert local.argv[-2:] == ["--interval", "0.5"] and "--root" in local.argv
    remote = make(NodeSpec("gpu1", host="10.0.0.7", port=2222, python="/opt/py/bin/python"))
    assert isinstance(remote, SshAgentChannel) and remote.node == "gpu1"
    assert remote.argv[0] == "ssh" and remote.argv[-3:] == [
        "--", "10.0.0.7", f"exec /opt/py/bin/python -m engine.agent --node gpu1 --root "
                          f"{tmp_path}/nodes/gpu1 --interval 0.5"]
    assert "UserKnownHostsFile=/k/known_hosts" in remote.argv
    assert remote.argv[remote.argv.index("-p") + 1] == "2222"


STUCK = r"""
import os, subprocess, sys, time
def stuck_here(tag):
    print(tag, flush=True)
    time.sleep(120)
if len(sys.argv) > 1:
    stuck_here("child ready")
child = subprocess.Popen([sys.executable, "-c", CODE, "child"], env={**os.environ, "RANK": "1"})
other = subprocess.Popen(["sleep", "120"])  # no Python in it: not dumped, not an error
stuck_here("parent ready")
"""


@pytest.fixture()
def open_top() -> Iterator[Path]:
    """A folder every user may traverse (pytest's tmp_path is under a 0700
    one), for agents whose jobs run as nobody; their jobs are killed after."""
    top = Path(tempfile.mkdtemp(prefix="llc-dump-", dir="/tmp"))
    top.chmod(0o711)
    yield top
    for pid in marked_processes(top / "node"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(top, ignore_errors=True)


async def test_dump_writes_a_stack_file_per_rank_and_refuses_a_bad_label(open_top: Path
                                                                         ) -> None:
    """Both ranks of a job (RANK=0 from the start's env, RANK=1 set for its
    child) are dumped by py-spy into the run dir's stacks/<label>/, each file
    naming node, rank and pid and holding the function they sleep in; a
    second agent with no run dir of the attempt (a node horovodrun reached
    over SSH) writes under its own root; a bad label is an error event and
    the agent goes on; the job's `sleep` child, no Python, is left out. A
    job run as its owner (nobody) gets files it owns;
    a missing py-spy is an error line per process, not a crash."""
    code = f"CODE = {STUCK!r}\n" + STUCK
    root, root2 = open_top / "node", open_top / "node2"
    agent = await Driver(root).start()
    other = await Driver(root2).start()
    try:
        await agent.start_job("21.1", code, env={**JOB_ENV, "RANK": "0"})
        await agent.until(lambda e: e["ev"] == "log" and e["line"] == "child ready", 30)
        await agent.until(lambda e: e["ev"] == "log" and e["line"] == "parent ready", 30)
        started = time.monotonic()
        await agent.ch.send({"op": "dump", "attempt": "21.1", "label": "stall-1"})
        await agent.ch.send({"op": "dump", "attempt": "21.1", "label": "../up"})
        await agent.ch.send({"op": "ping", "id": "after"})
        dumped = await agent.until(lambda e: e["ev"] == "dumped", timeout=30)
        took = time.monotonic() - started
        assert dumped["attempt"] == "21.1" and dumped["errors"] == [], dumped
        folder = run_dir(root, "21.1") / "stacks" / "stall-1"
        files = sorted(Path(f) for f in dumped["files"])
        job_pid = agent.of("21.1", "started")[0]["pid"]
        assert [f.parent for f in files] == [folder, folder]
        assert [f.name.split("-pid")[0] for f in files] == ["rank-0-n1", "rank-1-n1"]
        assert files[0].name == f"rank-0-n1-pid{job_pid}.txt"
        for rank, f in enumerate(files):
            text = f.read_text()
            header = text.splitlines()[0]
            assert header.startswith(f"# node=n1 rank={rank} pid=") and "cmdline=" in header
            assert "stuck_here" in text, text
        bad = await agent.until(lambda e: e["ev"] == "error" and e.get("op") == "dump")
        assert "label '../up' is not a folder name" in bad["message"]
        assert bad["attempt"] == "21.1" and not (root / "up").exists()
        assert len(agent.of("21.1", "dumped")) == 1 and agent.ch.alive
        await agent.until(lambda e: e["ev"] == "pong" and e["id"] == "after")
        # a node with no run directory of the attempt: the launching node's named
        await other.ch.send({"op": "dump", "attempt": "21.1", "label": "stall-1",
                             "run_dir": str(run_dir(root, "21.1"))})
        remote = await other.until(lambda e: e["ev"] == "dumped", timeout=30)
        there = run_dir(root2, "21.1") / "stacks" / "stall-1"
        assert sorted(Path(f).parent for f in remote["files"]) == [there, there], remote
        assert not (run_dir(root2, "21.1") / "pid").exists()
        await other.ch.send({"op": "dump", "attempt": "99.1", "label": "none"})
        assert (await other.until(lambda e: e["ev"] == "dumped" and e["attempt"] == "99.1")
                ) == {"ev": "dumped", "attempt": "99.1", "files": [], "errors": []}
        # run as its owner: the label folder and the files are the owner's
        await agent.ch.send({"op": "start", "attempt": "22.1", "uid": NOBODY,
                             "argv": [python_for_nobody(), "-c", code],
                             "env": {**JOB_ENV, "OMPI_COMM_WORLD_RANK": "3"}, "cwd": None,
                             "gpus": []})
        await agent.until(lambda e: e["ev"] == "log" and e["attempt"] == "22.1"
                          and e["line"] == "parent ready", 30)
        await agent.ch.send({"op": "dump", "attempt": "22.1", "label": "owned"})
        owned = await agent.until(lambda e: e["ev"] == "dumped" and e["attempt"] == "22.1",
                                  timeout=30)
        names = sorted(Path(f).name.split("-pid")[0] for f in owned["files"])
        assert names == ["rank-1-n1", "rank-3-n1"] and owned["errors"] == [], owned
        for f in [*owned["files"], str(Path(owned["files"][0]).parent)]:
            assert os.stat(f).st_uid == NOBODY, f
        missing = await stacks.dump(Dump("22.1", "again"), "n1", root, "/no/such/py-spy")
        assert missing.files == () and len(missing.errors) == 2, missing
        assert all("cannot run /no/such/py-spy" in e and "pid " in e for e in missing.errors)
        assert not agent.malformed and not other.malformed
        assert took < 2 * stacks.DUMP_TIMEOUT_S, took  # concurrent, each bounded
    finally:
        await agent.close()
        await other.close()
