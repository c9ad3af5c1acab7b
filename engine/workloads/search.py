"""``compress --search``: try a grid of compressions of one trained model,
measure every candidate the same way, and print the size / latency /
perplexity frontier.

    python -m engine.workloads.compress --search --model runs/pt --output runs/search \\
        --grid "layers=0,1 heads=1,0.5 channels=1,0.5 int8=off,on" \\
        --pick fastest-within:0.05 --recover-steps 20

The grid and the pick rule are `engine.workloads.search_grid`'s. Each
candidate drops decoder layers, keeps a share of key/value head groups and
of MLP channels (`engine.workloads.structured.prune_structured`, importance
measured on rows of the training split: scoring on the rows every candidate
is then measured on would choose what suits exactly those rows), recovers
for ``--recover-steps`` steps (`compress.recover`, with ``--recover
distill`` from the unpruned model) when it pruned anything, and is
quantized to int8 when the grid says so (the same pruned, recovered model
with and without int8). Every candidate, the unpruned fp32 model (the
reference, first row) included, is saved, loaded back from disk and
measured by `evaluate.measure_model` on the same held-out batches
(``--eval-batches`` of ``--batch-size`` x ``--block-size``, the split
training used), its latency on the same timed batch with warm-up, with the
same torch thread count, in TIMING_ROUNDS rounds over all candidates (the
fastest median of each kept). The frontier (`engine.workloads.pareto`) is over
``size_bytes``, ``latency_ms`` and ``perplexity``, all minimised.

What it writes under ``--output``:

- ``model/``: the model of the row ``--pick`` chose (the other candidates'
  files are deleted; their numbers are kept);
- ``results.json``: ``kind`` "compress", ``method`` "search", ``status``
  "ok", ``source``, ``model``, ``format`` (the picked model's), ``grid``
  (its text, the candidate count and each key's values), ``pick`` (the rule,
  the row index and label), ``keys`` (the frontier's), ``frontier`` (row
  indices), ``rows`` (each: ``index``, ``label``, the candidate's
  ``layers``/``heads``/``channels``/``int8``, ``reference``, ``format``,
  the ``engine``, ``dtype`` and ``attention`` that ran it
  (`engine.workloads.models.runtime`), ``config`` (its layer, head and channel
  counts), what pruning kept (``pruning``), every measure of
  `evaluate.measure_model`, ``perplexity_change`` against the reference,
  ``perplexity_before_recovery`` when it recovered, ``pareto`` and
  ``picked``), ``reference`` (the reference row's measures), ``before`` and
  ``after`` (the reference and the picked row, as other compress results,
  with their ratios), ``recover_steps``, ``timing_rounds``, ``threads``, ``batch_size``,
  ``block_size``, ``eval_batches`` and ``wall_s``;
- a metrics line per candidate (step = its row index).

The table (`engine.workloads.compare.search_table`, as the Results tab shows
it) goes to stdout. Exit codes as compress's: 2 for bad input (a grid that
drops every layer of this model, a model that is not fp32 causal LM).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

from engine.workloads import compare, pareto
from engine.workloads.common import (
    MetricsLog,
    WorkloadError,
    finite_or_none,
    metrics_path,
    write_json_atomic,
)
from engine.workloads.evaluate import check_data_fits, held_out, lm_texts, measure_model
from engine.workloads.search_grid import Candidate, Grid, choose

#: The frontier's measures, all minimised.
KEYS = ("size_bytes", "latency_ms", "perplexity")
#: Where candidates are saved while the search runs (under --output).
WORK = ".search-candidates"
#: Calibration batches the importance scores read (prune_structured's default).
CALIBRATION_BATCHES = 4
#: Latency rounds over all candidates: the first is measure_model's, the
#: others run over every candidate again, in reverse order, and each row
#: keeps its fastest median. On a shared machine the load changes while the
#: search runs; timed once, in order, the candidates timed in a quiet moment
#: would win (on 2 loaded cores a dropped layer measured slower than fp32).
TIMING_ROUNDS = 2


def check_grid(grid: Grid, layers: int, folder: Path) -> None:
    """Every candidate keeps at least one of the model's `layers` layers."""
    worst = max(c.layers for c in grid.candidates)
    if worst >= layers:
        raise WorkloadError(f"--grid layers={worst}: model {folder} has {layers} decoder "
                            f"layers and at least one must stay; expected layers=0..{layers - 1}")


