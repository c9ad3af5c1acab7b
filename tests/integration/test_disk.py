"""A full disk and growing logs, on real tmpfs mounts (2-16 MiB), with a real
store, real local agents and real job processes: the engine's log copy is
capped (head, marker, tail); an engine home that fills up stops the copy
once, with an event, and the engine goes on; a node whose run root fills up
fails the attempt with a reason naming the disk; a checkpoint or metrics
write that finds no space fails clearly and leaves nothing half-written; the
daemon refuses a home on a full disk in one line, creating nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from chaos.engine_handle import EngineHandle
from engine.ingest import Running
from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec, Placement
from engine.runtime import Caller, Runtime
from engine.store import Store
from engine.transport.local import LocalAgentChannel
from tests.integration.polling import wait_for

ME = Caller.from_uid(os.getuid())
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """mount(name, size) -> a fresh tmpfs of that size under tmp_path;
    every one is unmounted (lazily) at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                               "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs on {where} ({proc.stderr.strip()}): the disk "
                        "tests need root and mount(8), as in CI (.ci/run runs as root)")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while os.write(fd, block) == size:
                    pass
    finally:
        os.close(fd)
    st = os.statvfs(folder)
    assert st.f_bavail == 0, f"{folder} still has {st.f_bavail} blocks free"
    return filler


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def started(home: Path, node_root: Path) -> Runtime:
    store = Store(home / "engine.db")
    rt = Runtime(store, ClusterSpec("test", (NodeSpec("local", root=str(node_root)),)), home,
                 lambda node: LocalAgentChannel(node.name, node_root, interval=0.2),
                 lost_after=30.0, stop_grace=1.0)
    await rt.start()
    assert await rt.wait_nodes_up(20)
    return rt


async def finish(rt: Runtime) -> None:
    await rt.stop()
    rt.store.close()


def ended(rt: Runtime, job_id: int) -> Callable[[], bool]:
    return lambda: rt.store.get_job(job_id).state.is_terminal()


