"""The command-line options of the workloads: one parser per workload
(`train_parser`, `compress_parser`, `evaluate_parser`), built here without
torch or transformers so that the engine can check a job's arguments with
the very parser the workload will run, before the job is queued.

Contract
========

- The workloads parse their argv with these parsers and nothing else; the
  engine (`engine.profiles`) checks ``[args]`` with `parse`, `options` and
  `PROGRAMS`. There is no second copy of the rules: every range an option has
  (``--max-steps`` >= 1, ``--lr`` > 0 and finite, ...) is its argparse
  ``type``, so a bad value is refused the same way by hand and at submit.
- By hand a bad option is one line on stderr, ``error: argument --max-steps:
  -5 is below 1; expected an integer >= 1``, and exit code 2 (no usage
  dump). Abbreviated options are not accepted (``--max-step`` is unknown), so
  a profile key means exactly one option.
- `parse` raises `OptionError` instead of printing and exiting.
- Importing this module imports neither torch nor transformers (only the
  stdlib and the torch-free `models.PRESETS` and `distributed.MODES`).

Cross-option rules that need several values at once (``--teacher`` only for
``--task causal-lm``, evaluate's "``--model`` or ``--compare``") stay in the
workloads.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from engine.workloads.distributed import MODES
from engine.workloads.models import PRESETS
from engine.workloads.search_grid import (
    DEFAULT_GRID,
    DEFAULT_PICK,
    Grid,
    GridError,
    Pick,
    parse_grid,
    parse_pick,
)

__all__ = [
    "METHODS",
    "PARSERS",
    "PROGRAMS",
    "TASKS",
    "Option",
    "OptionError",
    "WorkloadParser",
    "add_search_options",
    "compress_parser",
    "evaluate_parser",
    "integer",
    "number",
    "options",
    "parse",
    "prepare_parser",
    "train_parser",
]

#: compress --method values.
METHODS = ("prune", "int8", "fp16", "bf16", "distill", "structured")
#: evaluate --task values.
TASKS = ("auto", "causal-lm", "classification")
DEVICES = ("auto", "cpu", "cuda")

#: workload module -> how it is run by hand (the parser's prog).
PROGRAMS = {name: f"python -m engine.workloads.{name}" for name in ("train", "compress",
                                                                    "evaluate", "prepare")}
#: prepare --dedup values.
DEDUP = ("both", "exact", "near", "none")


class OptionError(Exception):
    """An argv a workload's parser refuses. `option` is the flag the problem
    is about (``--max-steps``) when argparse names one; `problem` and
    `expected` split the message at ``; expected`` when it has one."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        problem, sep, expected = message.partition("; expected ")
        self.problem = problem
        self.expected = expected if sep else None


class WorkloadParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad option as one ``error:`` line
    and exit code 2, takes no abbreviations, and raises `OptionError`
    instead when `raise_errors` is set (what `parse` does)."""

    def __init__(self, prog: str, description: str = "") -> None:
        super().__init__(prog=prog, description=description or None, allow_abbrev=False,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        self.raise_errors = False

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise OptionError(message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# Types that carry the ranges


def _expected(low: float | None, high: float | None, low_open: bool, high_open: bool,
              noun: str) -> str:
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"{noun} in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"{noun} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{noun} {'<' if high_open else '<='} {high:g}"
    return noun


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer, within [low, high] where given."""
    expected = _expected(low, high, False, False, "an integer")

    def parse_int(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected "
                                             f"{expected}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {expected}")
        return value

    parse_int.__name__ = "integer"
    return parse_int


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number, within the bounds given (open
    bounds exclude the value itself)."""
    expected = _expected(low, high, low_open, high_open, "a finite number")

    def parse_number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected "
                                             f"{expected}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number; expected "
                                             f"{expected}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; expected {expected}")
        return value

    parse_number.__name__ = "number"
    return parse_number


POSITIVE = integer(1)
COUNT = integer(0)


class _Default(str):
    """A default argparse can tell from the same text typed: it finds
    mutually exclusive options by identity with the default, and a "demo"
    from argv may be the very object of a literal "demo"."""


#: --corpus's default: "demo", refused with --data only when typed.
DEMO_CORPUS = _Default("demo")


# ---------------------------------------------------------------------------
# The parsers


def add_data_option(group: argparse._MutuallyExclusiveGroup, what: str) -> None:
    """--data DIR: a prepare job's output folder, instead of --corpus. Its
    presence is checked when the workload starts (a pipeline's folder does
    not exist yet when the job is submitted)."""
    group.add_argument("--data", type=Path, metavar="DIR",
                       help="a prepare job's output folder (token shards, its tokenizer); "
                            f"{what}; instead of --corpus")


def add_measure_options(p: argparse.ArgumentParser) -> None:
    """The held-out data and timing options compress and evaluate share."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--corpus", default=DEMO_CORPUS,
                        help="'demo', a .txt/.jsonl file or a folder (classification: JSONL "
                             "with text and label); use the corpus the model was trained on")
    add_data_option(source, "its heldout/ split is scored")
    p.add_argument("--block-size", type=POSITIVE, default=128, help="tokens per held-out row")
    p.add_argument("--eval-fraction", type=number(0, 0.5, low_open=True, high_open=True),
                   default=0.05, help="held-out share of the documents (as in training)")
    p.add_argument("--max-docs", type=COUNT, default=0,
                   help="use the first N documents (0: all; as in training)")
    p.add_argument("--eval-batches", type=POSITIVE, default=20,
                   help="held-out batches scored (causal LM)")
    p.add_argument("--batch-size", type=POSITIVE, default=8,
                   help="rows per batch, also the rows of the timed batch")
    p.add_argument("--latency-repeats", type=POSITIVE, default=10,
                   help="timed forward passes (after 2 warm-up passes)")
    p.add_argument("--seed", type=integer(), default=42)


