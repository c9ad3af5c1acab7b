"""Compression: make a trained model smaller or faster, and measure what that
cost, before and after, on the same held-out data.

    python -m engine.workloads.compress --model runs/pt --output runs/prune \\
        --method prune --sparsity 0.5 --recover-steps 50
    python -m engine.workloads.compress --model runs/pt --output runs/small \\
        --method structured --drop-layers 1 --keep-heads 0.5 --keep-channels 0.5 \\
        --recover-steps 50 --recover distill
    python -m engine.workloads.compress --model runs/pt --output runs/int8 --method int8
    python -m engine.workloads.compress --model runs/pt --output runs/half --method bf16
    horovodrun -np 2 --gloo python -m engine.workloads.compress --model runs/pt \\
        --output runs/student --method distill --student micro --max-steps 200

``--model`` is a model folder or the output folder of a train or compress job.
The methods:

- ``prune``: global unstructured magnitude pruning (L1) of the weights of
  every ``nn.Linear`` except the output head (``--include-lm-head`` prunes it
  too) to ``--sparsity``, made permanent, saved as fp32 with the zeros in it.
  ``--recover-steps N`` fine-tunes the pruned model for N AdamW steps at
  ``--lr`` on the training split, with the mask kept (pruned weights stay
  zero; ``--recover distill``: from the unpruned model, as structured).
  The zeros are stored: the file is no smaller and the model no faster
  (results.json says so: ``storage`` "dense" and a ``note``).
- ``structured``: a smaller dense model (`engine.workloads.structured`):
  the ``--drop-layers`` decoder layers whose output differs least from
  their input (angular distance), then per layer the ``--keep-heads`` share
  of key/value head groups and the ``--keep-channels`` share of MLP
  channels of highest measured importance, all measured on the held-out
  rows; the config is updated so ``from_pretrained`` loads it. With
  ``--recover-steps N``, N AdamW steps at ``--lr`` on the training split:
  ``--recover finetune`` the LM loss, ``distill`` the KL from the unpruned
  model (``--temperature``, ``--alpha``) as distill trains.
- ``int8``: q/k/v and gate/up fused into one Linear each, then dynamic int8
  quantization of every ``nn.Linear`` (weights int8, activations quantized
  on the fly; CPU only) on the kernel engine chosen for the CPU, saved as
  ``int8-fused`` (`engine.workloads.int8`).
- ``fp16`` / ``bf16``: the weights cast to half precision and saved so.
- ``distill``: a student built from the preset ``--student`` with the
  teacher's tokenizer, trained by `engine.workloads.train` against the
  teacher (``--model``) for ``--max-steps`` steps: ``--alpha`` weighs the
  soft (KL at ``--temperature``, times T^2) term, 1 - alpha the hard loss.
  It runs as one process or under ``horovodrun`` / ``torchrun`` like train;
  rank 0 measures and writes the results.

The held-out data is the split training used (``--corpus``,
``--eval-fraction``, ``--max-docs``, or ``--data DIR``, a prepare job's
output: its heldout/ split, and its train/ split for recovery and
distillation; see `engine.workloads.evaluate`), scored
on ``--eval-batches`` batches; latency is timed on one fixed batch of
``--batch-size`` x ``--block-size`` held-out tokens on the CPU.

What it writes under ``--output``:

- ``model/``: the compressed model (see `engine.workloads.models`);
- ``results.json``: ``kind`` "compress", ``method``, ``status`` "ok",
  ``source`` (the model folder compressed), ``before`` and ``after`` (the
  source, or teacher, and the saved model reloaded from disk), each with
  ``size_bytes`` (weight files), ``folder_bytes``, ``linear_weight_bytes``,
  ``parameters``, ``nonzero_parameters``, ``sparsity`` (prune: over the pruned
  layers; else over every parameter), ``latency_ms``, ``latency_p90_ms``,
  ``tokens_per_s``, ``eval_loss`` and ``perplexity`` (or ``accuracy`` for a
  classifier), and what ran the timed forward: ``engine`` (the quantized
  kernel engine, or "aten"), ``dtype``, ``attention`` and ``fused``
  (`engine.workloads.models.runtime`; ``before`` is the model as loaded,
  never fused, so the speedup is against fp32 as a user runs it); then
  ``size_ratio`` and ``linear_size_ratio`` (before /
  after bytes), ``speedup`` (before / after latency) and
  ``perplexity_change`` (after / before - 1). prune adds
  ``pruned_layers_sparsity`` (zeros over exactly the pruned weights of the
  saved model), ``perplexity_after_pruning`` and, with recovery,
  ``perplexity_after_recovery``, ``storage`` "dense" and ``note``;
  structured adds ``structured`` (the pruning report: layer scores, layers
  dropped, kv groups kept per layer, channels kept, parameters before and
  after, the new config's shape), ``recover``, ``recover_steps``,
  ``perplexity_after_pruning`` and, with recovery,
  ``perplexity_after_recovery`` and ``recovery_final_loss``; distill adds
  ``training``. A number that is
  not finite is written as null;
- ``tensorboard/``: event files; metrics lines go to the metrics file.

Exit codes: 0 done; 2 bad input (one ``error:`` line on stderr naming the
folder or option and the fix); 3 the recovery or distillation loss diverged
(the reason in results.json).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

from engine.workloads.common import (
    Diverged,
    MetricsLog,
    WorkloadError,
    finite_or_none,
    metrics_path,
    quiet_libraries,
    run_main,
    seed_everything,
    select_device,
    set_threads,
    write_json_atomic,
)
from engine.workloads.evaluate import (
    HeldOut,
    check_data_fits,
    describe,
    held_out,
    layer_zeros,
    lm_texts,
    match_labels,
    measure_model,
    quality,
)
from engine.workloads.options import PROGRAMS, compress_parser

#: The output heads pruning leaves alone unless --include-lm-head.
HEADS = ("lm_head", "score")
FORMAT_OF = {"prune": "fp32", "structured": "fp32", "int8": "int8-fused", "fp16": "fp16",
             "bf16": "bf16", "distill": "fp32"}


def parser(prog: str = PROGRAMS["compress"]) -> argparse.ArgumentParser:
    """The options (`engine.workloads.options`, where every range is checked)."""
    return compress_parser(prog, description=__doc__.split("\n\n")[0])


def _check_output(output: Path, source: Path) -> None:
    """Writing ``<output>/model`` must not replace the model read."""
    target = (output / "model").resolve()
    src = source.resolve()
    if target == src or src in target.parents or target in src.parents:
        raise WorkloadError(f"--output {output}: writing {target} would overwrite the model "
                            f"being compressed ({src}); choose another --output folder")


def _ratio(before: Any, after: Any) -> float | None:
    if not isinstance(before, int | float) or not isinstance(after, int | float) or not after:
        return None
    return finite_or_none(before / after)


def comparison(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The before/after ratios of results.json."""
    out: dict[str, Any] = {
        "size_ratio": _ratio(before.get("size_bytes"), after.get("size_bytes")),
        "linear_size_ratio": _ratio(before.get("linear_weight_bytes"),
                                    after.get("linear_weight_bytes")),
        "speedup": _ratio(before.get("latency_ms"), after.get("latency_ms")),
    }
    if "perplexity" in before:
        change = _ratio(after.get("perplexity"), before.get("perplexity"))
        out["perplexity_change"] = None if change is None else change - 1
    if "accuracy" in before:
        b, c = before.get("accuracy"), after.get("accuracy")
        out["accuracy_change"] = None if b is None or c is None else c - b
    return out


