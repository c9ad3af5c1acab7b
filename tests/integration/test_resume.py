"""A retried horovodrun training resumes, through the real engine: the path
node-loss recovery takes. `llmconsole submit pretrain-tiny` (two horovod
workers, made small), wait for a checkpoint, `cancel` (the workers stop
after their step and save one more), `retry`: attempt 2 starts past that
checkpoint and finishes. It used to hang with no output: rank 0 broadcast
the checkpoint's position as a dict, rank 1 passed None, and Horovod named
the two collectives after their types."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from chaos.engine_handle import EngineHandle

MAX_STEPS, EVERY = 100, 30
#: pretrain-tiny's own profile, with the micro model on a slice of the demo
#: corpus: about 60 ms a step on two workers of a 2-core machine, and 0.4 s a
#: checkpoint, so few of them. The cancel lands while attempt 1 has about 70
#: steps (4 s) to go (it stops a few steps after the first checkpoint).
FAST = ["model=micro", "max_docs=400", "block_size=64", "vocab_size=512", "batch_size=8",
        "eval_batches=4", f"max_steps={MAX_STEPS}", "warmup_steps=5", "log_every=1",
        f"checkpoint_every={EVERY}", f"eval_every={MAX_STEPS}", "keep_checkpoints=2"]


def checkpoint_steps(output: Path) -> list[int]:
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.removeprefix("step-")) for p in folder.iterdir()
                  if p.is_dir() and p.name.startswith("step-"))


def wait_until(engine: EngineHandle, job_id: int, what: str, done: Callable[[], bool],
               timeout: float) -> None:
    """Poll `done` until it holds; past `timeout`, fail with the job's state
    and the last lines of its log."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            job = engine.job(job_id)
            tail = engine.cli("logs", str(job_id), "--tail", "25", check=False)
            raise AssertionError(f"job {job_id}: no {what} after {timeout:.0f} s (state "
                                 f"{job['state']}, attempt {job['attempt']}); its log ends:\n"
                                 f"{(tail.stdout + tail.stderr) or '(nothing)'}")
        time.sleep(0.05)


def ended(engine: EngineHandle, job_id: int) -> Callable[[], bool]:
    return lambda: engine.job(job_id)["state"] in ("succeeded", "failed", "cancelled", "lost")


def loss_steps(engine: EngineHandle, job_id: int, attempt: int) -> list[int]:
    points = engine.json("metrics", str(job_id), "--attempt", str(attempt), "--name", "loss")
    return sorted(int(p["step"]) for p in points)


def test_a_cancelled_horovod_training_resumes_on_retry_and_finishes(
        engine: EngineHandle) -> None:
    sets = [x for item in FAST for x in ("--set", f"args.{item}")]
    submitted = engine.json("submit", "pretrain-tiny", *sets)
    job_id, output = int(submitted["id"]), Path(submitted["output"])
    assert "horovodrun" in json.dumps(engine.job(job_id))

    wait_until(engine, job_id, "checkpoint", lambda: bool(checkpoint_steps(output)),
               timeout=150)
    engine.cli("cancel", str(job_id))
    wait_until(engine, job_id, "end after cancel", ended(engine, job_id), timeout=60)
    first = engine.job(job_id)
    assert first["state"] == "cancelled", first
    saved = checkpoint_steps(output)
    resumed_at = saved[-1]
    assert saved[0] == EVERY and EVERY <= resumed_at < MAX_STEPS, saved
    stopped = json.loads((output / "results.json").read_text())
    assert stopped["status"] == "stopped" and stopped["steps"] == resumed_at, stopped
    # the stop saved a checkpoint where the workers stopped
    assert loss_steps(engine, job_id, 1)[-1] == resumed_at
    log1 = engine.cli("logs", str(job_id), "--attempt", "1").stdout
    assert f"checkpoint {output / 'checkpoints' / f'step-{resumed_at:06d}'}" in log1

    retried = engine.json("retry", str(job_id))
    assert retried["attempt"] == 2
    wait_until(engine, job_id, "end of attempt 2", ended(engine, job_id), timeout=150)
    job = engine.job(job_id)
    log2 = engine.cli("logs", str(job_id), "--attempt", "2").stdout
    assert job["state"] == "succeeded", (job["state"], log2[-3000:])
    assert [a["state"] for a in job["attempts"]] == ["cancelled", "succeeded"]

    assert f"resumed from {output / 'checkpoints' / f'step-{resumed_at:06d}'} " \
           f"at step {resumed_at}" in log2
    steps = loss_steps(engine, job_id, 2)
    assert steps == list(range(resumed_at + 1, MAX_STEPS + 1)), (resumed_at, steps[:5])
    results = json.loads((output / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == MAX_STEPS
    assert results["dist"] == "horovod" and results["world_size"] == 2
    assert results["replicas_identical"] is True, results["replica_digests"]
