"""Training: causal-LM pre-training from a preset config, fine-tuning from a
local model folder, and sequence-classification fine-tuning; one process,
``horovodrun`` or ``torchrun``.

    python -m engine.workloads.train --output runs/pt --model tiny --max-steps 200
    horovodrun -np 2 --gloo python -m engine.workloads.train --output runs/pt ...
    torchrun --standalone --nproc-per-node 2 -m engine.workloads.train --output runs/pt ...

What it writes under ``--output`` (rank 0 only):

- ``checkpoints/step-NNNNNN/``: the model plus ``trainer.pt`` (optimizer,
  schedule, position in the data, every rank's random state), written to a
  temporary folder and renamed, the newest ``--keep-checkpoints`` kept;
- ``model/``: the final model and tokenizer (see `engine.workloads.models`);
- ``tokenizer/``: the tokenizer trained on the corpus, when one was trained;
- ``results.json``: status, steps, final and held-out loss, perplexity,
  throughput; for a run that diverged, the reason;
- ``tensorboard/``: event files; metrics lines go to the metrics file.

``--data DIR`` trains on a prepare job's output (`engine.workloads.shards`)
instead of ``--corpus``: its tokenizer, rows of its train/ split read from
memory maps as the batches ask for them (no rank loads the dataset), its
heldout/ split for evaluation. results.json's ``startup`` says what the first
step cost (seconds since the process started, RSS, data tokens read).

``--resume`` continues from the newest checkpoint (or starts at step 0 when
there is none yet) with the same data order and random state, so a resumed
run ends where an uninterrupted one would. ``--resume-from DIR`` names the
checkpoint. SIGTERM or SIGINT makes every rank stop after the current step;
rank 0 saves a checkpoint first, so a cancelled job resumes where it stopped.

A loss guard restart (`engine.guard`) sets LLMCONSOLE_LR_SCALE (the peak
learning rate is multiplied by it, also over a checkpoint's saved schedule)
and LLMCONSOLE_RESUME_AT_OR_BEFORE=STEP (resume from the newest checkpoint at
or before STEP, as if --resume were given; the newer ones, written by the
attempt that diverged, are renamed ``discarded-step-NNNNNN`` so that no later
--resume picks them).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from engine.workloads import data as datasets
from engine.workloads import shards
from engine.workloads.common import (
    Diverged,
    MetricsLog,
    WorkloadError,
    finite_or_none,
    metrics_path,
    no_space,
    quiet_libraries,
    run_main,
    seed_everything,
    select_device,
    set_threads,
    write_json_atomic,
)
from engine.workloads.distributed import Dist
from engine.workloads.measure import classification_sums, lm_loss_sums, perplexity
from engine.workloads.models import (
    PRESETS,
    LoadedModel,
    build_config,
    build_model,
    load_model,
    model_folder,
)
from engine.workloads.options import PROGRAMS, train_parser

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer.pt"


def parser(prog: str = PROGRAMS["train"]) -> argparse.ArgumentParser:
    """The options (`engine.workloads.options`, where every range is checked)."""
    return train_parser(prog, description=__doc__.split("\n\n")[0])


def check_args(a: argparse.Namespace) -> None:
    """What one option alone cannot say (ranges are the parser's types)."""
    if a.teacher and a.task != "causal-lm":
        raise WorkloadError("--teacher: distillation is for --task causal-lm")
    if a.data is not None and a.task != "causal-lm":
        raise WorkloadError("--data: prepared data is token ids for --task causal-lm; give a "
                            "classifier its labelled JSONL with --corpus")
    if a.data is not None and a.max_docs:
        raise WorkloadError("--max-docs cuts a --corpus; with --data, prepare a smaller folder "
                            "(or leave --max-docs out)")


def check_paths(a: argparse.Namespace) -> None:
    """The errors a missing --model, --resume-from or --data folder gives
    later, raised at once with the same words (they need no torch, and a
    run's start-up is seconds of imports)."""
    if a.model not in PRESETS:
        model_folder(a.model)
    if a.resume_from is not None:
        check_checkpoint_folder(a.resume_from)
    if a.data is not None:
        shards.open_prepared(a.data)


# ---------------------------------------------------------------- data
@dataclass
class Batches:
    """Training rows and held-out rows; `fields` name the tensors per row."""

    train: dict[str, Any]
    held: dict[str, Any]

    @property
    def rows(self) -> int:
        return len(next(iter(self.train.values())))


def _tokenizer_for(a: argparse.Namespace, texts: Callable[[], list[str]], dist: Dist,
                   prepared: shards.Prepared | None = None) -> Any:
    """The tokenizer: --data's (a --tokenizer must agree with it), else
    --tokenizer, else the model folder's, else trained on the corpus by
    rank 0 and shared through ``<output>/tokenizer``."""
    if prepared is not None:
        tok = shards.load_data_tokenizer(prepared)
        if a.tokenizer:
            shards.check_tokenizer(prepared, datasets.load_tokenizer(a.tokenizer),
                                   f"--tokenizer {a.tokenizer}")
        return tok
    if a.tokenizer:
        return datasets.load_tokenizer(a.tokenizer)
    if a.model not in PRESETS:
        return None  # comes with the model
    folder = a.output / "tokenizer"
    if dist.is_main and not (folder / "tokenizer.json").exists():
        tok = datasets.train_tokenizer(texts(), a.vocab_size)
        tmp = folder.with_name(f".tokenizer.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    dist.barrier()
    return datasets.load_tokenizer(folder)


def load_data(a: argparse.Namespace, tokenizer: Any,
              prepared: shards.Prepared | None = None) -> Batches:
    """The rows to train on and the held-out rows. From --data, training
    rows are read from the memory maps as batches ask for them; only the
    held-out rows evaluation scores (--eval-batches x --batch-size) are
    read up front."""
    import torch

    if prepared is not None:
        train = prepared.blocks("train", a.block_size)
        held = prepared.blocks("heldout", a.block_size)
        return Batches({"input_ids": train},
                       {"input_ids": held[:a.eval_batches * a.batch_size]})
    if a.task == "classification":
        lab = datasets.load_labelled(a.corpus)
        texts, labels = lab.texts, lab.labels
        if a.max_docs:
            texts, labels = texts[:a.max_docs], labels[:a.max_docs]
        train_i, held_i = datasets.split_indices(texts, a.eval_fraction)

        def encode(idx: list[int]) -> dict[str, Any]:
            ids, mask = datasets.encode_labelled(tokenizer, [texts[i] for i in idx], a.block_size)
            return {"input_ids": ids, "attention_mask": mask,
                    "labels": torch.tensor([labels[i] for i in idx], dtype=torch.long)}

        return Batches(encode(train_i), encode(held_i))
    texts = datasets.load_texts(a.corpus)
    if a.max_docs:
        texts = texts[:a.max_docs]
    train_i, held_i = datasets.split_indices(texts, a.eval_fraction)
    train = datasets.pack_blocks(tokenizer, [texts[i] for i in train_i], a.block_size)
    held = datasets.pack_blocks(tokenizer, [texts[i] for i in held_i], a.block_size)
    return Batches({"input_ids": train}, {"input_ids": held})


class EpochOrder(Sequence[list[int]]):
    """One rank's micro-batches of one epoch, read off the epoch's
    permutation as they are asked for: the permutation is the one tensor
    kept (4 bytes a row), never a Python list of every row."""

    def __init__(self, perm: Any, rank: int, size: int, batch_size: int) -> None:
        self.perm, self.rank, self.size, self.batch_size = perm, rank, size, batch_size
        self.batches = len(perm) // (size * batch_size)

    def __len__(self) -> int:
        return self.batches

    @overload
    def __getitem__(self, index: int) -> list[int]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[int]]: ...

    def __getitem__(self, index: int | slice) -> list[int] | list[list[int]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.batches))]
        if not -self.batches <= index < self.batches:
            raise IndexError(f"batch {index} of {self.batches}")
        index %= self.batches
        step = self.size * self.batch_size
        first = self.rank + index * step
        return [int(r) for r in self.perm[first:first + step:self.size].tolist()]


