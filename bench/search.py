"""The compression search on the tiny model: pre-train it briefly (as
bench.workloads does), run ``compress --search`` with the default grid (0 or
1 layers dropped, all or half of the key/value head groups and MLP channels
kept, int8 off or on: 16 candidates) without recovery (recovery trains
further, and the briefly trained reference would look worse than its own
pruned copies), on one thread, and report its wall time, its candidate
count and each frontier row: its speedup over the fp32 reference (the
figure), with its size ratio and perplexity change in its name, then the
row ``--pick`` saved.

Everything is written to a temporary folder, removed at the end. Run as
``python -m bench.search`` to print the figures."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import Figure, table
from bench.workloads import BATCH_SIZE, BLOCK_SIZE, EVAL_FRACTION, LATENCY_THREADS, _run, train

TRAIN_STEPS = 30
RECOVER_STEPS = 0
EVAL_BATCHES = 10
LATENCY_REPEATS = 10
PICK = "fastest-within:0.05"
#: The whole search (16 candidates) on 2 loaded cores.
WALL_TARGET_S = 180.0


def search(model: Path, output: Path) -> dict[str, Any]:
    """compress --search on `model` with the default grid; its results."""
    argv = [sys.executable, "-m", "engine.workloads.compress", "--search",
            "--model", str(model), "--output", str(output), "--corpus", "demo",
            "--eval-fraction", str(EVAL_FRACTION), "--block-size", str(BLOCK_SIZE),
            "--batch-size", str(BATCH_SIZE), "--eval-batches", str(EVAL_BATCHES),
            "--latency-repeats", str(LATENCY_REPEATS), "--recover-steps", str(RECOVER_STEPS),
            "--pick", PICK, "--device", "cpu"]
    _run(argv, LATENCY_THREADS, output.with_name(output.name + ".log"))
    return dict(json.loads((output / "results.json").read_text()))


def _ratio(a: Any, b: Any) -> float:
    return float(a) / float(b) if isinstance(a, int | float) and isinstance(b, int | float) \
        and b else float("nan")


def figures(r: dict[str, Any]) -> list[Figure]:
    """Wall time, candidates, a figure per frontier row and the pick."""
    ref = r["reference"]
    out = [Figure(f"search on tiny: wall time, {len(r['rows'])} candidates",
                  float(r["wall_s"]), "s", WALL_TARGET_S, False),
           Figure("search on tiny: frontier rows", float(len(r["frontier"])), "rows", 2.0, True)]
    for i in r["frontier"]:
        row = r["rows"][i]
        size = _ratio(row["size_bytes"], ref["size_bytes"])
        change = row.get("perplexity_change") or 0.0
        out.append(Figure(f"search frontier {row['label']}: {size:.2f}x size, ppl "
                          f"{change:+.1%} (speedup)",
                          _ratio(ref["latency_ms"], row["latency_ms"]), "x", 1.0, True))
    picked = r["rows"][r["pick"]["row"]]
    out.append(Figure(f"search pick ({PICK}): {picked['label']}, "
                      f"{_ratio(picked['size_bytes'], ref['size_bytes']):.2f}x size "
                      "(speedup)", _ratio(ref["latency_ms"], picked["latency_ms"]), "x",
                      1.5, True))
    return out


def run() -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="llcb-search-"))
    try:
        model = work / "tiny"
        train("single", model, model="tiny", steps=TRAIN_STEPS)
        return figures(search(model, work / "search"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(table(run()))