async def test_log_copy_is_capped_and_a_full_engine_home_stops_it_once(
        tmpfs: Callable[[str, str], Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    home = tmpfs("home", "16m")
    node = tmp_path / "node"
    node.mkdir()
    rt = await started(home, node)
    try:
        # growth: 4000 numbered lines (~380 KB) through a 64 KiB cap
        rt.ingest.log_cap = 64 << 10
        loud = rt.submit(JobSpec(name="loud", kind="command", argv=py(
            "for i in range(4000): print(f'line {i:05d} ' + 'x' * 84)")), ME)
        await wait_for(ended(rt, loud.id), 60)
        assert rt.store.get_job(loud.id).state is JobState.SUCCEEDED
        copy = rt.log_path(loud.id, 1).read_bytes()
        full = (node / "runs" / f"{loud.id}.1" / "output.log").read_bytes()
        assert len(full) == 4000 * 96
        assert len(copy) <= (64 << 10) + 200  # the cap plus one line
        lines = copy.decode().splitlines()
        markers = [i for i, line in enumerate(lines) if line.startswith("[llmconsole:")]
        assert len(markers) == 1, markers
        m = re.fullmatch(r"\[llmconsole: (\d+) bytes of output dropped here; the full log is "
                         r"on node local at (\S+)\]", lines[markers[0]])
        assert m is not None, lines[markers[0]]
        assert m.group(2) == str(node / "runs" / f"{loud.id}.1" / "output.log")
        head, tail = lines[:markers[0]], lines[markers[0] + 1:]
        numbers = [int(line.split()[1]) for line in head + tail]
        assert numbers[0] == 0 and numbers[-1] == 3999  # the start and the end of the run
        assert numbers[:len(head)] == list(range(len(head)))  # whole lines, none repeated
        assert numbers[len(head):] == list(range(numbers[len(head)], 4000))
        assert int(m.group(1)) == len(full) - (len(copy) - len(lines[markers[0]]) - 1)

        # a reader following the copy as it is rewritten (as `logs -f` does) and keeping up
        # sees every line once, in order (it has missed none: no marker for it)
        follower = Running(job_id=loud.id, number=9, spec=loud.spec,
                           placements=(Placement("local", (), 1),))
        path = rt.ingest.log_path(loud.id, 9)
        readers = {7: [b"", 0, None], 1000: [b"", 0, None]}  # every N lines: seen, where
        for i in range(4000):
            rt.ingest.append_log(follower, f"line {i:05d} " + "x" * 84)
            for every, reader in readers.items():
                if i % every == 0 or i == 3999:
                    reader[1], reader[2] = rt.ingest.follow(loud.id, 9, reader[1], reader[2])
                    with open(path, "rb") as f:
                        f.seek(reader[1])
                        chunk = f.read()
                    reader[0], reader[1] = reader[0] + chunk, reader[1] + len(chunk)
        rt.ingest.close(follower)
        assert readers[7][2] is not None and readers[7][2] > 10  # rewrites it went through
        read = readers[7][0].decode().splitlines()
        assert [int(line.split()[1]) for line in read if line.startswith("line ")] == \
            list(range(4000))
        assert not any(line.startswith("[llmconsole: ") for line in read)
        # one that falls behind misses lines, but only where a marker says so
        last, gap = -1, False
        for line in readers[1000][0].decode().splitlines():
            if line.startswith("[llmconsole: "):
                gap = True
                continue
            number = int(line.split()[1])
            assert number > last if gap else number == last + 1, (last, line)
            last, gap = number, False
        assert last == 3999 and b"[llmconsole: " in readers[1000][0]
        assert len(path.read_bytes()) <= (64 << 10) + 200

        # a full engine home: the copy stops once (engine.log and one event), the job's
        # state stays right, and the engine goes on
        flag = node / "go"
        waiter = rt.submit(JobSpec(name="waiter", kind="command", argv=py(
            "import os, time\nprint('before', flush=True)\n"
            f"while not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
            "for i in range(200): print(f'after {i} ' + 'z' * 90, flush=True)\n")), ME)
        copy_path = rt.log_path(waiter.id, 1)
        await wait_for(lambda: copy_path.exists() and b"before" in copy_path.read_bytes())
        filler = fill(home)
        with caplog.at_level(logging.ERROR, logger="llmconsole.ingest"):
            flag.touch()
            # the job ends while the disk is full (the store cannot take its end either)
            await wait_for(lambda: (node / "runs" / f"{waiter.id}.1" / "exit.json").exists())
            await wait_for(lambda: all(p.ended for r in rt.running.values()
                                       if r.job_id == waiter.id for p in r.parts.values()))
        filler.unlink()  # space again: the engine records what it could not
        await wait_for(ended(rt, waiter.id), 30)
        assert rt.store.get_job(waiter.id).state is JobState.SUCCEEDED
        said = [r for r in caplog.records if "log copy" in r.getMessage()]
        assert len(said) == 1 and "No space left on device" in said[0].getMessage()
        notes = [e.cause for e in rt.store.history(waiter.id)
                 if e.cause.startswith("log copy stopped")]
        assert notes == ["log copy stopped: no space left on device"]
        kept = copy_path.read_bytes()
        assert kept.startswith(b"before\n") and kept.endswith(b"\n")  # whole lines only
        after = rt.submit(JobSpec(name="after", kind="command", argv=py("print('ok')")), ME)
        await wait_for(ended(rt, after.id), 30)
        assert rt.store.get_job(after.id).state is JobState.SUCCEEDED
        assert rt.log_path(after.id, 1).read_bytes() == b"ok\n"

        # a workload whose output disk is full: its own line is the attempt's reason
        out = tmpfs("out", "1m")
        fill(out)
        writer = rt.submit(JobSpec(name="writer", kind="command", argv=py(
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from pathlib import Path\n"
            "from engine.workloads.common import run_main, write_json_atomic\n"
            f"run_main(lambda: write_json_atomic(Path({str(out)!r}) / 'results.json', "
            "{'x': 'y' * 100000}))")), ME)
        await wait_for(ended(rt, writer.id), 30)
        failed = rt.store.get_attempt(writer.id, 1)
        assert failed.state is JobState.FAILED and failed.exit_code == 4
        assert failed.reason == (f"exit code 4: no space left on {out} while writing "
                                 f"{out / 'results.json'} (0 bytes free); free space on that "
                                 "disk")
        assert sorted(p.name for p in out.iterdir()) == ["filler"]  # no temporary file
        assert rt.store.integrity_check() == "ok"
    finally:
        await finish(rt)


async def test_a_full_node_disk_fails_the_attempt_with_the_reason(
        tmpfs: Callable[[str, str], Path], tmp_path: Path) -> None:
    node = tmpfs("node", "2m")
    rt = await started(tmp_path, node)
    try:
        hog = rt.submit(JobSpec(name="hog", kind="command", argv=py(
            "while True: print('y' * 999)")), ME)
        await wait_for(ended(rt, hog.id), 60)
        attempt = rt.store.get_attempt(hog.id, 1)
        assert attempt.state is JobState.FAILED
        assert attempt.exit_code not in (0, None)
        assert attempt.reason is not None and attempt.reason.startswith(
            f"no space left on device: {node} has "), attempt.reason
        run_dir = node / "runs" / f"{hog.id}.1"
        assert str(run_dir) in attempt.reason and "free space on that disk" in attempt.reason
        assert not (run_dir / ".reserve").exists()
        exit_doc = json.loads((run_dir / "exit.json").read_text())
        assert exit_doc["error"] == attempt.reason
        # the last line of the engine's copy (what `llmconsole logs` shows) says it too
        assert rt.log_path(hog.id, 1).read_text().splitlines()[-1] == \
            f"llmconsole: {attempt.reason}"
        # no room for even the run directory's spec: refused at start, nothing half-written
        fill(node)
        late = rt.submit(JobSpec(name="late", kind="command", argv=py("print('never')")), ME)
        await wait_for(ended(rt, late.id), 30)
        refused = rt.store.get_attempt(late.id, 1)
        assert refused.state is JobState.FAILED and refused.reason is not None
        assert "No space left on device" in refused.reason, refused.reason
        assert [p.name for p in (node / "runs" / f"{late.id}.1").iterdir()] == []
        assert rt.store.integrity_check() == "ok"
    finally:
        await finish(rt)


def test_checkpoint_and_metrics_on_a_full_disk(tmpfs: Callable[[str, str], Path]) -> None:
    from engine.workloads.common import EXIT_NO_SPACE, MetricsLog, NoSpace
    from engine.workloads.models import LoadedModel, build_config, build_model
    from engine.workloads.train import checkpoints, load_checkpoint_state, save_checkpoint

    disk = tmpfs("out", "8m")
    output = disk / "run"
    tok = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2,  # what save_model uses
                          save_pretrained=lambda d: Path(d, "tokenizer.json").write_text("{}"))
    model = LoadedModel(build_model(build_config("micro", 256, 64, tok)), tok, None)
    first = save_checkpoint(output, 1, model, {"step": 1}, keep=3)
    assert checkpoints(output) == [first]
    used = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    filler = disk / "filler"
    filler.write_bytes(b"\0" * ((os.statvfs(disk).f_bavail * 4096) - used // 2))

    with pytest.raises(NoSpace) as err:
        save_checkpoint(output, 2, model, {"step": 2}, keep=3)
    message = str(err.value)
    assert message.startswith(f"no space left on {disk} while saving checkpoint step-000002 "
                              f"to {output / 'checkpoints'} (")
    assert message.endswith(" free); free space or lower --keep-checkpoints")
    assert err.value.exit_code == EXIT_NO_SPACE
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-000001"]
    assert checkpoints(output) == [first] and load_checkpoint_state(first)["step"] == 1
    # a step folder without its trainer state (cut short some other way) is never resumed
    (output / "checkpoints" / "step-000009" / "model").mkdir(parents=True)
    assert checkpoints(output) == [first]

    # metrics: NoSpace naming the file; what is in it stays whole lines
    log = MetricsLog(disk / "metrics.jsonl", None)
    for step in range(5):
        log.write({"step": step, "loss": 1.5, "note": "z" * 200})
    fill(disk)  # the rest of the file's last page still takes a few lines
    with pytest.raises(NoSpace) as err:
        for step in range(5, 100_000):
            log.write({"step": step, "loss": 1.5, "note": "z" * 200})
    log.close()
    assert str(err.value).startswith(f"no space left on {disk} while writing metrics to "
                                     f"{disk / 'metrics.jsonl'} (")
    steps = [json.loads(line)["step"] for line in (disk / "metrics.jsonl").read_text()
             .splitlines(keepends=True) if line.endswith("\n")]
    assert (disk / "metrics.jsonl").read_text().endswith("\n")  # no partial line
    assert steps == list(range(len(steps))) and len(steps) >= 5


def test_the_engine_refuses_a_home_on_a_full_disk(tmpfs: Callable[[str, str], Path]) -> None:
    disk = tmpfs("home", "2m")
    existing = disk / "existing"
    existing.mkdir()
    fill(disk)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCONSOLE_")}
    for home, argv in ((disk / "new", ["engine", "serve"]),
                       (existing, ["engine", "serve"]),
                       (existing, ["engine", "start"])):
        proc = subprocess.run([sys.executable, "-m", "engine", *argv], cwd=REPO,
                              env={**env, "LLMCONSOLE_HOME": str(home)},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == [
            f"llmconsole: error: the engine home {home} is on a full disk (0 bytes free on "
            f"{disk}); free space or set LLMCONSOLE_HOME to another disk"], proc.stderr
    assert not (disk / "new").exists() and list(existing.iterdir()) == []


def test_llmconsole_logs_of_a_capped_copy_is_coherent(engine: EngineHandle) -> None:
    engine.env["LLMCONSOLE_LOG_CAP_MB"] = "lots"
    bad = engine.cli("engine", "serve", check=False)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "llmconsole: error: LLMCONSOLE_LOG_CAP_MB='lots': expected a positive number of MiB, "
        "such as 256 (the cap of the engine's copy of each attempt's output)"]
    assert not (engine.home / "engine.db").exists()

    engine.env["LLMCONSOLE_LOG_CAP_MB"] = "0.0625"  # 64 KiB
    script = "for i in range(3000): print(f'line {i:05d} ' + 'x' * 84)"
    engine.write_profile("loud", 'kind = "command"\ncommand = ' +
                         json.dumps([sys.executable, "-c", script]) + "\n")
    job_id = engine.submit("loud")
    assert engine.wait_state(job_id, {"succeeded", "failed"})["state"] == "succeeded"
    out = engine.cli("logs", str(job_id)).stdout
    assert len(out) <= (64 << 10) + 100
    lines = out.splitlines()
    assert lines[0].startswith("line 00000 ") and lines[-1].startswith("line 02999 ")
    marker = [line for line in lines if line.startswith("[llmconsole: ")]
    assert len(marker) == 1 and "bytes of output dropped here; the full log is on node " \
        "local at " in marker[0]
    assert engine.cli("logs", str(job_id), "--tail", "2").stdout.splitlines() == lines[-2:]

    # `logs -f` through the rewrites: the numbers only go up, from the first line to the
    # last, and wherever it skipped lines (it fell behind a rewrite) the marker says so
    slow = ("import time\nfor i in range(3000):\n    print(f'line {i:05d} ' + 'x' * 84)\n"
            "    if i % 150 == 0: time.sleep(0.05)\n")
    engine.write_profile("slow", 'kind = "command"\ncommand = ' +
                         json.dumps([sys.executable, "-c", slow]) + "\n")
    slow_id = engine.submit("slow")
    followed = engine.cli("logs", "-f", str(slow_id), timeout=120).stdout.splitlines()
    assert engine.job(slow_id)["state"] == "succeeded"
    last, gap = -1, False
    for line in followed:
        if line.startswith("[llmconsole: "):
            gap = True  # lines may be missing here, and only here
            continue
        number = int(line.split()[1])
        assert number > last if gap else number == last + 1, (last, line)
        last, gap = number, False
    assert followed[0].startswith("line 00000 ") and last == 2999
