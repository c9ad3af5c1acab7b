"""The training program as users run it: by hand, under horovodrun and
torchrun, interrupted and resumed, fed bad input, and diverging."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import engine.workloads
from tests.workloads.conftest import FAST_TRAIN, results, run_workload

VENV_BIN = Path(sys.executable).parent
#: `Dist`'s collectives, and Horovod's that take a name.
DIST_COLLECTIVES = {"broadcast_object", "gather_object", "sum"}
HOROVOD_NAMED = {"allreduce", "allreduce_", "allgather", "allgather_object", "broadcast",
                 "broadcast_", "broadcast_async_", "broadcast_object", "alltoall"}


def losses(folder: Path) -> list[float]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x and x["loss"] is not None]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine.workloads.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_horovod_two_workers_lower_the_loss_and_end_identical(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "hvd"
    cmd = [str(VENV_BIN / "horovodrun"), "-np", "2", "--gloo", sys.executable, "-m",
           "engine.workloads.train", "--output", str(out), *FAST_TRAIN, "--max-steps", "40",
           "--lr", "3e-3", "--eval-every", "40", "--checkpoint-every", "40"]
    proc = subprocess.run(cmd, env=wl_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(out)
    assert res["dist"] == "horovod" and res["world_size"] == 2
    assert len(res["replica_digests"]) == 2 and res["replicas_identical"] is True
    seen = losses(out)
    assert len(seen) == 40
    assert sum(seen[-5:]) / 5 < sum(seen[:5]) / 5 - 0.5, seen
    assert (out / "model" / "model.safetensors").is_file()


def test_every_collective_in_the_workloads_has_a_fixed_name() -> None:
    """Horovod matches collectives across ranks by name, and names an
    unnamed object collective after the object's type, which can differ
    between ranks (a resumed run hung on exactly that). So every `dist.`
    collective passes a string constant, distinct per call site, and every
    call into Horovod that takes a name passes one."""
    seen: dict[str, str] = {}
    checked = 0
    for path in sorted(Path(engine.workloads.__file__).parent.glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            receiver, method = ast.unparse(call.func.value), call.func.attr
            where = f"{path.name}:{call.lineno} {receiver}.{method}"
            name = next((k.value for k in call.keywords if k.arg == "name"), None)
            if receiver == "dist" and method in DIST_COLLECTIVES:
                assert isinstance(name, ast.Constant) and isinstance(name.value, str), where
                assert name.value not in seen, f"{where} reuses {seen.get(name.value)}'s name"
                seen[name.value] = where
                checked += 1
            elif receiver.endswith("_hvd") and method in HOROVOD_NAMED:
                assert name is not None, f"{where}: no name="
                checked += 1
    assert checked >= 8 and {"train.resume_position", "train.rng_states"} <= set(seen)


def horovodrun(args: list[str], env: dict[str, str], timeout: float = 120.0
               ) -> subprocess.CompletedProcess[str]:
    """`horovodrun -np 2 --gloo` the training program. A run that outlives
    `timeout` (a hang) is killed with its workers (each in a session of its
    own, so not in horovodrun's group) and fails the test with its output."""
    cmd = [str(VENV_BIN / "horovodrun"), "-np", "2", "--gloo", sys.executable, "-m",
           "engine.workloads.train", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"horovodrun {' '.join(args)} still running after {timeout:.0f} s"
                             f":\n{stdout[-3000:]}\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_horovod_resume_from_a_checkpoint_continues_and_finishes(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    """The by-hand repro of a retried horovodrun job: rank 0 reads the
    checkpoint and broadcasts it, the other rank has none to pass, and both
    must still meet in the same collectives (they used to wait forever in
    `dict.sz` and `NoneType.sz`)."""
    out = tmp_path / "hvd-resume"
    args = ["--output", str(out), *FAST_TRAIN, "--checkpoint-every", "2", "--eval-every", "6",
            "--resume"]
    first = horovodrun([*args, "--max-steps", "4"], wl_env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000002", "step-000004"]
    logged_before = len((out / "metrics.jsonl").read_text().splitlines())

    second = horovodrun([*args, "--max-steps", "6"], wl_env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-000004'} at step 4" in second.stdout
    records = [json.loads(x) for x in
               (out / "metrics.jsonl").read_text().splitlines()[logged_before:]]
    assert [r["step"] for r in records if "loss" in r] == [5, 6]
    res = results(out)
    assert res["status"] == "ok" and res["steps"] == 6 and res["world_size"] == 2
    assert res["replicas_identical"] is True, res["replica_digests"]


def test_torchrun_two_workers_stay_in_sync(tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "ddp"
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m",
           "engine.workloads.train", "--output", str(out), *FAST_TRAIN, "--max-steps", "6",
           "--eval-every", "6", "--checkpoint-every", "6"]
    proc = subprocess.run(cmd, env=wl_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(out)
    assert res["dist"] == "ddp" and res["replicas_identical"] is True


def _resume_args(out: Path) -> list[str]:
    return ["--output", str(out), *FAST_TRAIN, "--max-steps", "24", "--checkpoint-every", "4",
            "--eval-every", "24", "--dropout", "0.1", "--lr", "3e-3", "--resume"]


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    whole = tmp_path / "whole"
    run_workload("train", _resume_args(whole), wl_env)

    broken = tmp_path / "broken"
    proc = start(_resume_args(broken), wl_env)
    wait_for(lambda: (broken / "checkpoints" / "step-000004").is_dir())
    proc.kill()  # a crash: no chance to save anything more
    proc.wait(timeout=30)
    assert not (broken / "results.json").exists()

    resumed = run_workload("train", _resume_args(broken), wl_env)
    assert "resumed from" in resumed.stdout
    expected, got = results(whole)["final_loss"], results(broken)["final_loss"]
    assert abs(expected - got) <= 1e-4 * abs(expected), (expected, got)
    assert results(whole)["eval_loss"] == results(broken)["eval_loss"]


def test_sigterm_saves_a_checkpoint_and_resume_continues(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "term"
    args = _resume_args(out)
    args[args.index("--checkpoint-every") + 1] = "100"  # only the stop will checkpoint
    proc = start(args, wl_env)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(losses(out)) >= 3)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(saved) == 1
    stopped_at = int(saved[0].removeprefix("step-"))
    assert 3 <= stopped_at < 24
    run_workload("train", args, wl_env)
    res = results(out)
    assert res["status"] == "ok" and res["steps"] == 24


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "c"
    args = ["--output", str(out), *FAST_TRAIN, "--max-steps", "4", "--checkpoint-every", "2",
            "--eval-every", "4"]
    run_workload("train", args, wl_env)
    newest = out / "checkpoints" / "step-000004" / "trainer.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    proc = run_workload("train", [*args, "--max-steps", "6", "--resume"], wl_env, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint ") and "step-000004" in line and "corrupt" in line

    missing = run_workload("train", [*args, "--resume-from", str(tmp_path / "nope")], wl_env,
                           check=False)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    assert "Traceback" not in missing.stderr

    older = str(out / "checkpoints" / "step-000002")
    other = [*args, "--resume-from", older]
    other[other.index("micro")] = "tiny"  # another model shape than the checkpoint's
    mismatch = run_workload("train", other, wl_env, check=False)
    assert mismatch.returncode == 2 and "Traceback" not in mismatch.stderr
    assert f"checkpoint {older} does not fit this run" in mismatch.stderr


def test_a_missing_or_broken_model_folder_is_a_clear_error(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    proc = run_workload("train", ["--output", str(tmp_path / "o"), "--model",
                                  str(tmp_path / "absent"), "--max-steps", "1"], wl_env,
                        check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"model {tmp_path / 'absent'}: no such folder" in proc.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    proc = run_workload("train", ["--output", str(tmp_path / "o2"), "--model", str(broken),
                                  "--max-steps", "1"], wl_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(broken) in proc.stderr


def test_a_diverging_run_stops_with_the_reason(tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "nan"
    proc = run_workload("train", ["--output", str(out), *FAST_TRAIN, "--max-steps", "30",
                                  "--optimizer", "sgd", "--lr", "1e6", "--clip", "0",
                                  "--warmup-steps", "0", "--eval-every", "30"],
                        wl_env, check=False)
    assert proc.returncode == 3, proc.stderr
    res = results(out)
    assert res["status"] == "diverged"
    assert "loss became" in res["reason"] and "lower --lr" in res["reason"]
    assert res["reason"] in proc.stderr
    assert not (out / "model").exists()


def test_classification_fine_tune_from_a_pretrained_folder(classifier: Path) -> None:
    out = classifier  # the session's fine-tune of the pre-trained folder
    res = results(out)
    assert res["task"] == "classification" and 0.0 <= res["accuracy"] <= 1.0
    meta = json.loads((out / "model" / "llmconsole.json").read_text())
    assert meta["task"] == "classification" and len(meta["labels"]) == 4
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_metrics_go_to_the_engine_run_folder_when_run_as_a_job(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    env = {**wl_env, "LLMCONSOLE_RUN_DIR": str(run_dir)}
    run_workload("train", ["--output", str(tmp_path / "o"), *FAST_TRAIN, "--max-steps", "2",
                           "--eval-every", "2"], env)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"lr", "grad_norm", "tokens_per_s", "samples_per_s", "epoch"} <= set(steps[0])
    assert any("perplexity" in r for r in records)
    assert any(p.name.startswith("events.out.tfevents") for p in
               (tmp_path / "o" / "tensorboard").iterdir())
    assert os.path.exists(tmp_path / "o" / "results.json")
