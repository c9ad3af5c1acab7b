"""Structured-pruning benchmark on the CPU, with the demo corpus: the `small`
preset (6 layers, hidden 256, 8 heads, 688 MLP channels) trained briefly,
then ``engine.workloads.compress --method structured`` drops one decoder
layer and keeps half of the key/value head groups and half of the MLP
channels of the others (about half of the parameters), and recovers by a
short distillation from the unpruned model.

The figures: parameters kept, size ratio of the weight files, latency
speedup (one 8 x 128 held-out batch on one thread, the two models timed in
turn for three rounds, the best median of 10 passes after warm-up of
each), and held-out perplexity before, after pruning and after recovery
(the compress run's own measures). Everything is
written to a temporary folder, removed at the end. Run as
``python -m bench.structured`` to print the figures (and the machine)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.harness import Figure, machine, table
from bench.workloads import (
    BATCH_SIZE,
    BLOCK_SIZE,
    CORES,
    EVAL_FRACTION,
    LATENCY_ROUNDS,
    LATENCY_THREADS,
    SEED,
    _run,
    held_out_blocks,
    train,
)

TRAIN_STEPS = 40
RECOVER_STEPS = 30
DROP_LAYERS, KEEP_HEADS, KEEP_CHANNELS = 1, 0.5, 0.5
EVAL_BATCHES = 10
LATENCY_REPEATS = 10


def structured(model_dir: Path, work: Path) -> dict:
    """One compress run; its results.json."""
    out = work / "structured"
    argv = [sys.executable, "-m", "engine.workloads.compress", "--method", "structured",
            "--drop-layers", str(DROP_LAYERS), "--keep-heads", str(KEEP_HEADS),
            "--keep-channels", str(KEEP_CHANNELS), "--recover-steps", str(RECOVER_STEPS),
            "--recover", "distill", "--lr", "1e-3", "--device", "cpu",
            "--model", str(model_dir), "--output", str(out), "--corpus", "demo",
            "--block-size", str(BLOCK_SIZE), "--batch-size", str(BATCH_SIZE),
            "--eval-fraction", str(EVAL_FRACTION), "--eval-batches", str(EVAL_BATCHES),
            "--latency-repeats", str(LATENCY_REPEATS), "--seed", str(SEED)]
    _run(argv, CORES, work / "structured.log")
    return json.loads((out / "results.json").read_text())


def speedup(before: Path, after: Path) -> float:
    """Latency of one held-out batch on LATENCY_THREADS threads, the two
    models timed in turn for LATENCY_ROUNDS rounds (so that load from
    elsewhere on the machine hits both alike); the best median of each
    counts. before / after."""
    import torch

    from engine.workloads.common import quiet_libraries
    from engine.workloads.measure import latency
    from engine.workloads.models import load_model

    quiet_libraries()
    previous = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        models = {"before": load_model(before), "after": load_model(after)}
        batch = held_out_blocks(models["before"].tokenizer)[:BATCH_SIZE]
        best = {name: float("inf") for name in models}
        for _ in range(LATENCY_ROUNDS + 1):
            for name, loaded in models.items():
                ms = latency(loaded.model, batch, repeats=LATENCY_REPEATS, warmup=3)["latency_ms"]
                best[name] = min(best[name], ms)
    finally:
        torch.set_num_threads(previous)
    return best["before"] / best["after"]


def figures(r: dict, interleaved_speedup: float) -> list[Figure]:
    """The bench rows of one structured compress results.json, with the
    speedup timed by `speedup`."""
    st = r["structured"]
    before = float(r["before"]["perplexity"])
    pruned = float(r["perplexity_after_pruning"])
    recovered = float(r["perplexity_after_recovery"])
    return [
        Figure("structured small: parameters kept", 100 * st["parameter_ratio"], "%", 55.0,
               False),
        Figure("structured small: size ratio (weight files)", float(r["size_ratio"]), "x", 1.8,
               True),
        Figure("structured small: latency speedup (1 thread)", interleaved_speedup, "x", 1.5,
               True),
        # informational targets: pruning at most triples perplexity; recovery
        # brings it back within 10 % of the unpruned model
        Figure("structured small: perplexity before", before, "ppl", before, False),
        Figure("structured small: perplexity after pruning", pruned, "ppl", 3 * before, False),
        Figure(f"structured small: perplexity after {RECOVER_STEPS} distillation steps",
               recovered, "ppl", 1.1 * before, False),
    ]


def run() -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="llcb-structured-"))
    try:
        small = work / "small"
        train("single", small, model="small", steps=TRAIN_STEPS)
        r = structured(small, work)
        return figures(r, speedup(small / "model", work / "structured" / "model"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    rows = run()
    print(f"machine: {machine()}")
    print(table(rows))