def train_parser(prog: str = PROGRAMS["train"], description: str = "") -> WorkloadParser:
    """The options of `engine.workloads.train`."""
    p = WorkloadParser(prog, description)
    p.add_argument("--output", required=True, type=Path, help="folder for everything written")
    p.add_argument("--task", choices=("causal-lm", "classification"), default="causal-lm")
    p.add_argument("--model", default="tiny",
                   help=f"a preset ({', '.join(PRESETS)}) to pre-train from scratch, or a "
                        "model folder (or a train job's output folder) to fine-tune")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--corpus", default=DEMO_CORPUS,
                        help="'demo', a .txt/.jsonl file or a folder (classification: JSONL "
                             "with text and label)")
    add_data_option(source, "causal LM: trains on its train/ split, scores its heldout/")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: the model's, "
                   "or one trained on the corpus for a preset)")
    p.add_argument("--vocab-size", type=POSITIVE, default=2048)
    p.add_argument("--block-size", type=POSITIVE, default=128, help="tokens per training row")
    p.add_argument("--eval-fraction", type=number(0, 0.5, low_open=True, high_open=True),
                   default=0.05)
    p.add_argument("--max-docs", type=COUNT, default=0,
                   help="use the first N documents (0: all)")
    p.add_argument("--batch-size", type=POSITIVE, default=8,
                   help="rows per worker per micro-batch")
    p.add_argument("--grad-accum", type=POSITIVE, default=1, help="micro-batches per step")
    p.add_argument("--max-steps", type=POSITIVE, default=100, help="optimizer steps")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=number(0, low_open=True), default=1e-3)
    p.add_argument("--scale-lr", action="store_true", help="multiply --lr by the worker count")
    p.add_argument("--momentum", type=number(0), default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=number(0), default=0.01)
    p.add_argument("--warmup-steps", type=COUNT, default=10)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--min-lr-ratio", type=number(0, 1), default=0.1)
    p.add_argument("--clip", type=number(0), default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--dropout", type=number(0, 1, high_open=True), default=0.0)
    p.add_argument("--seed", type=integer(), default=42)
    p.add_argument("--fp16-allreduce", action="store_true",
                   help="Horovod: send gradients as fp16")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    p.add_argument("--log-every", type=POSITIVE, default=1)
    p.add_argument("--eval-every", type=POSITIVE, default=50)
    p.add_argument("--eval-batches", type=POSITIVE, default=20)
    p.add_argument("--checkpoint-every", type=POSITIVE, default=50)
    p.add_argument("--keep-checkpoints", type=POSITIVE, default=2)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --output, if any")
    p.add_argument("--resume-from", type=Path, help="continue from this checkpoint folder")
    p.add_argument("--dist", choices=MODES, default="auto")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--teacher", help="distillation: the teacher model folder")
    p.add_argument("--temperature", type=number(0, low_open=True), default=2.0,
                   help="distillation temperature")
    p.add_argument("--alpha", type=number(0, 1), default=0.5,
                   help="distillation: weight of the soft (KL) term; 1-alpha for the hard loss")
    return p


def _grid(text: str) -> Grid:
    try:
        return parse_grid(text)
    except GridError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pick(text: str) -> Pick:
    try:
        return parse_pick(text)
    except GridError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_search_options(p: argparse.ArgumentParser,
                       mode: argparse._MutuallyExclusiveGroup) -> None:
    """compress --search (`engine.workloads.search`): in `mode`, the group
    that makes --method and --search exclusive (one of them is required),
    and --grid and --pick (syntax: `engine.workloads.search_grid`)."""
    mode.add_argument("--search", action="store_true",
                      help="try every candidate of --grid, measure each on the same held-out "
                           "batches, mark the size/latency/perplexity frontier and save the "
                           "--pick one; instead of --method")
    g = p.add_argument_group("search")
    g.add_argument("--grid", type=_grid, default=parse_grid(DEFAULT_GRID), metavar="GRID",
                   help="KEY=V1,V2 items (layers dropped, heads and channels shares kept, "
                        "int8 off/on), every combination tried; grids joined by ';'")
    g.add_argument("--pick", type=_pick, default=parse_pick(DEFAULT_PICK), metavar="RULE",
                   help="the frontier row saved as model/: fastest-within:F, "
                        "smallest-within:F (perplexity at most 1+F times the reference's), "
                        "fastest, smallest, best")


def compress_parser(prog: str = PROGRAMS["compress"], description: str = "") -> WorkloadParser:
    """The options of `engine.workloads.compress`."""
    p = WorkloadParser(prog, description)
    p.add_argument("--model", required=True,
                   help="the model to compress (distill: the teacher): a model folder or a "
                        "train/compress job's output folder")
    p.add_argument("--output", required=True, type=Path, help="folder for everything written")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--method", choices=METHODS)
    add_search_options(p, mode)
    g = p.add_argument_group("prune")
    g.add_argument("--sparsity", type=number(0, 1, low_open=True, high_open=True), default=0.5,
                   help="share of the pruned layers' weights set to zero")
    g.add_argument("--include-lm-head", action="store_true",
                   help="prune the output head (lm_head, or a classifier's score) too")
    g.add_argument("--recover-steps", type=COUNT, default=0,
                   help="recovery steps after pruning (prune: the zeros kept; structured: "
                        "see --recover) (0: none)")
    add_structured_options(p)
    g = p.add_argument_group("distill")
    g.add_argument("--student", default="micro", choices=tuple(PRESETS),
                   help="the student's preset")
    g.add_argument("--max-steps", type=POSITIVE, default=100, help="distillation steps")
    g.add_argument("--temperature", type=number(0, low_open=True), default=2.0,
                   help="distillation temperature")
    g.add_argument("--alpha", type=number(0, 1), default=0.5,
                   help="weight of the soft (KL) term; 1 - alpha for the hard loss")
    g.add_argument("--warmup-steps", type=COUNT, default=10, help="linear warm-up steps")
    g.add_argument("--checkpoint-every", type=POSITIVE, default=50,
                   help="steps between checkpoints (for --resume)")
    g.add_argument("--resume", action="store_true",
                   help="continue distillation from the newest checkpoint in --output")
    g.add_argument("--dist", choices=MODES, default="auto",
                   help="auto: horovod under horovodrun, ddp under torchrun, else single")
    g = p.add_argument_group("training (recovery, distill)")
    g.add_argument("--lr", type=number(0, low_open=True), default=5e-4,
                   help="peak learning rate")
    g.add_argument("--log-every", type=POSITIVE, default=10, help="steps per metrics line")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="where recovery and distillation train (measuring is on the CPU)")
    add_measure_options(p)
    return p


