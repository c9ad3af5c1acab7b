"""Training-workload benchmarks on the CPU, with the demo corpus:

1. training throughput of the tiny model (block 128, batch 8 per worker, the
   same seed and tokenizer) run as one process, as two Horovod workers
   (``horovodrun -np 2 --gloo``) and as two DDP workers (``torchrun``), each
   twice, interleaved: the median tokens/s of the steps after warm-up, read
   from metrics.jsonl (so start-up, evaluation and checkpoints are not
   timed), of the better of the two runs of each kind. Two workers process
   twice the tokens per step; OMP_NUM_THREADS is 1 per worker for both
   two-worker runs and the machine's cores (at most 2) for the single one;
2. int8 (`quantize_int8`: fused projections, the CPU's kernel engine; saved
   and loaded back) against fp32 as loaded, of the single-process tiny model
   and of the small preset (hidden 256) trained briefly: CPU latency of one
   8 x 128 batch on one thread and held-out perplexity;
3. 50% global magnitude pruning of that model with ``engine.workloads.compress``:
   held-out perplexity before, after pruning and after a short recovery
   fine-tune that keeps the zeros.

Everything is written to a temporary folder, removed at the end. Run as
``python -m bench.workloads`` to print the figures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import Figure, table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_STEPS = 30
WARMUP_STEPS = 5          # logged steps left out of the throughput median
SEED = 1234
BATCH_SIZE = 8
BLOCK_SIZE = 128
EVAL_FRACTION = 0.05      # as train.py: the held-out documents
VOCAB_SIZE = 2048         # train.py's default tokenizer size
ROUNDS = 2                # single, horovod, ddp, twice: the best run of each kind counts
SMALL_STEPS = 30
LATENCY_THREADS = 1
LATENCY_REPEATS = 15
LATENCY_ROUNDS = 3        # fp32, int8, fp32, int8, ...: the best median of each counts
#: The issue's target is 1.5x on small (hidden 256); on tiny (hidden 128) the
#: attention and element-wise ops, which stay fp32, are a larger share.
INT8_SPEEDUP_TARGET = {"tiny": 1.2, "small": 1.5}
RECOVER_STEPS = 30
RUN_TIMEOUT_S = 300
CORES = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))

#: Launcher variables that would make a run join, or misread, another job.
_LAUNCHER_ENV = ("LLMCONSOLE_RUN_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _env(threads: int) -> dict[str, str]:
    """The environment of a workload: this Python's bin first on PATH, the
    repository importable, `threads` per process, launcher variables gone.
    XDG_CACHE_HOME is left alone: the demo corpus is built once in the
    normal cache."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_ENV and not k.startswith("HOROVOD_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def _run(argv: list[str], threads: int, log: Path) -> None:
    """Run `argv` in its own process group (all of it killed on timeout);
    a failure raises with the end of its log."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(threads), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        finally:
            try:  # stragglers of a launcher (workers, their helpers)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        what = "timed out" if code is None else f"exit code {code}"
        raise RuntimeError(f"{' '.join(argv[:6])} ...: {what}\n" + "\n".join(tail))


def train(mode: str, output: Path, model: str = "tiny", steps: int = MAX_STEPS,
          tokenizer: Path | None = None) -> list[dict[str, Any]]:
    """Train `model` with `mode` ("single", "horovod" or "ddp"; two workers
    for the latter) into `output`; the metrics lines."""
    args = ["--output", str(output), "--model", model, "--corpus", "demo",
            "--block-size", str(BLOCK_SIZE), "--batch-size", str(BATCH_SIZE),
            "--eval-fraction", str(EVAL_FRACTION), "--max-steps", str(steps),
            "--eval-every", "100000", "--checkpoint-every", "100000", "--log-every", "1",
            "--eval-batches", "2",  # the closing evaluation, after the timed steps
            "--seed", str(SEED), "--device", "cpu", "--dist", mode]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    module = ["-m", "engine.workloads.train"]
    if mode == "single":
        argv, threads = [sys.executable, *module, *args], CORES
    elif mode == "horovod":
        argv = [str(BIN / "horovodrun"), "-np", "2", "--gloo", sys.executable, *module, *args]
        threads = 1
    else:
        argv = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", *module, *args]
        threads = 1
    _run(argv, threads, output.with_name(output.name + ".log"))
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def steady_tokens_per_s(metrics: list[dict[str, Any]]) -> float:
    """Median tokens/s of the logged steps after the first WARMUP_STEPS."""
    rates = [m["tokens_per_s"] for m in metrics
             if m.get("tokens_per_s") and m.get("step", 0) > WARMUP_STEPS]
    if not rates:
        raise RuntimeError("no steady-state steps in metrics.jsonl")
    return float(statistics.median(rates))


def throughput(work: Path) -> tuple[list[Figure], Path]:
    """ROUNDS of the three runs, interleaved, so load from elsewhere on the
    machine hits them alike; the best median of each kind counts. The
    figures and the first single-process output folder (kept: its model is
    measured next)."""
    single = work / "single-0"
    best = {"single": 0.0, "horovod": 0.0, "ddp": 0.0}
    for round_ in range(ROUNDS):
        for mode in best:
            output = work / f"{mode}-{round_}"
            # the first run trains the tokenizer; the others take it, so the data is the same
            tokenizer = None if output == single else single / "tokenizer"
            best[mode] = max(best[mode], steady_tokens_per_s(train(mode, output,
                                                                   tokenizer=tokenizer)))
            if output != single:
                shutil.rmtree(output, ignore_errors=True)
    figures = [
        Figure(f"train tiny, 1 process x {CORES} threads", best["single"], "tokens/s",
               1000.0, True),
        Figure("train tiny, horovod 2 workers x 1 thread", best["horovod"], "tokens/s",
               1000.0, True),
        Figure("train tiny, DDP 2 workers x 1 thread", best["ddp"], "tokens/s", 1000.0, True),
        Figure("horovod / DDP throughput ratio", best["horovod"] / best["ddp"], "x", 0.90, True),
    ]
    return figures, single


def held_out_blocks(tokenizer: Any) -> Any:
    """The held-out documents of the demo corpus, as training splits them,
    packed into BLOCK_SIZE rows with `tokenizer`."""
    from engine.workloads import data

    texts = data.load_texts("demo")
    _, held = data.split_indices(texts, EVAL_FRACTION)
    return data.pack_blocks(tokenizer, [texts[i] for i in held], BLOCK_SIZE)


def int8_vs_fp32(model_dir: Path, preset: str, work: Path) -> list[Figure]:
    """Latency of one batch on LATENCY_THREADS threads and held-out
    perplexity, fp32 as a user runs it (`load_model`: from_pretrained, its
    default attention, no fusion) against the int8 model `quantize_int8`
    makes, saved under `work` and loaded back (what a compress job leaves).
    The rows name the int8 format, kernel engine and attention that ran."""
    import torch

    from engine.workloads.common import quiet_libraries
    from engine.workloads.measure import latency, lm_loss_sums, perplexity
    from engine.workloads.models import INT8_FORMAT, load_model, quantize_int8, runtime, save_model

    quiet_libraries()
    previous = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        fp32 = load_model(model_dir)
        quantized = load_model(model_dir)
        quantized.model, quantized.format = quantize_int8(quantized.model), INT8_FORMAT
        int8 = load_model(save_model(quantized, work / f"int8-{preset}")).model
        blocks = held_out_blocks(fp32.tokenizer)
        batch = blocks[:BATCH_SIZE]
        best = {"fp32": float("inf"), "int8": float("inf")}
        for _ in range(LATENCY_ROUNDS):
            for name, model in (("fp32", fp32.model), ("int8", int8)):
                ms = latency(model, batch, repeats=LATENCY_REPEATS, warmup=3)["latency_ms"]
                best[name] = min(best[name], ms)
        ppl = {}
        for name, model in (("fp32", fp32.model), ("int8", int8)):
            loss_sum, count = lm_loss_sums(model, blocks, BATCH_SIZE, "cpu")
            ppl[name] = perplexity(loss_sum / count)
        ran = runtime(int8)
    finally:
        torch.set_num_threads(previous)
    change = (ppl["int8"] / ppl["fp32"] - 1) * 100
    how = f"{INT8_FORMAT} on {ran['engine']}, {ran['attention']} attention"
    return [
        Figure(f"int8 speedup vs fp32, {preset} (latency/batch; {how})",
               best["fp32"] / best["int8"], "x", INT8_SPEEDUP_TARGET[preset], True),
        Figure(f"int8 perplexity change, {preset}", change, "%", 3.0, False),
    ]


def pruning(model_dir: Path, work: Path) -> list[Figure]:
    """`engine.workloads.compress --method prune` at 50% with a short
    recovery; its before / after-pruning / after-recovery perplexities."""
    out = work / "prune"
    argv = [sys.executable, "-m", "engine.workloads.compress", "--method", "prune",
            "--sparsity", "0.5", "--recover-steps", str(RECOVER_STEPS),
            "--model", str(model_dir), "--output", str(out), "--corpus", "demo",
            "--block-size", str(BLOCK_SIZE), "--batch-size", str(BATCH_SIZE),
            "--eval-fraction", str(EVAL_FRACTION), "--eval-batches", "1000",
            "--latency-repeats", "1", "--seed", str(SEED)]
    _run(argv, CORES, work / "prune.log")
    r = json.loads((out / "results.json").read_text())
    before = float(r["before"]["perplexity"])
    pruned = float(r["perplexity_after_pruning"])
    recovered = float(r["perplexity_after_recovery"])
    return [
        # informational targets: better than a uniform guess over the
        # vocabulary; pruning at most doubles it; recovery improves on pruning
        Figure("perplexity, tiny before pruning", before, "ppl", float(VOCAB_SIZE), False),
        Figure("perplexity, 50% pruned", pruned, "ppl", 2 * before, False),
        Figure(f"perplexity, pruned + {RECOVER_STEPS} recovery steps", recovered, "ppl",
               pruned, False),
        Figure("pruned layers sparsity after recovery",
               float(r["pruned_layers_sparsity"]) * 100, "%", 50.0, True),
    ]


def run() -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="llcb-workloads-"))
    try:
        figures, single = throughput(work)
        figures += int8_vs_fp32(single, "tiny", work)
        small = work / "small"
        train("single", small, model="small", steps=SMALL_STEPS, tokenizer=single / "tokenizer")
        figures += int8_vs_fp32(small, "small", work)
        figures += pruning(single, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    print(table(run()))
