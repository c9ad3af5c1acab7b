"""Log privacy on a shared engine, with a real daemon and a real second user
(uid 65534 through setpriv): another user sees the job in `jobs` (name,
state, owner) but not its logs, metrics, processes, the names of its
environment variables, nor its log and metric events; the refusal is a 403
naming the owner and the fix. An admin of the cluster reads them, and so
does everyone once the cluster profile says ``share_logs = true``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos import hostile
from chaos.engine_handle import EngineHandle, new_engine
from engine.profiles import ProfileError, load_cluster_profile

NOBODY, DAEMON = 65534, 1  # DAEMON (user "daemon") is the cluster's admin
CLUSTER = 'kind = "cluster"\nadmins = ["daemon"]\n{share}[[nodes]]\nname = "local"\n'
JOB = ("import json, os, sys, time\n"
       "path = os.path.join(os.environ['LLMCONSOLE_RUN_DIR'], 'metrics.jsonl')\n"
       "for step in range(1, 600):\n"
       "    print('secret line', step, flush=True)\n"
       "    with open(path, 'a') as f: f.write(json.dumps({'step': step, 'loss': 1.0}) + '\\n')\n"
       "    time.sleep(0.2)\n")

# What another user runs: the system Python, the standard library only, raw
# HTTP on the socket. Prints [[path, status, body], ...] as JSON.
PROBE = r"""
import json, socket, sys, time
sock_path, job = sys.argv[1], sys.argv[2]
def get(path, stream_s=None):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(stream_s or 30)
    s.connect(sock_path)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data, end = b"", time.monotonic() + (stream_s or 30)
    try:
        while time.monotonic() < end and (chunk := s.recv(65536)):
            data += chunk
    except TimeoutError:
        if stream_s is None:
            raise
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")
out = [[p, *get(p)] for p in (f"/v1/jobs/{job}/logs", f"/v1/jobs/{job}/metrics",
                               f"/v1/jobs/{job}/processes", f"/v1/jobs/{job}", "/v1/jobs")]
out.append(["/v1/events", *get("/v1/events?types=log,metric,job", stream_s=2.0)])
print(json.dumps(out))
"""


@pytest.fixture()
def shared() -> Iterator[EngineHandle]:
    handle = new_engine(traversable=True)
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)


def serve(engine: EngineHandle, share: bool) -> None:
    cluster = engine.profiles / "shared.toml"
    cluster.write_text(CLUSTER.format(share="share_logs = true\n" if share else ""))
    engine.serve("--socket-mode", "666", "--cluster", str(cluster))


def probe(engine: EngineHandle, uid: int, job_id: int) -> dict[str, tuple[int, str]]:
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         shutil.which("python3", path="/usr/bin:/bin") or "python3", "-I", "-c", PROBE,
         str(engine.home / "engine.sock"), str(job_id)],
        capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return {path: (status, body) for path, status, body in json.loads(proc.stdout)}


def events_of(body: str, job_id: int) -> set[str]:
    kinds = set()
    for line in body.splitlines():
        if not line.startswith("{"):  # the chunk sizes of the stream
            continue
        event: dict[str, Any] = json.loads(line)
        if event.get("job") == job_id or (isinstance(event.get("job"), dict)
                                          and event["job"]["id"] == job_id):
            kinds.add(event["type"])
    return kinds


def test_another_user_cannot_read_a_jobs_logs_unless_the_cluster_shares_them(
        shared: EngineHandle) -> None:
    serve(shared, share=False)
    sock = shared.home / "engine.sock"
    spec = {**hostile.VALID_SPEC, "name": "private run", "argv": [sys.executable, "-c", JOB],
            "env": {"WANDB_PROJECT": "x"}}
    status, _h, data = hostile.send(sock, "POST", "/v1/jobs", json.dumps({"spec": spec}).encode(),
                                    {"Content-Type": "application/json"})
    assert status == 201, data
    job_id = json.loads(data)["id"]
    deadline = time.monotonic() + 60
    while b"secret line 2" not in hostile.send(sock, "GET", f"/v1/jobs/{job_id}/logs")[2]:
        assert time.monotonic() < deadline, "the job wrote no log"
        time.sleep(0.2)
    # the metric points are read apart from the log: wait until one has been
    while json.loads(hostile.send(sock, "GET", "/v1/jobs")[2])[0].get("progress") is None:
        assert time.monotonic() < deadline, "the engine read no metric point of the job"
        time.sleep(0.2)

    other = probe(shared, NOBODY, job_id)
    for what in ("logs", "metrics", "processes"):
        status, body = other[f"/v1/jobs/{job_id}/{what}"]
        error = json.loads(body)["error"]
        assert status == 403, (what, body)
        assert error == (f"the {what} of job {job_id} are private to its owner root: ask root "
                         "or an admin; or set share_logs = true in the cluster profile")
    status, body = other[f"/v1/jobs/{job_id}"]
    shown = json.loads(body)
    assert status == 200 and shown["name"] == "private run" and shown["state"] == "running"
    assert shown["spec"]["env"] == [] and "share_logs = true" in shown["private"]
    status, body = other["/v1/jobs"]
    assert status == 200 and [(j["id"], j["owner"]) for j in json.loads(body)] == [
        (job_id, "root")]  # the list is everyone's
    progress = json.loads(body)[0]["progress"]  # its step, not its loss (a metric)
    assert progress["step"] >= 1 and progress["loss"] is None
    assert "secret line" not in other["/v1/events"][1]
    assert events_of(other["/v1/events"][1], job_id) <= {"job"}

    admin = probe(shared, DAEMON, job_id)
    assert admin[f"/v1/jobs/{job_id}/logs"][0] == 200
    assert "secret line 1\n" in admin[f"/v1/jobs/{job_id}/logs"][1]
    assert json.loads(admin[f"/v1/jobs/{job_id}/metrics"][1])[0]["step"] == 1
    assert json.loads(admin[f"/v1/jobs/{job_id}"][1])["spec"]["env"] == ["WANDB_PROJECT"]
    assert {"log", "metric"} <= events_of(admin["/v1/events"][1], job_id)
    assert json.loads(admin["/v1/jobs"][1])[0]["progress"]["loss"] == 1.0

    shared.cli("engine", "stop")
    serve(shared, share=True)
    everyone = probe(shared, NOBODY, job_id)
    assert everyone[f"/v1/jobs/{job_id}/logs"][0] == 200
    assert "secret line 1\n" in everyone[f"/v1/jobs/{job_id}/logs"][1]
    assert everyone[f"/v1/jobs/{job_id}/metrics"][0] == 200
    assert everyone[f"/v1/jobs/{job_id}/processes"][0] == 200
    assert "private" not in json.loads(everyone[f"/v1/jobs/{job_id}"][1])


def test_share_logs_is_a_cluster_profile_field(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CLUSTER.format(share=""))
    assert load_cluster_profile(str(path)).share_logs is False
    path.write_text(CLUSTER.format(share="share_logs = true\n"))
    assert load_cluster_profile(str(path)).share_logs is True
    path.write_text(CLUSTER.format(share='share_logs = "yes"\n'))
    with pytest.raises(ProfileError, match=r"c\.toml: share_logs: .*expected true or false"):
        load_cluster_profile(str(path))