def add_structured_options(p: argparse.ArgumentParser) -> None:
    """--method structured: what to cut out, and how to recover. The upper
    bound of --drop-layers depends on the model; the workload checks it."""
    g = p.add_argument_group("structured")
    g.add_argument("--drop-layers", type=COUNT, default=0,
                   help="decoder layers removed, lowest angular distance first "
                        "(0..layers-1)")
    g.add_argument("--keep-heads", type=number(0, 1, low_open=True), default=1.0,
                   help="share of key/value head groups kept per layer (their query heads "
                        "go with them)")
    g.add_argument("--keep-channels", type=number(0, 1, low_open=True), default=1.0,
                   help="share of MLP intermediate channels kept per layer")
    g.add_argument("--recover", choices=("finetune", "distill"), default="finetune",
                   help="recovery loss (prune and structured): the LM loss, or KL from "
                        "the unpruned model at --temperature weighted by --alpha")


def evaluate_parser(prog: str = PROGRAMS["evaluate"], description: str = "") -> WorkloadParser:
    """The options of `engine.workloads.evaluate`."""
    p = WorkloadParser(prog, description)
    p.add_argument("--model", help="a model folder or a train/compress job's output folder "
                                   "(may be left out with --compare)")
    p.add_argument("--output", required=True, type=Path, help="folder for everything written")
    p.add_argument("--task", choices=TASKS, default="auto",
                   help="what to score; auto: the task the model was saved for")
    p.add_argument("--compare", nargs="+", metavar="DIR", default=[],
                   help="job output folders (or results.json files) to tabulate with this run")
    add_measure_options(p)
    return p


