"""The engine end to end, with real processes: the CLI starts the daemon,
jobs run as real subprocesses through the node agent, and every check reads
what a user would read (CLI output, logs, exit codes, /proc)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from chaos.engine_handle import REPO, EngineHandle

EVIL = "; rm -rf ~ $(reboot) \"'"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def command_profile(argv: list[str], **extra: str) -> str:
    lines = ['kind = "command"', f"command = {_toml_list(argv)}"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_cli_starts_the_engine_runs_a_job_and_shows_its_logs(engine: EngineHandle) -> None:
    script = "import sys\nfor i in range(3): print('line', i)\nprint('oops', file=sys.stderr)"
    engine.write_profile("count", command_profile([sys.executable, "-c", script]))

    job_id = engine.submit("count")  # no engine yet: the CLI starts one
    job = engine.wait_state(job_id, {"succeeded", "failed"})

    assert job["state"] == "succeeded", job
    assert job["exit_code"] == 0
    assert [h["to"] for h in job["history"]] == ["queued", "starting", "running", "succeeded"]
    logs = engine.cli("logs", str(job_id)).stdout.splitlines()
    assert logs[:3] == ["line 0", "line 1", "line 2"]
    assert "oops" in logs
    assert engine.json("engine", "status")["running"] is True
    listed = engine.json("jobs", "--all")
    assert [j["id"] for j in listed] == [job_id]


def test_a_failing_job_reports_its_exit_code_and_can_be_retried(engine: EngineHandle) -> None:
    engine.write_profile("fail", command_profile([sys.executable, "-c", "raise SystemExit(3)"]))
    job_id = engine.submit("fail")
    job = engine.wait_state(job_id, {"failed"})
    assert job["exit_code"] == 3
    assert "exit code 3" in job["reason"]

    engine.cli("retry", str(job_id))
    job = engine.wait_state(job_id, {"failed"}, timeout=30)
    job = engine.job(job_id)
    assert job["attempt"] == 2
    assert [a["state"] for a in job["attempts"]] == ["failed", "failed"]


def test_a_succeeded_job_can_be_rerun_with_retry(engine: EngineHandle) -> None:
    engine.write_profile("ok", command_profile([sys.executable, "-c", "print('ran')"]))
    job_id = engine.submit("ok")
    engine.wait_state(job_id, {"succeeded"})
    engine.cli("retry", str(job_id))  # the README: any ended job runs again
    engine.wait_state(job_id, {"succeeded"}, timeout=30)
    job = engine.job(job_id)
    assert [a["state"] for a in job["attempts"]] == ["succeeded", "succeeded"]
    assert engine.cli("logs", str(job_id)).stdout.splitlines() == ["ran"]


def test_logs_follow_streams_until_the_job_ends(engine: EngineHandle) -> None:
    script = ("import time\nfor i in range(5):\n"
              "    print('tick', i, flush=True)\n    time.sleep(0.2)")
    engine.write_profile("ticks", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("ticks")
    out = engine.cli("logs", str(job_id), "-f", timeout=60).stdout.splitlines()
    assert out == [f"tick {i}" for i in range(5)]
    assert engine.job(job_id)["state"] == "succeeded"


def test_cancel_kills_the_whole_process_group(engine: EngineHandle, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    engine.write_profile("tree", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("tree")
    engine.wait_state(job_id, {"running"})
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert alive(job_pid) and alive(child_pid)

    out = engine.cli("cancel", str(job_id)).stdout
    assert f"job {job_id}: stopping" in out
    job = engine.wait_state(job_id, {"cancelled"}, timeout=30)

    assert job["state"] == "cancelled"
    deadline = time.monotonic() + 5
    while (alive(job_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(job_pid), "the job process survived its cancel"
    assert not alive(child_pid), "the job's child survived its cancel"
    again = engine.cli("cancel", str(job_id), check=False)
    assert again.returncode == 1
    assert "already cancelled" in again.stderr


def test_shell_metacharacters_are_plain_bytes(engine: EngineHandle, tmp_path: Path) -> None:
    canary_home = tmp_path / "home"
    canary_home.mkdir()
    canary = canary_home / "canary"
    canary.write_text("still here")
    out = tmp_path / "argv.json"
    script = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    argv = [sys.executable, "-c", script, str(out), EVIL, "$HOME", "`id`", "a b", "*"]
    engine.write_profile("evil", command_profile(argv, name=json.dumps(EVIL)))
    engine.env["HOME"] = str(canary_home)

    job_id = engine.submit("evil")
    job = engine.wait_state(job_id, {"succeeded", "failed"})

    assert job["state"] == "succeeded", job
    assert job["name"] == EVIL
    assert json.loads(out.read_text()) == [EVIL, "$HOME", "`id`", "a b", "*"]
    assert canary.read_text() == "still here"
    assert job["spec"]["argv"] == argv
    listed = engine.cli("jobs", "--all").stdout
    assert EVIL[:20] in listed


def test_bad_input_gets_one_clear_line(engine: EngineHandle) -> None:
    engine.write_profile("huge", command_profile(["true"]) + "[resources]\ngpus_per_node = 64\n")
    engine.write_profile("typo", command_profile(["true"], prioritty="3"))

    huge = engine.cli("submit", "huge", check=False)
    assert huge.returncode == 1
    assert "can never run" in huge.stderr and "gpus" in huge.stderr.lower()
    assert "Traceback" not in huge.stderr

    typo = engine.cli("submit", "typo", check=False)
    assert typo.returncode == 1
    assert "prioritty" in typo.stderr and "typo.toml" in typo.stderr
    assert "Traceback" not in typo.stderr

    missing = engine.cli("show", "999", check=False)
    assert missing.returncode == 1 and "no job 999" in missing.stderr

    after = engine.cli("submit", "typo", "--after", "999", check=False)
    assert after.returncode == 1
    assert engine.json("jobs", "--all") == []


def test_dependencies_hold_and_fail_children(engine: EngineHandle) -> None:
    engine.write_profile("ok", command_profile([sys.executable, "-c", "print('parent')"]))
    engine.write_profile("bad", command_profile([sys.executable, "-c", "raise SystemExit(1)"]))
    engine.write_profile("slow", command_profile(
        [sys.executable, "-c", "import time; time.sleep(1)"]))
    parent = engine.submit("slow")
    child = engine.submit("ok", "--after", str(parent))
    assert engine.job(child)["state"] in ("held", "queued", "starting", "running", "succeeded")
    engine.wait_state(child, {"succeeded"}, timeout=30)
    assert engine.job(parent)["state"] == "succeeded"

    bad = engine.submit("bad")
    orphan = engine.submit("ok", "--after", str(bad))
    job = engine.wait_state(orphan, {"failed"}, timeout=30)
    assert f"dependency job {bad}" in job["reason"]


def test_automatic_retries_make_new_attempts(engine: EngineHandle, tmp_path: Path) -> None:
    engine.env["LLMCONSOLE_RETRY_BACKOFF_S"] = "1"  # retry n waits 1 s * 2**(n-1), +-20 %
    marker = tmp_path / "tries"
    script = (f"import pathlib, sys\np = pathlib.Path({str(marker)!r})\n"
              "n = int(p.read_text()) + 1 if p.exists() else 1\np.write_text(str(n))\n"
              "sys.exit(0 if n >= 3 else 1)")
    engine.write_profile("flaky", command_profile([sys.executable, "-c", script], retries="2"))
    job_id = engine.submit("flaky")
    deadline = time.monotonic() + 60
    job = engine.job(job_id)
    while not (job["attempt"] == 3 and job["state"] == "succeeded"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = engine.job(job_id)
    assert [a["state"] for a in job["attempts"]] == ["failed", "failed", "succeeded"]
    assert any("automatic retry" in h["cause"] for h in job["history"])
    attempts = job["attempts"]
    waits = [attempts[i + 1]["started_at"] - attempts[i]["ended_at"] for i in (0, 1)]
    assert waits[0] >= 0.8 and waits[1] >= 1.6, waits  # backed off, the second twice as long


def start_gated_job(engine: EngineHandle, gate: Path, before: list[str],
                    after: list[str]) -> int:
    """A running job that prints `before`, waits for `gate` to exist, then
    prints `after` and ends."""
    script = (f"import os, time\nfor line in {before!r}: print(line, flush=True)\n"
              f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
              f"for line in {after!r}: print(line, flush=True)")
    engine.write_profile("gated", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("gated")
    engine.wait_state(job_id, {"running"})
    return job_id


def test_engine_restart_keeps_jobs_and_reattaches(engine: EngineHandle, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = start_gated_job(engine, gate, ["before"], ["after"])
    pid = int(engine.home.joinpath("engine.pid").read_text())
    os.kill(pid, 9)  # the daemon dies hard; its agent sees EOF and exits, the job lives on
    time.sleep(0.5)
    gate.write_text("go")
    engine.cli("engine", "start")
    job = engine.wait_state(job_id, {"succeeded", "failed", "lost"}, timeout=30)
    assert job["state"] == "succeeded", job
    assert engine.cli("logs", str(job_id)).stdout.splitlines() == ["before", "after"]


def test_socket_is_private_and_nodes_report_telemetry(engine: EngineHandle) -> None:
    engine.cli("engine", "start")
    sock = engine.home / "engine.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    deadline = time.monotonic() + 10
    nodes = engine.json("nodes")
    while nodes[0]["cpu_percent"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = engine.json("nodes")
    assert nodes[0]["name"] == "local" and nodes[0]["up"] is True
    assert nodes[0]["slots"] >= 1
    assert nodes[0]["cpu_percent"] is not None
    assert "no GPUs" in engine.cli("nodes").stdout


def test_metrics_and_events_reach_clients(engine: EngineHandle) -> None:
    from engine.client import EngineClient

    script = (
        "import json, os, time\n"
        "path = os.path.join(os.environ['LLMCONSOLE_RUN_DIR'], 'metrics.jsonl')\n"
        "time.sleep(0.5)\n"
        "with open(path, 'a') as f:\n"
        "    for step in range(1, 6):\n"
        "        f.write(json.dumps({'step': step, 'loss': 10.0 / step, 'lr': 0.1}) + '\\n')\n"
        "        f.flush(); time.sleep(0.05)\n"
    )
    engine.write_profile("metrics", command_profile([sys.executable, "-c", script]))
    engine.cli("engine", "start")
    client = EngineClient(engine.home / "engine.sock")
    seen: list[dict[str, object]] = []
    done, listening = threading.Event(), threading.Event()

    def listen() -> None:
        for event in EngineClient(engine.home / "engine.sock").events():
            if event.get("type") == "hello":
                listening.set()
                continue
            seen.append(event)
            job = event.get("job")
            if isinstance(job, dict) and job.get("state") == "succeeded":
                done.set()
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert listening.wait(20)  # the stream is open before the job exists
    job_id = engine.submit("metrics")
    assert done.wait(30), [e.get("type") for e in seen]

    states = [e["job"]["state"] for e in seen if e["type"] == "job"]  # type: ignore[index]
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert "running" in states
    losses = {e["step"]: e["values"]["loss"] for e in seen  # type: ignore[index]
              if e["type"] == "metric"}
    assert losses == {s: 10.0 / s for s in range(1, 6)}
    deadline = time.monotonic() + 10  # points reach the store in a flush, twice a second
    stored = client.metrics(job_id, names=["loss"])
    while len(stored) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = client.metrics(job_id, names=["loss"])
    assert [(p["step"], p["value"]) for p in stored] == [(s, 10.0 / s) for s in range(1, 6)]
    table = engine.cli("metrics", str(job_id)).stdout
    assert "LOSS" in table and "LR" in table


def test_a_killed_agent_is_restarted_and_its_job_reattached(
        engine: EngineHandle, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = start_gated_job(engine, gate, [f"early {i}" for i in range(3)],
                             [f"late {i}" for i in range(3)])
    agents = [p for p in Path("/proc").iterdir() if p.name.isdigit()
              and b"engine.agent" in _read(p / "cmdline")
              and str(engine.home).encode() in _read(p / "cmdline")]
    assert len(agents) == 1
    os.kill(int(agents[0].name), 9)
    time.sleep(1.0)
    gate.write_text("go")
    job = engine.wait_state(job_id, {"succeeded", "failed", "lost"}, timeout=30)
    assert job["state"] == "succeeded", job
    lines = engine.cli("logs", str(job_id)).stdout.splitlines()
    assert lines == [f"early {i}" for i in range(3)] + [f"late {i}" for i in range(3)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _nobody_client(tmp_path: Path) -> Path:
    """The real client modules, copied where an unprivileged user can read
    them (the checkout may live in a private home)."""
    root = Path(tempfile.mkdtemp(prefix="llc-nobody-", dir="/tmp"))
    pkg = root / "engine"
    pkg.mkdir()
    for name in ("__init__.py", "client.py", "errors.py", "paths.py"):
        shutil.copy(REPO / "engine" / name, pkg / name)
    for path in [root, pkg, *pkg.iterdir()]:
        path.chmod(0o755)
    return root


def run_as(uid: int, lib: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` run by the system's Python as user `uid`, with the client copy
    in `lib` importable."""
    system_python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", system_python, "-I",
         "-c", f"import sys; sys.path.insert(0, {str(lib)!r})\n" + code, *args],
        capture_output=True, text=True, timeout=30, cwd="/")


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to switch to a second uid")
def test_a_second_user_cannot_cancel_the_first_users_job(
        engine: EngineHandle, tmp_path: Path) -> None:
    lib = _nobody_client(tmp_path)
    engine.home.chmod(0o755)
    cluster = engine.profiles / "shared.toml"
    cluster.write_text('kind = "cluster"\nadmins = ["daemon"]\n[[nodes]]\nname = "local"\n')
    serve = subprocess.Popen(
        [sys.executable, "-m", "engine", "engine", "serve", "--socket-mode", "666",
         "--cluster", str(cluster)],
        env=engine.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while engine.cli("engine", "status", check=False).returncode != 0:
            assert time.monotonic() < deadline, "engine did not start"
            time.sleep(0.1)
        engine.write_profile("long", command_profile(
            [sys.executable, "-c", "import time; time.sleep(120)"]))
        job_id = engine.submit("long")
        engine.wait_state(job_id, {"running"})
        code = (
            "import sys\nfrom engine.client import EngineClient\nfrom engine.errors import "
            "EngineError\nc = EngineClient(sys.argv[1])\nprint(c.health()['you']['uid'])\n"
            "try:\n    c.cancel(int(sys.argv[2]))\nexcept EngineError as e:\n"
            "    print(type(e).__name__, e); sys.exit(1)\n"
        )
        proc = run_as(65534, lib, code, str(engine.home / "engine.sock"), str(job_id))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        first, second = proc.stdout.splitlines()[:2]
        assert first == "65534"  # the engine saw who called, from the socket
        assert second.startswith("Forbidden") and "belongs to root" in second
        assert engine.job(job_id)["state"] == "running"
        engine.cli("cancel", str(job_id))  # its owner can
        assert engine.wait_state(job_id, {"cancelled"})["state"] == "cancelled"

        second = engine.submit("long")  # an admin of the cluster (user daemon, uid 1) can too
        engine.wait_state(second, {"running"})
        admin = run_as(1, lib, code, str(engine.home / "engine.sock"), str(second))
        assert admin.returncode == 0, admin.stdout + admin.stderr
        assert admin.stdout.split() == ["1"]
        assert engine.wait_state(second, {"cancelled"})["state"] == "cancelled"
    finally:
        serve.terminate()
        serve.wait(timeout=30)


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to switch to a second uid")
def test_a_private_engine_refuses_other_users(engine: EngineHandle, tmp_path: Path) -> None:
    lib = _nobody_client(tmp_path)
    engine.cli("engine", "start")
    engine.home.chmod(0o755)  # even with the folder open, the socket is 0600
    proc = run_as(65534, lib, "from engine.client import EngineClient\n"
                  "from engine.errors import Unavailable\ntry:\n"
                  f"    EngineClient({str(engine.home / 'engine.sock')!r}).jobs()\n"
                  "except Unavailable as e:\n    print(e); raise SystemExit(1)")
    assert proc.returncode == 1
    assert "no permission" in proc.stdout


def test_a_missing_program_fails_with_its_name(engine: EngineHandle) -> None:
    engine.write_profile("ghost", command_profile(["/no/such/program-xyz", "--flag"]))
    job_id = engine.submit("ghost")
    job = engine.wait_state(job_id, {"failed"}, timeout=30)
    assert job["exit_code"] == 127
    assert "program-xyz" in job["reason"]
    assert [h["to"] for h in job["history"]] == ["queued", "starting", "failed"]


def test_a_kept_alive_client_survives_an_engine_restart(engine: EngineHandle) -> None:
    from engine.client import EngineClient
    from engine.errors import NotFound, Unavailable

    engine.cli("engine", "start")
    client = EngineClient(engine.home / "engine.sock")
    first = client.health()["pid"]
    engine.cli("engine", "stop")
    with pytest.raises(Unavailable, match="llmconsole engine start"):
        client.health()
    engine.cli("engine", "start")
    assert client.health()["pid"] != first  # reconnected on its own
    with pytest.raises(NotFound, match="no job 42"):
        client.job(42)
    assert client.jobs() == []  # the connection is still good after an error reply


def test_engine_stop_ends_open_streams_at_once(engine: EngineHandle) -> None:
    """An open event stream (a screen left running) or a followed log must
    not hold the daemon up when it is asked to stop."""
    from engine.client import EngineClient

    engine.cli("engine", "start")
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    pid = int((engine.home / "engine.pid").read_text())
    ended: list[str] = []

    def events() -> None:
        for _event in EngineClient(engine.home / "engine.sock").events():
            pass
        ended.append("events")

    def follow() -> None:
        for _line in EngineClient(engine.home / "engine.sock").logs(job_id, follow=True):
            pass
        ended.append("logs")

    threads = [threading.Thread(target=f, daemon=True) for f in (events, follow)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    engine.cli("engine", "stop")
    for t in threads:
        t.join(timeout=10)
    assert sorted(ended) == ["events", "logs"]
    while alive(pid) and time.monotonic() - started < 10:
        time.sleep(0.05)
    assert not alive(pid), "the daemon kept running behind open streams"
    assert time.monotonic() - started < 5


def test_priority_reorders_waiting_jobs_and_is_refused_once_running(
        engine: EngineHandle) -> None:
    slots = engine.json("nodes")[0]["slots"]  # each job takes the whole node
    whole = f"{{ cpus = {slots} }}"
    engine.write_profile("block", command_profile(
        [sys.executable, "-c", "import time; time.sleep(60)"], resources=whole))
    engine.write_profile("short", command_profile(
        [sys.executable, "-c", "import time; time.sleep(0.3)"], resources=whole))
    blocker = engine.submit("block")
    engine.wait_state(blocker, {"running"})
    first, second = engine.submit("short"), engine.submit("short")
    assert engine.job(second)["state"] == "queued"

    changed = engine.json("priority", str(second), "10")
    assert changed["priority"] == 10 and changed["state"] == "queued"
    shown = engine.job(second)
    assert shown["spec"]["priority"] == 10
    assert shown["history"][-1]["cause"] == "priority 0 -> 10 by root"

    bad = engine.cli("priority", str(second), "5000", check=False)
    assert bad.returncode == 1 and "from -1000 to 1000" in bad.stderr
    running = engine.cli("priority", str(blocker), "3", check=False)
    assert running.returncode == 1
    assert f"job {blocker} is running; priority only orders jobs" in running.stderr

    engine.cli("cancel", str(blocker))
    done = [engine.wait_state(j, {"succeeded"}, timeout=30) for j in (first, second)]
    started = [d["attempts"][-1]["started_at"] for d in done]
    assert started[1] < started[0], "the higher-priority job should have started first"


def test_a_waiting_job_says_why_in_jobs_and_show(engine: EngineHandle) -> None:
    slots = os.cpu_count() or 1
    engine.write_profile("hog", command_profile(
        [sys.executable, "-c", "import time; time.sleep(60)"]) + f"[resources]\ncpus = {slots}\n")
    engine.write_profile("quick", command_profile([sys.executable, "-c", "print(1)"]))
    hog = engine.submit("hog")
    engine.wait_state(hog, {"running"})
    waits = engine.submit("quick")
    after = engine.submit("quick", "--after", str(waits))
    deadline = time.monotonic() + 20
    while "CPU slot" not in (engine.job(waits).get("waiting") or ""):
        assert time.monotonic() < deadline, engine.job(waits)
        time.sleep(0.1)
    reason = engine.job(waits)["waiting"]
    assert reason.startswith("needs 1 node with 1 CPU slot free; 0 of 1 up node have that")
    assert f"local: 0 of {slots} slots free" in reason
    assert engine.job(after)["waiting"] == f"waiting for job {waits} to succeed"
    listing = engine.cli("jobs").stdout
    assert "needs 1 node with 1 CPU slot free" in listing
    assert f"waiting for job {waits} to succeed" in engine.cli("show", str(after)).stdout
    engine.cli("cancel", str(hog))
    engine.wait_state(after, {"succeeded"})
    assert engine.job(after)["waiting"] is None


def test_every_job_in_the_list_carries_its_progress_and_run_times(engine: EngineHandle) -> None:
    script = ("import json, os\n"
              "with open(os.path.join(os.environ['LLMCONSOLE_RUN_DIR'], 'metrics.jsonl'), 'a') "
              "as f:\n"
              "    for step in (1, 2, 3):\n"
              "        f.write(json.dumps({'step': step, 'loss': 4.0 - step, 'total_steps': 3})"
              " + '\\n')\n")
    engine.write_profile("steps", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("steps")
    engine.wait_state(job_id, {"succeeded"})
    deadline = time.monotonic() + 10
    while not (listed := engine.json("jobs", "--all"))[0].get("progress"):
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)
    [job] = listed
    assert job["progress"]["step"] == 3 and job["progress"]["total"] == 3
    assert job["progress"]["loss"] == 1.0
    assert job["started_at"] is not None and job["ended_at"] >= job["started_at"]
    assert job["started_at"] >= job["submitted_at"]


def test_ps_lists_a_running_jobs_processes_with_their_node(engine: EngineHandle) -> None:
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\ntime.sleep(60)\n")
    engine.write_profile("family", command_profile([sys.executable, "-c", script]))
    job_id = engine.submit("family")
    engine.wait_state(job_id, {"running"})
    deadline = time.monotonic() + 20
    while not (lines := engine.cli("logs", str(job_id)).stdout.split()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(lines[0])
    procs = engine.json("ps", str(job_id))
    pids = {p["pid"] for p in procs}
    assert engine.job(job_id)["attempts"][0]["pid"] in pids and child in pids, procs
    assert {p["node"] for p in procs} == {"local"}
    assert all(p["rss_mb"] > 0 and p["state"] for p in procs), procs
    table = engine.cli("ps", str(job_id)).stdout
    assert table.startswith("NODE") and str(child) in table
    engine.cli("cancel", str(job_id))
    engine.wait_state(job_id, {"cancelled"})
    assert engine.json("ps", str(job_id)) == []