# ---------------------------------------------------------------- pruning
def prunable_layers(model: Any, include_head: bool) -> list[str]:
    """Names of the nn.Linear modules pruning touches."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and (include_head or name.rsplit(".", 1)[-1] not in HEADS)]


def prune_global(model: Any, names: list[str], sparsity: float) -> None:
    """Global L1 magnitude pruning of the named layers' weights; the mask
    stays attached (as a parametrization) until `make_permanent`."""
    import torch.nn.utils.prune as prune

    modules = dict(model.named_modules())
    prune.global_unstructured([(modules[n], "weight") for n in names],
                              pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(model: Any, names: list[str]) -> None:
    import torch.nn.utils.prune as prune

    modules = dict(model.named_modules())
    for name in names:
        prune.remove(modules[name], "weight")


def recover(model: Any, a: argparse.Namespace, metrics: MetricsLog, tokenizer: Any,
            teacher: Any = None) -> float:
    """Train the pruned model for ``--recover-steps`` AdamW steps at ``--lr``
    on the training split. prune: the model is still masked, so the pruned
    weights stay zero (the mask is applied on every forward pass). With a
    `teacher` (structured --recover distill) the loss is train's
    distillation loss: ``--alpha`` x KL(teacher || model) at
    ``--temperature`` (times T^2, per token) + (1 - alpha) x the LM loss.
    Returns the last training loss."""
    import torch
    import torch.nn.functional as F

    from engine.workloads import data as datasets
    from engine.workloads import shards

    blocks: Any
    if a.data is not None:  # rows read from the memory maps as batches ask
        blocks = shards.open_prepared(a.data).blocks("train", a.block_size)
    else:
        train_texts, _ = lm_texts(a)
        blocks = datasets.pack_blocks(tokenizer, train_texts, a.block_size)
    device = select_device(a.device)
    model.to(device)
    model.train()
    if teacher is not None:
        teacher.to(device)
        teacher.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    order: list[int] = []
    loss_value = float("nan")
    for step in range(1, a.recover_steps + 1):
        if len(order) < min(a.batch_size, len(blocks)):
            order = torch.randperm(len(blocks), generator=g).tolist()
        idx, order = order[:a.batch_size], order[a.batch_size:]
        batch = blocks[idx].to(device)
        out = model(input_ids=batch, labels=batch)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(input_ids=batch).logits
            temp = a.temperature
            soft = F.kl_div(F.log_softmax(out.logits / temp, -1),
                            F.log_softmax(t_logits / temp, -1), log_target=True,
                            reduction="batchmean") * temp * temp / out.logits.shape[1]
            loss = a.alpha * soft + (1 - a.alpha) * loss
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise Diverged(f"recovery loss became {loss_value} at step {step}; lower --lr")
        opt.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        if step % a.log_every == 0 or step == a.recover_steps:
            metrics.write({"step": step, "loss": loss_value, "lr": a.lr,
                           "grad_norm": grad_norm, "phase": "recover"})
    model.to("cpu")
    model.eval()
    if teacher is not None:
        teacher.to("cpu")
    return loss_value


# ---------------------------------------------------------------- structured pruning
#: What results.json says of unstructured pruning: the zeros are stored.
DENSE_NOTE = {"storage": "dense",
              "note": "zeros stored dense: the file is not smaller and the model is not faster"}


def check_structured(a: argparse.Namespace, model: Any) -> None:
    """--method structured: something to remove, and a request the model
    can meet (checked before anything is measured)."""
    from engine.workloads.structured import check_request

    if not a.drop_layers and a.keep_heads == 1 and a.keep_channels == 1:
        raise WorkloadError("--method structured: nothing to remove; give --drop-layers K, "
                            "--keep-heads R or --keep-channels R (R < 1)")
    check_request(model, a.drop_layers, a.keep_heads, a.keep_channels)


def structured(model: Any, held: HeldOut, a: argparse.Namespace, metrics: MetricsLog,
               tokenizer: Any, extra: dict[str, Any]) -> Any:
    """Structured pruning (`engine.workloads.structured`), importance measured
    on the first rows of the training split, as --search does (never the
    held-out rows the result is scored on, which would fit its own test set;
    a classifier: its held-out examples, padding included), then the perplexity after
    pruning and, with --recover-steps, recovery (distill: from `model`, the
    unpruned original, left as it was). Fills `extra`; returns the pruned
    model."""
    from engine.workloads.search import calibration_rows
    from engine.workloads.structured import prune_structured

    model = model.float()
    rows = calibration_rows(a, tokenizer) if held.task == "causal-lm" else held.ids
    pruned, report = prune_structured(model, rows, drop_layers=a.drop_layers,
                                      keep_heads=a.keep_heads, keep_channels=a.keep_channels,
                                      batch_size=a.batch_size, max_batches=a.eval_batches)
    extra["structured"] = report
    after_pruning = quality(pruned, held, a)
    extra["perplexity_after_pruning"] = after_pruning.get("perplexity")
    extra["accuracy_after_pruning"] = after_pruning.get("accuracy")
    if a.recover_steps:
        teacher = model if a.recover == "distill" else None
        extra["recovery_final_loss"] = recover(pruned, a, metrics, tokenizer, teacher)
    return pruned


# ---------------------------------------------------------------- the passes
def load_source(a: argparse.Namespace) -> tuple[Any, int]:
    """Seed, one thread, and the model of ``--model`` loaded (its ``--output``
    checked not to overwrite it): (the LoadedModel, the thread count)."""
    from engine.workloads.models import load_model, model_folder

    seed_everything(a.seed)
    threads = set_threads(1)
    source = model_folder(a.model)
    _check_output(a.output, source)
    return load_model(source), threads


def compress(a: argparse.Namespace) -> dict[str, Any]:
    """prune, structured, int8, fp16, bf16: load, measure, compress, save,
    reload, measure."""
    import torch

    from engine.workloads.models import load_model, runtime, save_model

    started = time.time()
    loaded, threads = load_source(a)
    assert loaded.folder is not None
    if loaded.format.startswith("int8"):
        raise WorkloadError(f"model {loaded.folder}: already int8; compress the fp32 model "
                            "it came from instead")
    if a.method == "structured":
        check_structured(a, loaded.model)
    if a.method in ("prune", "structured") and a.recover_steps and loaded.task != "causal-lm":
        raise WorkloadError(f"--recover-steps: recovery fine-tunes causal-LM models only and "
                            f"{loaded.folder} is a classifier; prune with --recover-steps 0, "
                            "then fine-tune it with train --task classification")
    check_data_fits(a, loaded)
    held = held_out(a, loaded.tokenizer, loaded.task)
    if loaded.task == "classification":
        match_labels(loaded, held)
    a.output.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(metrics_path(a.output), a.output / "tensorboard")
    extra: dict[str, Any] = {}
    layers: list[str] | None = None
    try:
        if a.method == "prune":
            layers = prunable_layers(loaded.model, a.include_lm_head)
            if not layers:
                raise WorkloadError(f"model {loaded.folder}: no nn.Linear layers to prune")
        before = measure_model(loaded.model, loaded.folder, held, a, layers)
        before.update(runtime(loaded.model))  # engine, dtype, attention: what was timed
        model = loaded.model
        if a.method == "prune":
            assert layers is not None
            model = model.float()
            teacher = copy.deepcopy(model) if a.recover_steps and a.recover == "distill" \
                else None  # the unpruned model, before pruning changes it in place
            prune_global(model, layers, a.sparsity)
            pruned = quality(model, held, a)
            extra["perplexity_after_pruning"] = pruned.get("perplexity")
            extra["accuracy_after_pruning"] = pruned.get("accuracy")
            if a.recover_steps:
                extra["recovery_final_loss"] = finite_or_none(recover(model, a, metrics,
                                                                      loaded.tokenizer, teacher))
                del teacher
            make_permanent(model, layers)
        elif a.method == "structured":
            model = structured(model, held, a, metrics, loaded.tokenizer, extra)
        elif a.method == "int8":
            from engine.workloads.models import quantize_int8

            model = quantize_int8(model)
        elif a.method in ("fp16", "bf16"):
            model = model.to(torch.float16 if a.method == "fp16" else torch.bfloat16)
        loaded.model = model
        loaded.format = FORMAT_OF[a.method]
        saved = save_model(loaded, a.output / "model",
                           {"compressed": {"method": a.method, "source": str(loaded.folder)}})
        reloaded = load_model(saved)
        after = measure_model(reloaded.model, saved, held, a, layers)
        after.update(runtime(reloaded.model))
        results: dict[str, Any] = {
            "kind": "compress", "method": a.method, "status": "ok",
            "source": str(loaded.folder.resolve()), "model": str(saved.resolve()),
            "format": loaded.format, "task": loaded.task,
            "before": before, "after": after, **comparison(before, after),
        }
        if a.method == "prune":
            assert layers is not None
            zeros, total = layer_zeros(reloaded.model, layers)
            results.update({
                "sparsity_target": a.sparsity, "include_lm_head": a.include_lm_head,
                "pruned_layers": len(layers), "pruned_parameters": total,
                "pruned_layers_sparsity": zeros / total if total else None,
                "recover_steps": a.recover_steps, "recover": a.recover,
                **{k: finite_or_none(v) for k, v in extra.items() if v is not None},
            })
            results.update(DENSE_NOTE)
            if a.recover_steps:
                results["perplexity_after_recovery"] = after.get("perplexity")
        elif a.method == "structured":
            results.update({"structured": extra.pop("structured"), "recover": a.recover,
                            "recover_steps": a.recover_steps,
                            **{k: finite_or_none(v) for k, v in extra.items() if v is not None}})
            if a.recover_steps:
                results["perplexity_after_recovery"] = after.get("perplexity")
        results.update({"threads": threads, "wall_s": round(time.time() - started, 2)})
        write_metrics(metrics, results,
                      a.recover_steps if a.method in ("prune", "structured") else 0)
    except Diverged as exc:
        write_json_atomic(a.output / "results.json", {
            "kind": "compress", "method": a.method, "status": "diverged", "reason": str(exc),
            "source": str(loaded.folder.resolve()), "wall_s": round(time.time() - started, 2)})
        raise
    finally:
        metrics.close()
    write_json_atomic(a.output / "results.json", results)
    return results


def write_metrics(metrics: MetricsLog, results: dict[str, Any], step: int) -> None:
    """One metrics line: before_*/after_* numbers and the ratios."""
    record: dict[str, Any] = {"step": step}
    for side in ("before", "after"):
        for key, value in results[side].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[f"{side}_{key}"] = value
    for key in ("size_ratio", "linear_size_ratio", "speedup", "perplexity_change",
                "accuracy_change", "pruned_layers_sparsity"):
        if isinstance(results.get(key), int | float):
            record[key] = results[key]
    metrics.write(record)


def _rank(dist_mode: str) -> int:
    import os

    from engine.workloads.distributed import detect

    mode = detect(dist_mode)
    var = {"horovod": "HOROVOD_RANK", "ddp": "RANK"}.get(mode)
    value = os.environ.get(var, "0") if var else "0"
    return int(value) if value.isdigit() else 0


def distill(a: argparse.Namespace) -> dict[str, Any] | None:
    """Train a student against the teacher with `train.run_training`; rank 0
    then measures both. Returns the results on rank 0, None elsewhere."""
    from engine.workloads import train
    from engine.workloads.models import load_model, model_folder

    started = time.time()
    teacher_folder = model_folder(a.model)
    _check_output(a.output, teacher_folder)
    argv = ["--output", str(a.output), "--model", a.student,
            "--tokenizer", str(teacher_folder), "--teacher", str(teacher_folder),
            "--temperature", repr(a.temperature), "--alpha", repr(a.alpha),
            "--max-steps", str(a.max_steps), "--lr", repr(a.lr),
            "--warmup-steps", str(a.warmup_steps),
            *(["--data", str(a.data)] if a.data is not None else ["--corpus", a.corpus]),
            "--block-size", str(a.block_size), "--eval-fraction", repr(a.eval_fraction),
            "--max-docs", str(a.max_docs), "--batch-size", str(a.batch_size),
            "--eval-batches", str(a.eval_batches), "--eval-every", str(a.max_steps),
            "--log-every", str(a.log_every), "--checkpoint-every", str(a.checkpoint_every),
            "--seed", str(a.seed), "--dist", a.dist, "--device", a.device]
    if a.resume:
        argv.append("--resume")
    outcome = train.run_training(train.parser().parse_args(argv), kind="distill")
    if _rank(a.dist) != 0:
        return None
    teacher = load_model(teacher_folder)
    assert teacher.folder is not None
    held: HeldOut = held_out(a, teacher.tokenizer, "causal-lm")
    before = measure_model(teacher.model, teacher.folder, held, a)
    student_folder = a.output / "model"
    student = load_model(student_folder)
    after = measure_model(student.model, student_folder, held, a)
    training = {k: outcome.results.get(k) for k in (
        "steps", "final_loss", "eval_loss", "perplexity", "tokens_per_s", "world_size",
        "dist", "device", "wall_s")}
    results: dict[str, Any] = {
        "kind": "compress", "method": "distill", "status": "ok",
        "source": str(teacher.folder.resolve()), "model": str(student_folder.resolve()),
        "format": "fp32", "task": "causal-lm", "teacher": str(teacher.folder.resolve()),
        "student": a.student, "temperature": a.temperature, "alpha": a.alpha,
        "training": training, "before": before, "after": after, **comparison(before, after),
        "wall_s": round(time.time() - started, 2),
    }
    metrics = MetricsLog(metrics_path(a.output), a.output / "tensorboard")
    try:
        write_metrics(metrics, results, int(training.get("steps") or a.max_steps))
    finally:
        metrics.close()
    write_json_atomic(a.output / "results.json", results)
    return results


def summary(r: dict[str, Any]) -> str:
    """A few lines for people reading the job log."""
    names = ("teacher", "student") if r["method"] == "distill" else ("before", "after")

    def x(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = [f"compress {r['method']}: {r['source']} -> {r['model']} ({r['format']})",
             f"  {names[0]}: {describe(r['before'])}",
             f"  {names[1]}: {describe(r['after'])}",
             f"  weights {x(r.get('size_ratio'))} smaller (Linear layers "
             f"{x(r.get('linear_size_ratio'))}), {x(r.get('speedup'))} faster"]
    change = r.get("perplexity_change")
    if change is not None:
        lines[-1] += f", perplexity {change:+.1%}"
    if r.get("accuracy_change") is not None:
        lines[-1] += f", accuracy {r['accuracy_change']:+.3f}"
    st = r.get("structured")
    if st:
        cfg = st["config"]
        lines.append(f"  structured: layers {st['layers_before']} -> {cfg['num_hidden_layers']} "
                     f"(dropped {st['layers_dropped']}), kv groups {st['kv_groups_before']} -> "
                     f"{cfg['num_key_value_heads']}, MLP channels {st['channels_before']} -> "
                     f"{cfg['intermediate_size']}; parameters {st['parameters_before']:,} -> "
                     f"{st['parameters_after']:,}")
        for key in ("perplexity_after_pruning", "perplexity_after_recovery"):
            if r.get(key) is not None:
                lines.append(f"  {key.replace('_', ' ')}: {r[key]:.4g}")
    if r.get("pruned_layers_sparsity") is not None:
        lines.append(f"  pruned layers: {r['pruned_layers_sparsity']:.1%} zeros over "
                     f"{r['pruned_parameters']:,} weights in {r['pruned_layers']} layers")
    if r.get("storage") == "dense" and r.get("note"):
        lines.append(f"  note: {r['note']}")
    return "\n".join(lines)


def main() -> int:
    quiet_libraries()
    a = parser().parse_args()
    from engine.workloads.models import model_folder

    # before torch's import: a wrong folder costs a fraction of a second, not 5 s
    _check_output(a.output, model_folder(a.model))
    if a.search:  # the grid of compressions and its frontier (it imports this module)
        from engine.workloads import search
        return search.main(a)
    results = distill(a) if a.method == "distill" else compress(a)
    if results is not None:
        print(summary(results), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