def part(text: str) -> tuple[int, int]:
    """An argparse type: ``K/N``, part K (0-based) of N."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or int(n) < 1 \
            or int(k) >= int(n):
        raise argparse.ArgumentTypeError(f"{text!r} is not a part; expected K/N with "
                                         "0 <= K < N, e.g. 0/2")
    return int(k), int(n)


def prepare_parser(prog: str = PROGRAMS["prepare"], description: str = "") -> WorkloadParser:
    """The options of `engine.workloads.prepare` (0 turns a quality rule off)."""
    p = WorkloadParser(prog, description)
    p.add_argument("--input", required=True, action="append", metavar="PATH",
                   help="a .jsonl/.txt/.md/.parquet file (text ones may end in .gz or .zst), a "
                        "folder or a glob; repeat for more")
    p.add_argument("--output", required=True, type=Path, help="the prepared data folder")
    p.add_argument("--text-field", default="text", help="the JSONL/parquet field of the text")
    p.add_argument("--tokenizer", type=Path,
                   help="a saved tokenizer folder (default: one trained on the kept documents)")
    p.add_argument("--vocab-size", type=integer(256, 1 << 24), default=8192,
                   help="vocabulary of a trained tokenizer")
    p.add_argument("--tokenizer-sample", type=POSITIVE, default=20000,
                   help="kept train documents a tokenizer is trained on (the first ones)")
    p.add_argument("--workers", type=integer(1, 256), default=0,
                   help="processes on this node (default: its cores, at most 8); the output "
                        "does not depend on it")
    p.add_argument("--tasks", type=integer(1, 65534), default=8,
                   help="tasks each stage is cut into; the output depends on it")
    p.add_argument("--eval-fraction", type=number(0, 0.5, low_open=True, high_open=True),
                   default=0.05, help="held-out share of the documents (as in training)")
    g = p.add_argument_group("quality rules (Gopher-style; 0 turns one off)")
    g.add_argument("--min-words", type=COUNT, default=20)
    g.add_argument("--max-words", type=COUNT, default=100000)
    g.add_argument("--min-mean-word-length", type=number(0), default=3.0)
    g.add_argument("--max-mean-word-length", type=number(0), default=10.0)
    g.add_argument("--max-symbol-ratio", type=number(0), default=0.1,
                   help="'#' and ellipses per word")
    g.add_argument("--max-bullet-line-fraction", type=number(0, 1), default=0.9)
    g.add_argument("--max-ellipsis-line-fraction", type=number(0, 1), default=0.3)
    g.add_argument("--min-alpha-ratio", type=number(0, 1), default=0.6,
                   help="share of the words with a letter")
    g.add_argument("--min-stop-words", type=COUNT, default=0,
                   help="English stop words a document needs")
    g.add_argument("--max-duplicate-line-fraction", type=number(0, 1), default=0.3)
    g = p.add_argument_group("dedup and input")
    g.add_argument("--dedup", choices=DEDUP, default="both",
                   help="exact copies of the normalised text, near copies (MinHash LSH), both")
    g.add_argument("--near-threshold", type=number(0, 1, low_open=True, high_open=True),
                   default=0.7, help="Jaccard similarity of word 5-grams from which near "
                                     "copies are removed")
    g.add_argument("--max-bad-fraction", type=number(0, 1), default=0.01,
                   help="share of bad records (lines, rows, files) past which the job fails")
    g = p.add_argument_group("running")
    g.add_argument("--part", type=part, default=(0, 1), metavar="K/N",
                   help="this node runs part K of N (set by the engine); every part shares "
                        "--output")
    g.add_argument("--barrier-timeout", type=number(1), default=3600.0,
                   help="seconds a stage waits for the other parts before failing")
    g.add_argument("--batch-size", type=POSITIVE, default=1000,
                   help="documents per tokenizer batch")
    g.add_argument("--keep-work", action="store_true",
                   help="keep --output/work (intermediate files) after success")
    return p


#: workload module -> its parser.
PARSERS: dict[str, Callable[[], WorkloadParser]] = {
    "train": train_parser, "compress": compress_parser, "evaluate": evaluate_parser,
    "prepare": prepare_parser}


# ---------------------------------------------------------------------------
# What the engine asks


@dataclass(frozen=True)
class Option:
    """One option of a workload as a profile sees it. `key` is its [args]
    key (``max_steps`` for ``--max-steps``); `takes` is "flag" (on/off, no
    value), "one" (one value) or "list" (one or more values). Of a required
    either-or group (``--method`` or ``--search``), the first member is
    `required`, with the others as its `alternatives`."""

    flag: str
    key: str
    takes: str
    required: bool
    choices: tuple[str, ...] | None
    alternatives: tuple[str, ...] = ()


def options(module: str) -> dict[str, Option]:
    """The long options of workload `module` ("train", "compress",
    "evaluate"), by flag."""
    out: dict[str, Option] = {}
    parser = PARSERS[module]()
    either: dict[int, tuple[str, ...]] = {}  # first member of a required group -> the others
    for group in parser._mutually_exclusive_groups:
        if group.required and group._group_actions:
            first, *others = group._group_actions
            either[id(first)] = tuple(f for a in others for f in a.option_strings)
    for action in parser._actions:
        if action.nargs == 0:
            takes = "flag"
        elif action.nargs in (None, 1, "?"):
            takes = "one"
        else:
            takes = "list"
        choices = tuple(str(c) for c in action.choices) if action.choices else None
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                out[flag] = Option(flag, flag[2:].replace("-", "_"), takes,
                                   bool(action.required) or id(action) in either, choices,
                                   either.get(id(action), ()))
    return out


def parse(module: str, argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed by workload `module`'s parser; raises `OptionError`
    (never exits, prints nothing)."""
    p = PARSERS[module]()
    p.raise_errors = True
    p.exit_on_error = False
    try:
        return p.parse_args(list(argv))
    except argparse.ArgumentError as err:
        raise OptionError(err.message, err.argument_name) from None
