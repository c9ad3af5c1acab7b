"""The loss guard and the stall watch in a real Runtime with a real store and
a real local agent, on a fake trainer (metrics.jsonl lines and checkpoint
folders the way engine/workloads/train.py writes them)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from engine.guard import GuardSpec, Trip
from engine.guard_book import GuardBook
from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec, Resources
from engine.runtime import Caller, Runtime
from engine.store import Store
from engine.transport.local import LocalAgentChannel
from tests.integration.polling import wait_for

ME = Caller.from_uid(os.getuid())

# argv: OUTPUT NAN_AT TOTAL STALL_AT. A NaN loss at step NAN_AT unless the lr
# is scaled ("always": at every lr); after it, or at STALL_AT, no more steps
# (the process only sleeps, so that only the engine ends it); NAN_AT "rise":
# no NaN, the loss rises 1.5x a step after step 15; STALL_AT "15once"
# stalls only an attempt that is not a guard restart.
FAKE_TRAINER = r'''
import json, os, subprocess, sys, time
from pathlib import Path
if os.environ.get("FAKE_RANKS") and "RANK" not in os.environ:  # a launcher of N ranks
    ranks = [subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, "RANK": str(r)})
             for r in range(int(os.environ["FAKE_RANKS"]))]
    sys.exit(max(p.wait() for p in ranks))
if os.environ.get("RANK", "0") != "0":
    while True:  # the other ranks wait on rank 0
        time.sleep(1)
out, nan_at, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
scale = float(os.environ.get("LLMCONSOLE_LR_SCALE", "1"))
at = os.environ.get("LLMCONSOLE_RESUME_AT_OR_BEFORE")
once = sys.argv[4].endswith("once")  # stall on the first attempt only
stall_at = -1 if once and at is not None else int(sys.argv[4].removesuffix("once"))
found = sorted(int(p.name[5:]) for p in out.glob("step-*"))
start = max([s for s in found if at is None or s <= int(at)], default=0)
print(f"lr scale {scale} resumed at {start}", flush=True)
with open(Path(os.environ["LLMCONSOLE_RUN_DIR"]) / "metrics.jsonl", "a") as m:
    for step in range(start + 1, total + 1):
        bad = nan_at == "always" or (nan_at.isdigit() and scale == 1.0 and step == int(nan_at))
        if bad or step == stall_at:
            if bad:
                m.write(json.dumps({"step": step, "loss": float("nan")}) + "\n")
                m.flush()
            time.sleep(120)
        loss = 2.0 / step if nan_at != "rise" or step <= 15 else 2.0 / 15 * 1.5 ** (step - 15)
        m.write(json.dumps({"step": step, "total_steps": total, "loss": loss,
                            "lr_scale": scale}) + "\n")
        m.flush()
        if step % 5 == 0:
            (out / f"step-{step:06d}").mkdir(parents=True, exist_ok=True)
        time.sleep(0.02)
'''


def make_runtime(store: Store, home: Path) -> Runtime:
    return Runtime(store, ClusterSpec("test", (NodeSpec("local", slots=4),)), home,
                   lambda node: LocalAgentChannel(node.name, home, interval=0.2),
                   stop_grace=1.0)


@pytest.fixture
async def runtime(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "engine.db")
    rt = make_runtime(store, tmp_path)
    await rt.start()
    assert await rt.wait_nodes_up(20)
    yield rt
    for run in list(rt.running.values()):
        rt._stop_parts(run)
    await rt.stop()
    store.close()


def trainer(tmp_path: Path, name: str, nan_at: str, stall_at: int | str, guard: GuardSpec,
            retries: int = 0, ranks: int = 0) -> JobSpec:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    out = tmp_path / name
    out.mkdir()
    return JobSpec(name=name, kind="train", retries=retries, guard=guard,
                   env=(("FAKE_RANKS", str(ranks)),) if ranks else (),
                   argv=(sys.executable, str(script), str(out), nan_at, "40", str(stall_at)),
                   resources=Resources(cpus=1))


def _ended(rt: Runtime, job_id: int, attempts: int) -> bool:
    job = rt.store.get_job(job_id)
    return job.attempt == attempts and job.state.is_terminal()


async def test_nan_restarts_with_the_lr_scaled_and_max_restarts_bounds_it(
        runtime: Runtime, tmp_path: Path) -> None:
    restarting = runtime.submit(trainer(tmp_path, "restarts", "23", 0, GuardSpec(
        on_nan="restart", max_restarts=2, lr_scale=0.5)), ME)
    # NaN at every lr: restarted once (max_restarts = 1), then failed for
    # good, and `retries` does not retry what the guard failed
    bounded = runtime.submit(trainer(tmp_path, "bounded", "always", 0, GuardSpec(
        on_nan="restart", max_restarts=1), retries=2), ME)
    failing = runtime.submit(trainer(tmp_path, "fails", "12", 0, GuardSpec(on_nan="fail")), ME)
    rising = runtime.submit(trainer(tmp_path, "rises", "rise", 0, GuardSpec(
        diverge_factor=3.0, diverge_window=10, on_diverge="fail")), ME)

    await wait_for(lambda: _ended(runtime, restarting.id, 2), timeout=60)
    attempts = runtime.store.attempts(restarting.id)
    assert attempts[0].state is JobState.FAILED
    assert attempts[0].reason == "loss guard: loss was nan at step 23"
    assert attempts[1].state is JobState.SUCCEEDED, attempts[1].reason
    causes = [e.cause for e in runtime.store.history(restarting.id)]
    assert "restart 1 of 2 by loss guard: lr x0.5 (loss guard: loss was nan at step 23)" \
        in causes
    log = runtime.log_path(restarting.id, 2).read_text()
    assert "lr scale 0.5 resumed at 20" in log  # the newest checkpoint at or before step 22
    points = runtime.store.metrics(restarting.id, attempt=2)
    steps = sorted({p.step for p in points})
    assert steps[0] == 21 and steps[-1] == 40
    assert {p.value for p in points if p.name == "lr_scale"} == {0.5}
    view = runtime.job_view(runtime.store.get_job(restarting.id))
    assert view["guard"]["restart"] == "restart 1 of 2 by loss guard: lr x0.5"
    assert any("loss was nan at step 23: restart" in n["text"] for n in view["guard"]["notes"])

    await wait_for(lambda: _ended(runtime, bounded.id, 2), timeout=60)
    job = runtime.store.get_job(bounded.id)
    assert job.attempt == 2 and job.state is JobState.FAILED  # no third attempt
    assert job.reason is not None and job.reason.startswith("loss guard: loss was nan at step")
    assert "lr scale 0.5 resumed at" in runtime.log_path(bounded.id, 2).read_text()

    await wait_for(lambda: _ended(runtime, failing.id, 1), timeout=60)
    job = runtime.store.get_job(failing.id)
    assert job.state is JobState.FAILED and job.reason == "loss guard: loss was nan at step 12"
    assert runtime.store.get_job(failing.id).attempt == 1

    # the guard's state is in the engine home: a new book reads the same
    again = GuardBook(tmp_path)
    assert again.launch_env(restarting.id, 2) == {
        "LLMCONSOLE_LR_SCALE": "0.5", "LLMCONSOLE_RESUME_AT_OR_BEFORE": "22"}

    await wait_for(lambda: _ended(runtime, rising.id, 1), timeout=60)
    job = runtime.store.get_job(rising.id)
    assert job.state is JobState.FAILED and job.attempt == 1
    assert job.reason == "loss guard: loss rose 3.2x over 4 steps (0.143 -> 0.45) at step 19"


async def test_a_stalled_job_is_flagged_dumped_and_cancelled(
        runtime: Runtime, tmp_path: Path) -> None:
    job = runtime.submit(trainer(tmp_path, "stalls", "never", 6, GuardSpec(
        stall_after=2.0, on_stall="cancel"), ranks=2), ME)
    # stalls at step 6 on every attempt: retried once from step 5, then failed
    retried = runtime.submit(trainer(tmp_path, "retries", "never", 6, GuardSpec(
        stall_after=2.0, on_stall="retry", max_restarts=1)), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.RUNNING)
    began = time.monotonic()
    await wait_for(lambda: runtime.job_view(runtime.store.get_job(job.id))["stalled"]
                   is not None, timeout=15)
    assert time.monotonic() - began < 2.0 + 6.0
    view = runtime.job_view(runtime.store.get_job(job.id))
    assert view["stalled"]["last_step"] == 5
    assert view["state"] == "running"
    notes = [n["text"] for n in view["guard"]["notes"]]
    assert len(notes) == 1 and notes[0].startswith("stalled ")  # recorded once
    assert notes[0].endswith("s at step 5")
    await wait_for(lambda: runtime.store.get_job(job.id).state.is_terminal(), timeout=40)
    ended = runtime.store.get_job(job.id)
    assert ended.state is JobState.CANCELLED and ended.reason == "cancelled by stall watch"
    notes = [n["text"] for n in runtime.job_view(ended)["guard"]["notes"]]
    dumps = [n for n in notes if n.startswith("stack dumps:")]
    assert len(dumps) == 1, notes
    # each note is an event of the job's history too (what `show` prints), once
    history = [(e.from_state, e.to_state, e.cause) for e in runtime.store.history(job.id)]
    running = JobState.RUNNING
    assert [c for f, t, c in history if f is running and t is running] == notes
    # every rank's stack, each named by rank and node (and the launcher's, rank x)
    assert "rank 0 on local" in dumps[0] and "rank 1 on local" in dumps[0], dumps[0]
    files = dumps[0].split(" -> ")[1].split(" (errors")[0].split(", ")
    assert len(files) == 3 and all("/stacks/stalled-step-5/rank-" in f for f in files)
    rank1 = next(Path(f) for f in files if "/rank-1-local-pid" in f)
    stack = rank1.read_text()  # py-spy's dump of the rank waiting in the fake's loop
    assert stack.startswith("# node=local rank=1 ") and "<module> (fake_train.py:" in stack
    assert runtime.job_view(ended)["stalled"] is None  # the flag ends with the attempt

    await wait_for(lambda: _ended(runtime, retried.id, 2), timeout=60)
    first, second = runtime.store.attempts(retried.id)
    assert first.state is JobState.FAILED and second.state is JobState.FAILED
    assert first.reason is not None and first.reason.startswith("stall watch: stalled ")
    assert first.reason.endswith("at step 5")
    causes = [e.cause for e in runtime.store.history(retried.id)]
    assert any(c.startswith("restart 1 of 1 by stall watch: lr x1 (stall watch: stalled")
               for c in causes), causes
    assert "lr scale 1.0 resumed at 5" in runtime.log_path(retried.id, 2).read_text()


async def test_a_trip_saved_before_an_engine_restart_is_applied_after_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "engine.db")
    first = make_runtime(store, tmp_path)
    await first.start()
    assert await first.wait_nodes_up(20)
    spec = trainer(tmp_path, "survives", "never", "15once", GuardSpec(on_nan="restart"))
    job = first.submit(spec, ME)
    await wait_for(lambda: (tmp_path / "survives" / "step-000010").is_dir())
    await first.stop()  # the job keeps running (stuck at step 15); the guard had tripped, say
    GuardBook(tmp_path).record_trip(job.id, 1, Trip("restart", "loss guard: loss was nan at "
                                                    "step 12", 11), time.time())
    second = make_runtime(store, tmp_path)
    await second.start()
    try:
        await wait_for(lambda: _ended(second, job.id, 2), timeout=60)
        one, two = second.store.attempts(job.id)
        assert one.state is JobState.FAILED and one.reason == "loss guard: loss was nan at step 12"
        assert two.state is JobState.SUCCEEDED
        assert "lr scale 0.5 resumed at 10" in second.log_path(job.id, 2).read_text()
    finally:
        for run in list(second.running.values()):
            second._stop_parts(run)
        await second.stop()
        store.close()
