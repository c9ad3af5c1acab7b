"""Evaluation: how good, how big and how fast a model is, measured the same
way for every model, and an optional table comparing finished jobs.

    python -m engine.workloads.evaluate --model runs/int8 --output runs/eval
    python -m engine.workloads.evaluate --model runs/int8 --output runs/eval \\
        --compare runs/pretrain runs/prune runs/int8
    python -m engine.workloads.evaluate --output runs/table --compare runs/a runs/b

``--model`` is a model folder or the output folder of a train or compress job.
The held-out part of ``--corpus`` is the one training used (a hash of each
document, `engine.workloads.data.split_indices`, with the same
``--eval-fraction`` and ``--max-docs``). A causal LM is scored on the first
``--eval-batches`` batches of ``--block-size`` token blocks of that part
(``eval_loss``, ``perplexity``); with ``--data DIR`` (a prepare job's output)
those blocks are the first of DIR's heldout/ split, read from its memory
maps, and the model must embed every id of DIR's tokenizer. A classifier
(``--task classification``, or a model saved as one) is scored on every
held-out labelled example (``eval_loss``, ``accuracy``). Latency is the
median (and p90) forward time of one fixed batch of ``--batch-size``
held-out rows on the CPU with the process's torch threads; ``tokens_per_s``
follows from the median. Everything runs on the CPU so that fp32, fp16, bf16
and int8 models are timed alike.

What it writes under ``--output``:

- ``results.json``: ``kind`` "eval", ``status`` "ok", the model folder, its
  ``format`` and ``task``, ``size_bytes`` (weight files), ``folder_bytes``,
  ``linear_weight_bytes``, ``parameters``, ``nonzero_parameters``,
  ``sparsity``, ``latency_ms``, ``latency_p90_ms``, ``tokens_per_s``,
  ``eval_loss`` and ``perplexity`` or ``accuracy``; a number that is not
  finite is written as null;
- with ``--compare DIR ...``: ``comparison.md`` and ``comparison.json``, one
  row per folder (each a job output folder or a results.json) plus this
  run's own, also printed to stdout (see `engine.workloads.compare`). Without
  ``--model`` only the comparison is made, and results.json holds it.

Metrics lines go to the metrics file and ``<output>/tensorboard``.
Exit codes: 0 done; 2 bad input (one ``error:`` line on stderr naming the
folder or option and the fix).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.workloads import compare, shards
from engine.workloads import data as datasets
from engine.workloads.common import (
    MetricsLog,
    WorkloadError,
    finite_or_none,
    metrics_path,
    quiet_libraries,
    run_main,
    seed_everything,
    set_threads,
    write_json_atomic,
)
from engine.workloads.options import PROGRAMS, evaluate_parser


# ---------------------------------------------------------------- held-out data
@dataclass
class HeldOut:
    """What a model is scored and timed on."""

    task: str
    timed: Any                    # (batch_size, block_size) token ids
    blocks: Any = None            # causal LM: (rows, block_size)
    ids: Any = None               # classification: token ids, mask, label indices
    mask: Any = None
    labels: Any = None
    label_names: tuple[str, ...] = ()


def _timed_batch(rows: Any, batch_size: int) -> Any:
    import torch

    return rows[torch.arange(batch_size) % len(rows)].clone()


def lm_texts(a: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents) of ``--corpus``."""
    texts = datasets.load_texts(a.corpus)
    if a.max_docs:
        texts = texts[:a.max_docs]
    train_i, held_i = datasets.split_indices(texts, a.eval_fraction)
    return [texts[i] for i in train_i], [texts[i] for i in held_i]


def check_data_fits(a: argparse.Namespace, loaded: Any) -> None:
    """With --data: the model embeds every id and shares the tokenizer."""
    if a.data is None:
        return
    prepared = shards.open_prepared(a.data)
    shards.check_model_vocab(prepared, loaded.model.config.vocab_size,
                             f"model {loaded.folder}")
    if loaded.tokenizer is not None:
        shards.check_tokenizer(prepared, loaded.tokenizer, f"the tokenizer of {loaded.folder}",
                               "score the model on the data it was trained on, or prepare "
                               f"this data with its tokenizer (prepare --tokenizer "
                               f"{loaded.folder})")