def epoch_order(rows: int, epoch: int, seed: int, rank: int, size: int,
                batch_size: int) -> EpochOrder:
    """This rank's micro-batches for `epoch`: a permutation seeded by
    (seed, epoch), cut to a multiple of size * batch_size, dealt round-robin
    to the ranks, then chunked. The same on every run and every resume."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    # int32 gives the very permutation int64 gives, in half the memory
    dtype = torch.int32 if rows < 2**31 else torch.int64
    perm = torch.randperm(rows, generator=g, dtype=dtype)
    return EpochOrder(perm, rank, size, batch_size)


# ---------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, total: int, schedule: str, floor: float) -> float:
    """Linear warmup, then cosine decay to `floor` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- checkpoints
def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first: temporary folders (a save cut
    short) never match, nor a step folder without its trainer state."""
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / TRAINER_STATE).is_file())


def guard_restart(env: Mapping[str, str] = os.environ) -> tuple[float, int | None]:
    """(lr multiplier, resume at or before this step or None) of a loss
    guard restart, from the variables the engine sets; (1.0, None) without."""
    from engine.guard import ENV_LR_SCALE, ENV_RESUME_AT_OR_BEFORE

    scale_text, step_text = env.get(ENV_LR_SCALE), env.get(ENV_RESUME_AT_OR_BEFORE)
    try:
        scale = float(scale_text) if scale_text else 1.0
        step = int(step_text) if step_text else None
    except ValueError:
        scale, step = math.nan, None
    if not 0 < scale <= 1 or (step is not None and step < 0):
        raise WorkloadError(f"{ENV_LR_SCALE}={scale_text!r} {ENV_RESUME_AT_OR_BEFORE}="
                            f"{step_text!r}: expected a number in (0, 1] and a step >= 0 "
                            "(the engine sets them on a loss guard restart)")
    return scale, step


def set_aside_after(output: Path, step: int) -> list[Path]:
    """Rename the checkpoints newer than `step` to discarded-step-NNNNNN
    (never picked by --resume); returns the new paths."""
    moved = []
    for folder in checkpoints(output):
        if int(folder.name.removeprefix("step-")) > step:
            target = folder.with_name("discarded-" + folder.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(folder, target)
            moved.append(target)
    return moved


def save_checkpoint(output: Path, step: int, model: LoadedModel, state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoints/step-N into a temporary folder, then rename it into
    place, and keep the newest `keep`. On a full disk the temporary folder is
    removed (nothing half-written can be resumed from; the older checkpoints
    are untouched) and `NoSpace` names the disk, what is free and the fix."""
    import torch

    from engine.workloads.models import save_model

    folder = output / CHECKPOINTS / f"step-{step:06d}"
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp / "model")
        torch.save(state, tmp / TRAINER_STATE)
    except Exception as exc:  # torch and safetensors wrap the OSError in their own types
        shutil.rmtree(tmp, ignore_errors=True)  # first: then "free" is what is left
        full = no_space(exc, folder.parent, f"saving checkpoint {folder.name} to "
                        f"{folder.parent}", "free space or lower --keep-checkpoints",
                        full_below=_room_for(model, state))
        if full is None:
            raise
        raise full from None
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    for old in checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _room_for(model: LoadedModel, state: dict[str, Any]) -> int:
    """About what a checkpoint of `model` needs (its parameters three times:
    the weights and the optimizer's two moments), so that a failed save with
    less than that free counts as a full disk even when the error hides
    ENOSPC."""
    try:
        size = sum(p.numel() * p.element_size() for p in model.model.parameters())
    except Exception:  # not a torch module: only the error's own errno counts
        return 0
    return 3 * size + (1 << 20)