def calibration_rows(a: argparse.Namespace, tokenizer: Any) -> Any:
    """The first rows of the training split (what importance is scored on)."""
    from engine.workloads import data as datasets
    from engine.workloads import shards

    wanted = a.batch_size * CALIBRATION_BATCHES
    if a.data is not None:
        return shards.open_prepared(a.data).blocks("train", a.block_size)[:wanted]
    train_texts, _ = lm_texts(a)
    rows = datasets.pack_blocks(tokenizer, train_texts[:max(64, wanted * 4)], a.block_size)
    return rows[:wanted]


def _config(model: Any) -> dict[str, int]:
    cfg = model.config
    return {k: int(getattr(cfg, k)) for k in ("num_hidden_layers", "num_attention_heads",
                                              "num_key_value_heads", "intermediate_size")}


def _measure(loaded: Any, folder: Path, held: Any, a: argparse.Namespace,
             cand: Candidate, index: int, extra: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Save the candidate, load it back and measure it: (its row, the model
    loaded back)."""
    from engine.workloads.models import load_model, runtime, save_model

    saved = save_model(loaded, folder, {"compressed": {
        "method": "search", "candidate": cand.settings(), "source": str(a.model)}})
    back = load_model(saved)
    measures = measure_model(back.model, saved, held, a)
    return {"index": index, "label": cand.label, **cand.settings(),
            "reference": cand.is_reference, "format": back.format,
            **runtime(back.model),  # engine, dtype, attention: what was timed
            "config": _config(back.model), **extra, **measures}, back.model


def retime(rows: list[dict[str, Any]], models: list[Any], batch: Any, repeats: int) -> None:
    """TIMING_ROUNDS - 1 more latency rounds over every row's model, last
    row first; a faster median replaces a row's latency, p90 and tokens/s."""
    from engine.workloads import measure

    for _ in range(TIMING_ROUNDS - 1):
        for row, model in reversed(list(zip(rows, models, strict=True))):
            timed = measure.latency(model, batch, repeats=repeats)
            if row.get("latency_ms") is None or timed["latency_ms"] < row["latency_ms"]:
                row.update({k: finite_or_none(v) for k, v in timed.items()})


def _prune(model: Any, cand: Candidate, calibration: Any, a: argparse.Namespace,
           tokenizer: Any, held: Any, work: Path) -> tuple[Any, dict[str, Any]]:
    """The structured part of `cand` applied to a copy of `model`, then recovered."""
    try:
        from engine.workloads.structured import prune_structured
    except ImportError as exc:  # the structured pruning module is not installed
        raise WorkloadError(f"--grid {cand.label}: structured pruning is not available "
                            f"({exc}); search with int8=off,on alone") from None
    from engine.workloads.compress import recover
    from engine.workloads.evaluate import quality

    try:
        small, report = prune_structured(model, calibration, drop_layers=cand.layers,
                                         keep_heads=cand.heads, keep_channels=cand.channels,
                                         batch_size=a.batch_size,
                                         max_batches=CALIBRATION_BATCHES)
    except WorkloadError as err:  # it names --keep-heads ...: say which candidate asked
        raise WorkloadError(f"--grid candidate {cand.label}: {err}") from None
    extra: dict[str, Any] = {"pruning": {k: report.get(k) for k in (
        "layers_dropped", "kv_groups_kept", "channels_kept", "parameter_ratio")}}
    if a.recover_steps:
        extra["perplexity_before_recovery"] = finite_or_none(
            quality(small, held, a).get("perplexity"))
        teacher = model if getattr(a, "recover", "finetune") == "distill" else None
        log = MetricsLog(work / f"recover-{cand.label.replace(' ', '_')}.jsonl", None)
        try:
            extra["recovery_final_loss"] = finite_or_none(recover(small, a, log, tokenizer,
                                                                  teacher))
        finally:
            log.close()
    return small, extra


def run_search(a: argparse.Namespace) -> dict[str, Any]:
    """The search (see the module's doc); returns results.json's object."""
    from engine.workloads.compress import FORMAT_OF, comparison, load_source
    from engine.workloads.models import LoadedModel, quantize_int8

    started = time.time()
    loaded, threads = load_source(a)
    assert loaded.folder is not None
    if loaded.task != "causal-lm" or loaded.format != "fp32":
        raise WorkloadError(f"model {loaded.folder}: a {loaded.format} {loaded.task} model; "
                            "--search compresses fp32 causal-LM models: give the trained "
                            "model it came from")
    grid: Grid = a.grid
    check_grid(grid, int(loaded.model.config.num_hidden_layers), loaded.folder)
    check_data_fits(a, loaded)
    held = held_out(a, loaded.tokenizer, "causal-lm")
    calibration = calibration_rows(a, loaded.tokenizer) if any(
        c.structured for c in grid.candidates) else None
    a.output.mkdir(parents=True, exist_ok=True)
    work = a.output / WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    metrics = MetricsLog(metrics_path(a.output), a.output / "tensorboard")
    rows: list[dict[str, Any]] = []
    models: list[Any] = []  # each row's model as loaded back, for the later timing rounds
    try:
        # candidates with the same pruning share one pruned (and recovered) model
        shapes = list(dict.fromkeys((c.layers, c.heads, c.channels) for c in grid.candidates))
        for layers, heads, channels in shapes:
            base_cand = Candidate(layers, heads, channels)
            if base_cand.structured:
                fp32, extra = _prune(loaded.model, base_cand, calibration, a,
                                     loaded.tokenizer, held, work)
            else:
                fp32, extra = loaded.model, {}
            for cand in (c for c in grid.candidates
                         if (c.layers, c.heads, c.channels) == (layers, heads, channels)):
                model = quantize_int8(copy.deepcopy(fp32)) if cand.int8 else fp32
                fmt = FORMAT_OF["int8"] if cand.int8 else "fp32"
                one = LoadedModel(model, loaded.tokenizer, None, fmt, "causal-lm")
                row, back = _measure(one, work / f"c{len(rows)}", held, a, cand, len(rows),
                                     extra)
                rows.append(row)
                models.append(back)
                metrics.write({"step": row["index"], **{
                    k: v for k, v in row.items() if k in (*KEYS, "tokens_per_s", "parameters")
                    and isinstance(v, int | float)}})
                print(f"search {row['index'] + 1}/{len(grid.candidates)} {row['label']}: "
                      f"{compare.search_line(row)}", flush=True)
                del model, one
            del fp32
        retime(rows, models, held.timed, a.latency_repeats)
        del models
    finally:
        metrics.close()
    reference = rows[0]
    front = pareto.frontier(rows, KEYS)
    picked = choose(rows, front, 0, a.pick)
    for i, row in enumerate(rows):
        ppl, ref = row.get("perplexity"), reference.get("perplexity")
        row["perplexity_change"] = finite_or_none(ppl / ref - 1) \
            if isinstance(ppl, float) and isinstance(ref, float) and ref else None
        row["pareto"] = i in front
        row["picked"] = i == picked
    target = a.output / "model"
    if target.exists():
        shutil.rmtree(target)
    os.replace(work / f"c{picked}", target)
    shutil.rmtree(work, ignore_errors=True)
    measures = {k: v for k, v in reference.items() if k not in ("pareto", "picked")}
    results: dict[str, Any] = {
        "kind": "compress", "method": "search", "status": "ok",
        "source": str(loaded.folder.resolve()), "model": str(target.resolve()),
        "format": rows[picked]["format"], "task": "causal-lm",
        "grid": grid.to_json(),
        "pick": {"rule": a.pick.text, "row": picked, "label": rows[picked]["label"]},
        "keys": list(KEYS), "frontier": front, "rows": rows, "reference": measures,
        "before": measures, "after": rows[picked],
        **comparison(measures, rows[picked]),
        "recover_steps": a.recover_steps, "timing_rounds": TIMING_ROUNDS,
        "threads": threads, "batch_size": a.batch_size,
        "block_size": a.block_size, "eval_batches": a.eval_batches,
        "wall_s": round(time.time() - started, 2),
    }
    write_json_atomic(a.output / "results.json", results)
    return results


def main(a: argparse.Namespace) -> int:
    """compress --search: run, then print the table."""
    results = run_search(a)
    print(f"compress search: {results['source']} -> {results['model']} "
          f"({results['format']}); {len(results['rows'])} candidates in "
          f"{results['wall_s']:.0f} s, picked {results['pick']['label']} "
          f"({results['pick']['rule']})", flush=True)
    print(compare.render_search(results), end="", flush=True)
    return 0