def held_out(a: argparse.Namespace, tokenizer: Any, task: str) -> HeldOut:
    """The held-out split of ``--corpus`` for `task`, tokenized, or the
    first held-out blocks of ``--data``."""
    import torch

    if a.data is not None:
        if task != "causal-lm":
            raise WorkloadError(f"--data: prepared data is token ids for causal-lm models, "
                                f"this one is {task}; score a classifier with --corpus")
        if a.max_docs:
            raise WorkloadError("--max-docs cuts a --corpus; with --data, leave it out")
        prepared = shards.open_prepared(a.data)
        rows = prepared.blocks("heldout", a.block_size)[:a.eval_batches * a.batch_size]
        return HeldOut(task, _timed_batch(rows, a.batch_size), blocks=rows)
    if task == "classification":
        lab = datasets.load_labelled(a.corpus)
        texts, labels = lab.texts, lab.labels
        if a.max_docs:
            texts, labels = texts[:a.max_docs], labels[:a.max_docs]
        _, held_i = datasets.split_indices(texts, a.eval_fraction)
        ids, mask = datasets.encode_labelled(tokenizer, [texts[i] for i in held_i], a.block_size)
        y = torch.tensor([labels[i] for i in held_i], dtype=torch.long)
        return HeldOut(task, _timed_batch(ids, a.batch_size), ids=ids, mask=mask, labels=y,
                       label_names=tuple(lab.names))
    _, held = lm_texts(a)
    blocks = datasets.pack_blocks(tokenizer, held, a.block_size)
    blocks = blocks[:a.eval_batches * a.batch_size]
    return HeldOut(task, _timed_batch(blocks, a.batch_size), blocks=blocks)


def match_labels(loaded: Any, held: HeldOut) -> None:
    """Map the data's label indices onto the classifier's own."""
    import torch

    names = list(held.label_names)
    model_names = list(loaded.labels) or [
        str(v) for _, v in sorted(getattr(loaded.model.config, "id2label", {}).items())]
    if model_names and names != model_names:
        missing = sorted(set(names) - set(model_names))
        if missing:
            raise WorkloadError(f"model {loaded.folder}: the data has labels {missing} the "
                                f"classifier does not know (it has {model_names}); evaluate "
                                "on the labelled data it was trained on")
        index = {n: i for i, n in enumerate(model_names)}
        held.labels = torch.tensor([index[names[int(i)]] for i in held.labels],
                                   dtype=torch.long)
    elif not model_names and loaded.model.config.num_labels != len(names):
        raise WorkloadError(f"model {loaded.folder}: {loaded.model.config.num_labels} labels, "
                            f"the data has {len(names)}; evaluate on the data it was trained on")


# ---------------------------------------------------------------- measuring
def _quantized(module: Any) -> bool:
    return module.__class__.__module__.startswith("torch.ao.nn.quantized")


def layer_zeros(model: Any, names: list[str]) -> tuple[int, int]:
    """(zero weights, weights) over the named Linear layers (float or int8)."""
    import torch

    modules = dict(model.named_modules())
    zeros = total = 0
    for name in names:
        module = modules.get(name)
        if module is None:
            raise WorkloadError(f"layer {name} is not in the model")
        weight = module.weight() if _quantized(module) else module.weight
        values = weight.int_repr() if weight.is_quantized else weight
        total += values.numel()
        zeros += values.numel() - int(torch.count_nonzero(values))
    return zeros, total


def measure_model(model: Any, folder: Path | None, held: HeldOut, a: argparse.Namespace,
                  layers: list[str] | None = None) -> dict[str, Any]:
    """Size, parameter counts, quality and CPU latency of `model` (whose
    files are in `folder`, if saved). `layers`: sparsity over these Linear
    layers only (else over every parameter)."""
    from engine.workloads import measure

    model = model.to("cpu")
    model.eval()
    out: dict[str, Any] = {}
    if folder is not None:
        out["size_bytes"] = measure.weight_bytes(folder)
        out["folder_bytes"] = measure.folder_bytes(folder)
    out["linear_weight_bytes"] = measure.linear_weight_bytes(model)
    counts = measure.parameter_counts(model)
    out.update(counts)
    if layers:
        zeros, total = layer_zeros(model, layers)
        out["sparsity"] = zeros / total if total else 0.0
    else:
        out["sparsity"] = 1 - counts["nonzero_parameters"] / max(1, counts["parameters"])
    out.update(quality(model, held, a))
    out.update(measure.latency(model, held.timed, repeats=a.latency_repeats))
    return {k: finite_or_none(v) if isinstance(v, float) else v for k, v in out.items()}