def check_checkpoint_folder(folder: Path) -> None:
    """A clear error when the checkpoint folder `folder` does not exist."""
    if not folder.is_dir():
        raise WorkloadError(f"checkpoint {folder}: no such folder; expected a "
                            f"{CHECKPOINTS}/step-NNNNNN folder written by a train run")


def load_checkpoint_state(folder: Path) -> dict[str, Any]:
    import torch

    path = folder / TRAINER_STATE
    check_checkpoint_folder(folder)
    if not path.is_file():
        raise WorkloadError(f"checkpoint {folder}: {TRAINER_STATE} is missing; the checkpoint "
                            "is incomplete: delete it to resume from an older one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle: no common base class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WorkloadError(f"checkpoint {folder}: {TRAINER_STATE} is corrupt ({first}); "
                            "delete this checkpoint to resume from an older one, or start "
                            "without --resume") from None
    if not isinstance(state, dict) or "step" not in state:
        raise WorkloadError(f"checkpoint {folder}: {TRAINER_STATE} holds no training state")
    return state


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- the loop
@dataclass
class Outcome:
    results: dict[str, Any]
    model: LoadedModel


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop stops after the current step."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True


def _starting_model(a: argparse.Namespace, dist: Dist, texts_for_tokenizer: Callable[[], list[str]],
                    prepared: shards.Prepared | None = None) -> tuple[LoadedModel, Any]:
    """The model to train and its tokenizer, and the labels (classification)."""
    labels: list[str] = []
    if a.task == "classification":
        labels = datasets.load_labelled(a.corpus).names
    tokenizer = _tokenizer_for(a, texts_for_tokenizer, dist, prepared)
    if a.model in PRESETS:
        config = build_config(a.model, len(tokenizer), a.block_size, tokenizer, a.dropout)
        if prepared is not None:
            shards.check_model_vocab(prepared, config.vocab_size, f"model {a.model}")
        model = build_model(config, a.task, labels)
        return LoadedModel(model, tokenizer, None, "fp32", a.task, labels), tokenizer
    loaded = load_model(a.model, task=a.task, labels=labels)
    if prepared is not None:
        shards.check_model_vocab(prepared, loaded.model.config.vocab_size,
                                 f"model {loaded.folder}")
        if loaded.tokenizer is not None and not a.tokenizer:
            shards.check_tokenizer(prepared, loaded.tokenizer, f"the tokenizer of model "
                                   f"{loaded.folder}", "prepare the data with the model's "
                                   f"tokenizer (prepare --tokenizer {loaded.folder})")
    if loaded.format != "fp32":
        raise WorkloadError(f"model {loaded.folder}: format {loaded.format} cannot be trained; "
                            "fine-tune the fp32 model, then compress it")
    if tokenizer is not None:
        loaded.tokenizer = tokenizer
    if a.dropout:
        loaded.model.config.attention_dropout = a.dropout
    return loaded, loaded.tokenizer


def run_training(a: argparse.Namespace, kind: str = "train") -> Outcome:
    """Train per `a`; rank 0 writes results.json. Raises `Diverged` after
    writing the reason when the loss stops being finite."""
    check_args(a)
    check_paths(a)  # before torch's import: a mistyped path costs no start-up
    import torch
    import torch.nn.functional as F

    quiet_libraries()
    stop = StopFlag()
    stop.install()
    device = select_device(a.device)
    dist = Dist(a.dist, device)
    threads = set_threads(dist.local_size)
    a.output.mkdir(parents=True, exist_ok=True)
    seed_everything(a.seed)
    started = time.time()

    def corpus_texts() -> list[str]:
        texts = datasets.load_texts(a.corpus) if a.task == "causal-lm" else \
            datasets.load_labelled(a.corpus).texts
        texts = texts[:a.max_docs] if a.max_docs else texts
        train_i, _ = datasets.split_indices(texts, a.eval_fraction)
        return [texts[i] for i in train_i]

    prepared = shards.open_prepared(a.data) if a.data is not None else None
    loaded, tokenizer = _starting_model(a, dist, corpus_texts, prepared)
    data = load_data(a, tokenizer, prepared)
    teacher = None
    if a.teacher:
        teacher = load_model(a.teacher).model.to(device)
        teacher.eval()
        if teacher.config.vocab_size != loaded.model.config.vocab_size:
            raise WorkloadError(f"--teacher {a.teacher}: vocabulary of {teacher.config.vocab_size}"
                                f" tokens, the student has {loaded.model.config.vocab_size}; "
                                "use the teacher's tokenizer (--tokenizer)")

    model = loaded.model.to(device)
    model.train()
    lr_scale, resume_at = guard_restart()
    lr = a.lr * (dist.size if a.scale_lr else 1) * lr_scale
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    base_opt: torch.optim.Optimizer
    if a.optimizer == "adamw":
        base_opt = torch.optim.AdamW(groups, lr=lr)
    else:
        base_opt = torch.optim.SGD(groups, lr=lr, momentum=a.momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        base_opt, lambda s: lr_factor(s, a.warmup_steps, a.max_steps, a.schedule, a.min_lr_ratio))

    step, micro = 0, 0
    found = [c for c in checkpoints(a.output)
             if resume_at is None or int(c.name.removeprefix("step-")) <= resume_at]
    resuming = a.resume or resume_at is not None
    resume_from = a.resume_from or (found[-1] if resuming and found else None)
    if resume_at is not None and dist.is_main:
        for moved in set_aside_after(a.output, resume_at):
            print(f"loss guard restart: set aside {moved}", flush=True)
    if resuming or a.resume_from:
        # Rank 0's choice for every rank: a rank that saw other checkpoints
        # (or none, on a node without the output folder) would otherwise
        # skip or join the collectives below on its own.
        chosen = dist.broadcast_object(str(resume_from) if resume_from is not None else None,
                                       name="train.resume_from")
        resume_from = Path(chosen) if chosen is not None else None
    if resume_from is not None:
        state = load_checkpoint_state(resume_from) if dist.is_main else None
        if dist.is_main and state is not None:
            try:
                model.load_state_dict(load_model(resume_from / "model").model.state_dict())
                base_opt.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
            except (RuntimeError, ValueError, KeyError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise WorkloadError(
                    f"checkpoint {resume_from} does not fit this run ({first[:200]}); resume "
                    "with the options it was written with, or use a new --output") from None
        # Rank 0 passes a dict, the others None: only the explicit name
        # makes them meet in the same collective.
        shared = dist.broadcast_object(
            {"step": state["step"], "micro": state["micro"], "rng": state["rng"],
             "schedule": state["schedule"]} if state is not None else None,
            name="train.resume_position")
        step, micro = int(shared["step"]), int(shared["micro"])
        if not dist.is_main:
            schedule.load_state_dict(shared["schedule"])
        rngs = shared["rng"]
        if len(rngs) == dist.size:
            _set_rng_state(rngs[dist.rank])
        if dist.is_main:
            print(f"resumed from {resume_from} at step {step}", flush=True)
    elif resuming and dist.is_main:
        print("no checkpoint yet: starting at step 0", flush=True)

    if dist.mode == "ddp" and resume_from is not None:
        opt_state = dist.broadcast_object(base_opt.state_dict() if dist.is_main else None,
                                          name="train.optimizer_state")
        if not dist.is_main:
            base_opt.load_state_dict(opt_state)
    dist.broadcast_state(model, base_opt)
    if lr_scale != 1.0:
        # a checkpoint's optimizer and schedule carry the lr they ran with
        schedule.base_lrs = [lr for _ in schedule.base_lrs]
        for group in base_opt.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * schedule.lr_lambdas[0](schedule.last_epoch)
        if dist.is_main:
            print(f"loss guard restart: lr x{lr_scale:g} ({lr:.3g})", flush=True)
    wrapped = dist.wrap_model(model)
    optimizer = dist.wrap_optimizer(base_opt, model, a.grad_accum, a.fp16_allreduce)
    params = [p for p in model.parameters() if p.requires_grad]

    metrics = MetricsLog(metrics_path(a.output), a.output / "tensorboard") if dist.is_main \
        else None
    if dist.is_main:
        print(f"{kind}: {dist.mode} x{dist.size} on {device} ({threads} threads/worker), "
              f"{data.rows} training rows of {a.block_size} tokens, "
              f"{sum(p.numel() for p in params):,} parameters, steps {step}->{a.max_steps}",
              flush=True)

    per_epoch = max(1, data.rows // (dist.size * a.batch_size))
    if data.rows < dist.size * a.batch_size:
        raise WorkloadError(f"{data.rows} training rows cannot fill one batch of "
                            f"{a.batch_size} rows on each of {dist.size} workers; use more "
                            "text, a smaller --batch-size or a smaller --block-size")
    amp = a.amp and device.type == "cuda"
    results: dict[str, Any] = {}
    order_epoch, order = -1, EpochOrder([], 0, 1, 1)
    last_loss = float("nan")
    eval_stats: dict[str, Any] = {}
    tokens_per_s = samples_per_s = 0.0
    window_tokens, window_time = 0, 0.0

    def evaluate() -> dict[str, Any]:
        held = data.held
        n = len(held["input_ids"])
        lo, hi = dist.rank * n // dist.size, (dist.rank + 1) * n // dist.size
        if a.task == "classification":
            sums = classification_sums(
                model, held["input_ids"][lo:hi], held["attention_mask"][lo:hi],
                held["labels"][lo:hi], a.batch_size, device)
            loss_sum, correct, count = dist.sum(sums, name="train.eval_classification")
            model.train()
            return {"eval_loss": loss_sum / max(1, count), "accuracy": correct / max(1, count)}
        # The first eval_batches x batch_size held-out rows, the rows that
        # evaluate and compress score, shared out among the ranks.
        rows = held["input_ids"][:a.eval_batches * a.batch_size]
        lo, hi = dist.rank * len(rows) // dist.size, (dist.rank + 1) * len(rows) // dist.size
        lm_sums = lm_loss_sums(model, rows[lo:hi], a.batch_size, device)
        loss_sum, count = dist.sum(lm_sums, name="train.eval_lm")
        model.train()
        loss = loss_sum / max(1, count)
        return {"eval_loss": loss, "perplexity": perplexity(loss)}

    def trainer_state() -> dict[str, Any]:
        return {"step": step, "micro": micro, "optimizer": base_opt.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": dist.gather_object(_rng_state(), name="train.rng_states"),
                "args": {k: str(v) for k, v in vars(a).items()}}

    def checkpoint() -> None:
        state = trainer_state()  # a collective: every rank takes part
        if dist.is_main:
            folder = save_checkpoint(a.output, step, loaded, state, a.keep_checkpoints)
            print(f"checkpoint {folder}", flush=True)

    startup: dict[str, Any] = {}
    stopped = False
    while step < a.max_steps:
        t0 = time.perf_counter()
        optimizer.zero_grad()
        loss_total, rows = 0.0, 0
        for k in range(a.grad_accum):
            epoch, index = divmod(micro, per_epoch)
            if epoch != order_epoch:
                order = epoch_order(data.rows, epoch, a.seed, dist.rank, dist.size,
                                    a.batch_size)
                order_epoch = epoch
            idx = order[index]
            batch = {name: t[idx].to(device) for name, t in data.train.items()}
            with dist.accumulating(wrapped, last=k == a.grad_accum - 1), \
                    torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                if a.task == "classification":
                    out = wrapped(**batch)
                else:
                    out = wrapped(input_ids=batch["input_ids"], labels=batch["input_ids"])
                loss = out.loss
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(input_ids=batch["input_ids"]).logits
                    temp = a.temperature
                    soft = F.kl_div(F.log_softmax(out.logits / temp, -1),
                                    F.log_softmax(t_logits / temp, -1), log_target=True,
                                    reduction="batchmean") * temp * temp / out.logits.shape[1]
                    loss = a.alpha * soft + (1 - a.alpha) * loss
                (loss / a.grad_accum).backward()
            loss_total += float(loss.detach())
            rows += len(idx)
            micro += 1
        grad_norm = dist.step(optimizer, params, a.clip)
        schedule.step()
        step += 1
        elapsed = time.perf_counter() - t0
        if not startup:
            startup = startup_record(prepared)
        loss_sum, stop_votes = dist.sum([loss_total / a.grad_accum, 1.0 if stop.set else 0.0],
                                        name="train.step_loss_and_stop")
        last_loss = loss_sum / dist.size
        if not math.isfinite(last_loss):
            reason = (f"loss became {last_loss} at step {step} (lr {schedule.get_last_lr()[0]:.3g},"
                      f" grad norm {grad_norm:.3g}); lower --lr, keep --clip on, or add warmup")
            if dist.is_main:
                write_json_atomic(a.output / "results.json", {
                    "kind": kind, "status": "diverged", "reason": reason, "step": step,
                    "wall_s": round(time.time() - started, 2)})
                assert metrics is not None
                metrics.write({"step": step, "loss": None, "diverged": 1})
                metrics.close()
            raise Diverged(reason)
        tokens = rows * a.block_size * dist.size
        window_tokens += tokens
        window_time += elapsed
        tokens_per_s = window_tokens / window_time if window_time else 0.0
        samples_per_s = tokens_per_s / a.block_size
        if step % a.log_every == 0 or step == a.max_steps:
            if metrics is not None:
                metrics.write({"step": step, "total_steps": a.max_steps,
                               "epoch": round(micro / per_epoch, 4),
                               "loss": last_loss, "lr": schedule.get_last_lr()[0],
                               "grad_norm": grad_norm, "tokens_per_s": round(tokens_per_s, 1),
                               "samples_per_s": round(samples_per_s, 2)})
            window_tokens, window_time = 0, 0.0
        if step % a.eval_every == 0 or step == a.max_steps:
            eval_stats = evaluate()
            if metrics is not None:
                metrics.write({"step": step, **eval_stats})
        stopped = stop_votes > 0 and step < a.max_steps
        if step % a.checkpoint_every == 0 or step == a.max_steps or stopped:
            checkpoint()
        if stopped:
            break

    if not eval_stats and not stopped:
        eval_stats = evaluate()
    unwrapped_params = sum(p.numel() for p in model.parameters())
    digests = dist.gather_object(weights_digest(model), name="train.weights_digests")
    results = {
        "kind": kind, "task": a.task, "status": "stopped" if stopped else "ok",
        "steps": step, "max_steps": a.max_steps, "epochs": round(micro / per_epoch, 4),
        "final_loss": finite_or_none(last_loss),
        **{k: finite_or_none(v) for k, v in eval_stats.items()},
        "tokens_per_s": round(tokens_per_s, 1), "samples_per_s": round(samples_per_s, 2),
        "world_size": dist.size, "dist": dist.mode, "device": str(device),
        "parameters": unwrapped_params, "wall_s": round(time.time() - started, 2),
        "model": str((a.output / "model").resolve()),
        "replica_digests": digests, "replicas_identical": len(set(digests)) == 1,
        "startup": startup,
    }
    if dist.is_main:
        from engine.workloads.models import save_model

        model.to("cpu")
        if not stopped:
            save_model(loaded, a.output / "model", {"trained_steps": step})
        write_json_atomic(a.output / "results.json", results)
        assert metrics is not None
        metrics.close()
        print(f"{kind}: {results['status']} after {step} steps, loss {last_loss:.4f}"
              + (f", held-out perplexity {eval_stats['perplexity']:.2f}"
                 if "perplexity" in eval_stats else "")
              + (f", accuracy {eval_stats['accuracy']:.3f}" if "accuracy" in eval_stats else ""),
              flush=True)
    dist.barrier()
    dist.shutdown()
    if stopped:
        raise Interrupted(f"stopped by a signal at step {step}; checkpoint saved: rerun with "
                          "--resume to continue")
    return Outcome(results, loaded)


def startup_record(prepared: shards.Prepared | None) -> dict[str, Any]:
    """What the first step cost this process: seconds since it started,
    resident memory now and at its peak, data tokens read so far."""
    import resource

    import psutil

    me = psutil.Process()
    return {"first_step_s": round(time.time() - me.create_time(), 3),
            "rss_first_step_bytes": me.memory_info().rss,
            # ru_maxrss: KiB on Linux
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "tokens_read_first_step": prepared.tokens_read if prepared is not None else None}


def weights_digest(model: Any) -> str:
    """A hash of every parameter's bytes: equal on all ranks when the
    replicas are in sync."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Interrupted(WorkloadError):
    exit_code = 143


def main() -> int:
    run_training(parser().parse_args())
    return 0


if __name__ == "__main__":
    run_main(main)