def quality(model: Any, held: HeldOut, a: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss and perplexity (causal LM) or accuracy (classifier), on
    the CPU."""
    from engine.workloads import measure

    out: dict[str, Any] = {}
    if held.task == "classification":
        loss_sum, correct, count = measure.classification_sums(
            model, held.ids, held.mask, held.labels, a.batch_size, "cpu")
        out["eval_loss"] = loss_sum / max(1, count)
        out["accuracy"] = correct / max(1, count)
        out["eval_examples"] = count
    else:
        loss_sum, count = measure.lm_loss_sums(model, held.blocks, a.batch_size, "cpu",
                                               a.eval_batches)
        out["eval_loss"] = loss_sum / max(1, count)
        out["perplexity"] = measure.perplexity(out["eval_loss"])
        out["eval_tokens"] = count
    return out


def describe(m: dict[str, Any]) -> str:
    """One line: size, latency and quality of a `measure_model` result."""
    parts = [f"{m.get('parameters', 0):,} parameters"]
    if m.get("size_bytes") is not None:
        parts.append(f"{m['size_bytes'] / 1e6:.2f} MB")
    if m.get("latency_ms") is not None:
        parts.append(f"{m['latency_ms']:.1f} ms/batch")
    for key in ("perplexity", "accuracy"):
        if key in m:
            parts.append(f"{key} {_num(m[key])}")
    return ", ".join(parts)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- the program
def parser(prog: str = PROGRAMS["evaluate"]) -> argparse.ArgumentParser:
    """The options (`engine.workloads.options`, where every range is checked)."""
    return evaluate_parser(prog, description=__doc__.split("\n\n")[0])


def evaluate_model(a: argparse.Namespace) -> dict[str, Any]:
    from engine.workloads.models import load_model

    loaded = load_model(a.model)
    if a.task != "auto" and a.task != loaded.task:
        raise WorkloadError(f"model {loaded.folder}: saved as a {loaded.task} model, not "
                            f"{a.task}; leave --task out (or fine-tune it with train "
                            f"--task {a.task} first)")
    check_data_fits(a, loaded)
    held = held_out(a, loaded.tokenizer, loaded.task)
    if loaded.task == "classification":
        match_labels(loaded, held)
    assert loaded.folder is not None
    m = measure_model(loaded.model, loaded.folder, held, a)
    source = {"data": str(Path(a.data).resolve())} if a.data is not None else \
        {"corpus": a.corpus}
    return {"kind": "eval", "status": "ok", "task": loaded.task, "format": loaded.format,
            "model": str(loaded.folder.resolve()), **source,
            "block_size": a.block_size, "batch_size": a.batch_size, **m}


def main() -> int:
    quiet_libraries()
    a = parser().parse_args()
    if not a.model and not a.compare:
        raise WorkloadError("nothing to do: give --model (a model to evaluate), --compare "
                            "(job output folders to tabulate), or both")
    started = time.time()
    others = compare.load_results(a.compare) if a.compare else []  # fail before measuring
    seed_everything(a.seed)
    threads = set_threads(1)
    a.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"kind": "eval", "status": "ok"}
    if a.model:
        results = evaluate_model(a)
        results["threads"] = threads
        results["wall_s"] = round(time.time() - started, 2)
        metrics = MetricsLog(metrics_path(a.output), a.output / "tensorboard")
        metrics.write({"step": 0, **{k: v for k, v in results.items()
                                     if isinstance(v, int | float) and not isinstance(v, bool)}})
        metrics.close()
        print(f"eval {results['model']} ({results['format']}, {results['task']}): "
              f"{describe(results)}", flush=True)
    else:
        results["mode"] = "compare-only"
    if a.compare:
        rows = list(others)
        if a.model:
            own = compare.row_from_results(a.output.resolve().name,
                                           a.output / "results.json", results)
            rows = [r for r in rows if r.path != own.path] + [own]
        table = compare.render_table(rows)
        compare.write_text_atomic(a.output / "comparison.md", table)
        write_json_atomic(a.output / "comparison.json", compare.to_json(rows))
        results["comparison"] = [r.name for r in rows]
        print(table, end="", flush=True)
    write_json_atomic(a.output / "results.json", results)
    return 0


if __name__ == "__main__":
    run_main(main)
