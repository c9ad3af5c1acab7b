"""The prepare workload: text files in, a folder of token shards out.

    python -m engine.workloads.prepare --input PATH [--input PATH ...] --output DIR
        [--tokenizer DIR | --vocab-size 8192 --tokenizer-sample 20000]
        [--workers N] [--tasks 8] [--eval-fraction 0.05] [quality rules]
        [--dedup both|exact|near|none] [--near-threshold 0.7]
        [--max-bad-fraction 0.01] [--part K/N]

Stages (datatrove, `LocalPipelineExecutor`; each cut into ``--tasks`` tasks
unless said; logs and completion markers under ``DIR/work/logs/<stage>``):

1. ``filter``: read this task's block of the input files (`prepare_io`),
   normalise and apply the quality rules (`quality`), write the survivors to
   ``work/filtered`` and their exact-dedup hashes (`prepare_dedup`).
2. ``exact-find`` (1 task): the exact copies to drop.
3. ``minhash-sigs``, ``minhash-buckets`` (one task per band),
   ``minhash-cluster`` (1 task): the near copies to drop.
4. ``select``: the filtered documents less both kinds of copies, split into
   train and held-out by `data.is_held_out` (``work/kept``).
5. The tokenizer: ``--tokenizer``'s, or one trained (`data.train_tokenizer`)
   on the first ``--tokenizer-sample`` kept train documents in the canonical
   order; saved to ``DIR/tokenizer`` (part 0; the other parts wait for it).
6. ``tokenize-train``, ``tokenize-heldout``: datatrove's `DocumentTokenizer`
   (batches of ``--batch-size``, documents in order, no shuffle, the eos
   token after each) into ``DIR/train`` and ``DIR/heldout``:
   ``<rank:05d>_unshuffled.ds`` (+ ``.ds.index``); uint16 ids when the
   vocabulary has at most 65,536 entries, else uint32.
7. ``DIR/manifest.json`` (part 0, atomically, last), then ``DIR/work`` is
   removed unless ``--keep-work``.

Contract
========

- The output is a function of the input files, ``--tasks`` and the options
  that shape it: never of ``--workers`` or of the number of parts. A
  document's place is (task, position in task); the kept copy of a
  duplicate group is the first in that order; the shards, sorted by name,
  hold the kept documents in that order.
- Retry: a task whose completion marker exists is skipped, a task killed
  half-way is run again from the start (its files rewritten), the tokenizer
  folder appears by one rename; so a killed run retried gives the output of
  an uninterrupted one. ``DIR/work/config.json`` pins the options that shape
  the output: a retry with others is refused (one line: use a new --output).
  A folder with a manifest is complete: the run says so and exits 0.
- ``--part K/N``: this process runs tasks ``[K*ceil(T/N), (K+1)*ceil(T/N))``
  of each stage, then waits until every task of the stage has its marker (on
  the shared ``DIR``: every part must see the same DIR, e.g. NFS), at most
  ``--barrier-timeout`` seconds, failing with one line naming the missing
  tasks and their parts; a part that fails leaves ``work/failed/part-K`` and
  the others stop at their next barrier, naming it.
- Bad input (see `prepare_io`) is counted with file and line; the first 20
  go to the manifest's ``bad`` and to the log, one line each; more than
  ``--max-bad-fraction`` of the records bad ends the job with one line
  (exit 2) after the filter stage.
- Progress (part 0): a `MetricsLog` record every second from this process
  (``step``: records read, ``total_steps``: estimated from the bytes read,
  ``documents_per_s``, ``tokens_per_s``, ``removed``, ``kept``, ``phase``),
  read from the counter files the tasks rewrite (`prepare_counts`) and the
  sizes of the shards being written; a last one at the end.
- Counts: ``documents_in`` = every record read (bad ones too) =
  ``documents_out`` + the sum of ``removed`` (quality rules by name,
  ``exact_duplicate``, ``near_duplicate``, and each kind of bad input).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.workloads.common import (
    MetricsLog,
    WorkloadError,
    metrics_path,
    read_json,
    run_main,
    write_json_atomic,
)
from engine.workloads.options import prepare_parser
from engine.workloads.prepare_counts import merged, total
from engine.workloads.quality import REASONS, Rules

FORMAT = "llmconsole-prepare/1"
SPLITS = ("train", "heldout")
BAD_PROBLEMS = ("bad_json", "missing_field", "not_utf8", "corrupt_file")
#: options that do not change the output (the rest are pinned by work/config.json).
RUN_ONLY = ("part", "workers", "barrier_timeout", "keep_work")
PROGRESS_EVERY_S = 1.0
POLL_S = 0.5


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def part_ranks(tasks: int, part: int, parts: int) -> range:
    """The tasks of a stage of `tasks` that part `part` of `parts` runs."""
    per = math.ceil(tasks / parts)
    return range(min(part * per, tasks), min((part + 1) * per, tasks))


def rules_of(args: argparse.Namespace) -> Rules:
    return Rules(**{name: getattr(args, name) for name in Rules.__dataclass_fields__})


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class Run:
    """One part's run: where things are and how stages are run and awaited."""

    def __init__(self, args: argparse.Namespace, files: Sequence[Path]) -> None:
        self.args = args
        self.out: Path = args.output.resolve()
        self.work = self.out / "work"
        self.files = [str(f) for f in files]
        self.part, self.parts = args.part
        self.workers = args.workers or default_workers()
        self.tasks: int = args.tasks
        self.phase = "filter"

    # ------------------------------------------------------------ stages
    def stage(self, name: str, pipeline: list[Any], tasks: int) -> None:
        """Run this part's tasks of `name`, then wait for every part's."""
        from datatrove.executor import LocalPipelineExecutor

        ranks = part_ranks(tasks, self.part, self.parts)
        if len(ranks):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(self.workers, len(ranks)),
                                  local_tasks=len(ranks), local_rank_offset=ranks.start,
                                  logging_dir=str(self.work / "logs" / name),
                                  skip_completed=True).run()
        self.barrier(name, tasks)

    def owner(self, rank: int, tasks: int) -> int:
        return rank // math.ceil(tasks / self.parts)

    def failed_parts(self) -> list[str]:
        folder = self.work / "failed"
        if not folder.is_dir():
            return []
        return [f"{p.name}: {p.read_text(encoding='utf-8').strip()}"
                for p in sorted(folder.iterdir()) if p.name != f"part-{self.part}"]

    def wait(self, what: str, missing: Callable[[], list[str]]) -> None:
        """Poll until `missing()` is empty, another part failed, or the
        barrier times out (one line naming what is missing)."""
        deadline = time.monotonic() + self.args.barrier_timeout
        while True:
            left = missing()
            if not left or (self.out / "manifest.json").exists():
                return
            failed = self.failed_parts()
            if failed:
                raise WorkloadError(f"{what}: another part failed ({failed[0]}); fix it and run "
                                    "the job again (finished tasks are kept)")
            if time.monotonic() > deadline:
                raise WorkloadError(f"{what}: waited {self.args.barrier_timeout:g} s for "
                                    f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}; "
                                    "check those parts' logs and that every part sees the "
                                    f"same {self.out} (shared storage), or raise "
                                    "--barrier-timeout")
            time.sleep(POLL_S)

    def barrier(self, name: str, tasks: int) -> None:
        done_dir = self.work / "logs" / name / "completions"

        def missing() -> list[str]:
            done = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
            return [f"task {r} (part {self.owner(r, tasks)})" for r in range(tasks)
                    if f"{r:05d}" not in done]

        self.wait(f"stage {name}", missing)


# ---------------------------------------------------------------- progress
class Progress:
    """Writes a progress record every second from a thread of part 0."""

    def __init__(self, run: Run, total_bytes: int) -> None:
        self.run = run
        self.total_bytes = max(1, total_bytes)
        self.started = time.monotonic()
        self.tokens_started: float | None = None
        self.token_bytes = 0
        self.log = MetricsLog(metrics_path(run.out), None) if run.part == 0 else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prepare-progress",
                                        daemon=True)

    def start(self) -> None:
        if self.log is not None:
            self._thread.start()

    def set_phase(self, phase: str) -> None:
        self.run.phase = phase
        if phase == "tokenize" and self.tokens_started is None:
            self.tokens_started = time.monotonic()

    def tokens(self) -> int:
        if not self.token_bytes:
            return 0
        size = sum(p.stat().st_size for split in SPLITS
                   for p in (self.run.out / split).glob("*.ds") if p.is_file())
        return size // self.token_bytes

    def record(self) -> dict[str, Any]:
        work = self.run.work
        read = merged(work, "filter", "read")
        quality = merged(work, "filter", "quality")
        records = read.get("documents", 0) + read.get("bad", 0)
        removed = read.get("bad", 0) + sum(v for k, v in quality.items() if k != "kept")
        kept = quality.get("kept", 0)
        if self.run.phase != "filter":
            split = merged(work, "select", "split")
            selected = split.get("train", 0) + split.get("heldout", 0)
            dedup_in = total(work, "select", "dedup_in", "documents")
            removed += max(0, dedup_in - selected)
            kept = selected if dedup_in else kept
        done_bytes = read.get("bytes", 0)
        estimate = records if done_bytes >= self.total_bytes or not done_bytes else \
            int(records * self.total_bytes / done_bytes)
        now = time.monotonic()
        tokens = self.tokens()
        tok_s = now - self.tokens_started if self.tokens_started else 0.0
        return {"step": records, "total_steps": max(records, estimate),
                "documents_per_s": records / max(1e-9, now - self.started),
                "tokens_per_s": tokens / tok_s if tok_s > 0 else 0.0,
                "removed": removed, "kept": kept, "phase": self.run.phase}

    def write(self, record: dict[str, Any] | None = None) -> None:
        if self.log is not None:
            self.log.write(record or self.record())

    def _loop(self) -> None:
        while True:  # one record at once, then one a second
            try:
                self.write()
            except OSError:  # a counter file replaced under us: next second
                pass
            if self._stop.wait(PROGRESS_EVERY_S):
                return

    def close(self, last: dict[str, Any] | None) -> None:
        """Stop the thread and write `last` (once; later calls do nothing)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.log is not None:
            if last is not None:
                self.write(last)
            self.log.close()
            self.log = None


# ---------------------------------------------------------------- the pieces
def check_config(run: Run, config: dict[str, Any]) -> None:
    """Pin the output-shaping options in work/config.json (see Contract)."""
    path = run.work / "config.json"
    if path.exists():
        old = read_json(path, "written by an earlier prepare run in this folder")
        if old != config:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise WorkloadError(f"--output {run.out}: holds an unfinished prepare run with other "
                                f"options or inputs ({', '.join(changed)}); use a new --output "
                                "or remove that folder")
        return
    write_json_atomic(path, config)


def bad_summary(run: Run) -> tuple[int, int, list[dict[str, Any]]]:
    """(bad records, all records, the first 20 bad ones in canonical order)."""
    from engine.workloads.prepare_counts import read_all
    from engine.workloads.prepare_io import EXAMPLES

    bad, records, examples = 0, 0, []
    for _, values in read_all(run.work, "filter", "read"):
        bad += int(values.get("bad", 0))
        records += int(values.get("bad", 0)) + int(values.get("documents", 0))
        examples += values.get("examples", [])
    return bad, records, examples[:EXAMPLES]


def check_bad(run: Run) -> None:
    bad, records, examples = bad_summary(run)
    if run.part == 0:
        for e in examples:
            print(f"bad input: {e['file']} line {e['line']}: {e['problem']}", file=sys.stderr,
                  flush=True)
        if bad > len(examples):
            print(f"bad input: {bad - len(examples)} more", file=sys.stderr, flush=True)
    limit = run.args.max_bad_fraction
    if records and bad / records > limit:
        first = examples[0] if examples else {"file": "?", "line": 0, "problem": "?"}
        raise WorkloadError(f"{bad} of {records} input records are bad ({bad / records:.2%}, "
                            f"more than --max-bad-fraction {limit:g}; first: {first['file']} "
                            f"line {first['line']}: {first['problem']}); fix the input or raise "
                            "--max-bad-fraction")


def prepare_tokenizer(run: Run) -> None:
    """DIR/tokenizer (part 0 makes it, the other parts wait for it)."""
    from engine.workloads.prepare_io import read_texts

    folder = run.out / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return
    if run.part != 0:
        run.wait("the tokenizer", lambda: [] if (folder / "tokenizer.json").is_file()
                 else ["part 0's tokenizer"])
        return
    from engine.workloads.data import load_tokenizer, train_tokenizer

    args = run.args
    split = merged(run.work, "select", "split")
    if not split.get("train", 0) + split.get("heldout", 0):
        raise WorkloadError("no documents are left after the quality rules and dedup (see "
                            f"{run.work / 'counts'}); loosen the rules (e.g. --min-words 0) or "
                            "give more input")
    if args.tokenizer is not None:
        tok = load_tokenizer(args.tokenizer)
        if tok.eos_token is None:
            raise WorkloadError(f"--tokenizer {args.tokenizer}: has no end-of-sequence token; "
                                "expected a tokenizer with an eos token (or leave --tokenizer "
                                "out to train one)")
    else:
        texts = read_texts(run.work / "kept" / "train", run.tasks, args.tokenizer_sample)
        if not texts:
            raise WorkloadError("no train documents are left to train a tokenizer on (all "
                                "went to the held-out split); give more input, a smaller "
                                "--eval-fraction or a --tokenizer")
        tok = train_tokenizer(texts, args.vocab_size)
    for stale in run.out.glob(".tokenizer.tmp-*"):  # a killed run's half-saved copy
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run.out / f".tokenizer.tmp-{os.getpid()}"
    tok.save_pretrained(str(tmp))
    if not (tmp / "tokenizer.json").is_file():
        raise WorkloadError(f"--tokenizer {args.tokenizer}: not a fast tokenizer (no "
                            "tokenizer.json when saved); expected a tokenizers-based one")
    os.replace(tmp, folder)


def tokenizer_facts(out: Path) -> tuple[str, int, int, int]:
    """(eos token, eos id, vocabulary size, bytes per token) of DIR/tokenizer,
    by datatrove's rule (uint32 above 65,536 entries)."""
    from tokenizers import Tokenizer

    from engine.workloads.data import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    vocab = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json")).get_vocab_size()
    return str(tok.eos_token), int(tok.eos_token_id), vocab, 4 if vocab > 65536 else 2


def shard_list(out: Path, token_bytes: int) -> list[dict[str, Any]]:
    """The non-empty shards in canonical order (empty ones are removed)."""
    shards = []
    for split in SPLITS:
        for ds in sorted((out / split).glob("*.ds")):
            index = ds.with_name(ds.name + ".index")
            documents = index.stat().st_size // 8 if index.exists() else 0
            tokens = ds.stat().st_size // token_bytes
            if not documents:
                for extra in (ds, index, ds.with_name(ds.name + ".metadata")):
                    extra.unlink(missing_ok=True)
                continue
            shards.append({"split": split, "file": f"{split}/{ds.name}", "documents": documents,
                           "tokens": tokens})
    return shards


def build_manifest(run: Run, config: dict[str, Any], started: float) -> dict[str, Any]:
    eos, eos_id, vocab, token_bytes = tokenizer_facts(run.out)
    read = merged(run.work, "filter", "read")
    quality = merged(run.work, "filter", "quality")
    split = merged(run.work, "select", "split")
    removed: dict[str, int] = {problem: read.get(problem, 0) for problem in BAD_PROBLEMS}
    for name in sorted(set(REASONS.values())):
        removed[name] = quality.get(name, 0)
    dedup_in = total(run.work, "select", "dedup_in", "documents")
    after_exact = total(run.work, "select", "after_exact", "documents")
    kept = split.get("train", 0) + split.get("heldout", 0)
    removed["exact_duplicate"] = dedup_in - after_exact
    removed["near_duplicate"] = after_exact - kept
    bad, records, examples = bad_summary(run)
    shards = shard_list(run.out, token_bytes)
    tokens = {s: sum(x["tokens"] for x in shards if x["split"] == s) for s in SPLITS}
    documents = {s: sum(x["documents"] for x in shards if x["split"] == s) for s in SPLITS}
    tokjson = run.out / "tokenizer" / "tokenizer.json"
    return {
        "format": FORMAT, "documents_in": records, "documents_out": kept,
        "removed": removed, "bad": examples, "bad_total": bad,
        "tokens": tokens, "documents": documents, "shards": shards,
        "token_dtype": "uint32" if token_bytes == 4 else "uint16",
        "vocab_size": vocab, "eos_id": eos_id, "eos_token": eos,
        "tokenizer": {"source": str(run.args.tokenizer) if run.args.tokenizer else "trained",
                      "sha256": sha256_file(tokjson)},
        "inputs": [{"path": f, "bytes": Path(f).stat().st_size, "sha256": sha256_file(Path(f))}
                   for f in run.files],
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in sorted(vars(run.args).items())},
        "lsh": config.get("lsh"),
        "seconds": round(time.monotonic() - started, 3),
    }


# ---------------------------------------------------------------- the pipeline
def pipelines(run: Run, config: dict[str, Any]) -> None:
    """Stages 1-4 (see the module docstring)."""
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )

    from engine.workloads.prepare_dedup import Count, FirstKeptCluster, exact_config, minhash_config
    from engine.workloads.prepare_io import InputReader, RankReader, RankWriter, SplitWriter
    from engine.workloads.quality import QualityStep, Whitespace

    args, work, tasks = run.args, str(run.work), run.tasks
    exact = args.dedup in ("exact", "both")
    near = args.dedup in ("near", "both")
    w = run.work
    xcfg = exact_config()

    def exact_filter() -> list[Any]:
        return [ExactDedupFilter(str(w / "exact" / "dups"), config=xcfg)] if exact else []

    filter_stage: list[Any] = [InputReader(run.files, args.text_field, work),
                               QualityStep(rules_of(args), work), RankWriter(str(w / "filtered"))]
    if exact:
        filter_stage.append(ExactDedupSignature(str(w / "exact" / "sigs"), config=xcfg))
    run.stage("filter", filter_stage, tasks)
    check_bad(run)
    run.phase = "dedup"
    if exact:
        run.stage("exact-find", [ExactFindDedups(str(w / "exact" / "sigs"),
                                                 str(w / "exact" / "dups"), config=xcfg)], 1)
    near_filter: list[Any] = []
    if near:
        mcfg = minhash_config(args.near_threshold)
        config["lsh"] = {"bands": mcfg.num_buckets, "rows": mcfg.hashes_per_bucket,
                         "n_grams": mcfg.n_grams}
        run.stage("minhash-sigs", [RankReader(str(w / "filtered")), *exact_filter(),
                                   MinhashDedupSignature(str(w / "minhash" / "sigs"), config=mcfg,
                                                         language=Whitespace())], tasks)
        run.stage("minhash-buckets", [MinhashDedupBuckets(str(w / "minhash" / "sigs"),
                                                          str(w / "minhash" / "buckets"),
                                                          config=mcfg)], mcfg.num_buckets)
        run.stage("minhash-cluster", [FirstKeptCluster(str(w / "minhash" / "buckets"),
                                                       str(w / "minhash" / "remove"))], 1)
        near_filter = [MinhashDedupFilter(str(w / "minhash" / "remove"))]
    run.stage("select", [RankReader(str(w / "filtered")), Count(work, "select", "dedup_in"),
                         *exact_filter(), Count(work, "select", "after_exact"), *near_filter,
                         SplitWriter(str(w / "kept" / "train"), str(w / "kept" / "heldout"),
                                     args.eval_fraction, work)], tasks)


def tokenize(run: Run, progress: Progress) -> None:
    from datatrove.pipeline.tokens import DocumentTokenizer

    from engine.workloads.prepare_io import RankReader

    eos, _, _, token_bytes = tokenizer_facts(run.out)
    progress.token_bytes = token_bytes
    tokjson = str(run.out / "tokenizer" / "tokenizer.json")
    for split in SPLITS:
        run.stage(f"tokenize-{split}", [
            RankReader(str(run.work / "kept" / split)),
            DocumentTokenizer(str(run.out / split), tokenizer_name_or_path=tokjson,
                              eos_token=eos, shuffle_documents=False,
                              batch_size=run.args.batch_size)], run.tasks)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = prepare_parser().parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = "1"  # per worker: else N workers oversubscribe the cores
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
    import multiprocess

    # the workers fork from a server that has imported these once (not once a worker a stage)
    multiprocess.set_forkserver_preload(["engine.workloads.prepare", "engine.workloads.quality",
                                         "engine.workloads.prepare_io",
                                         "engine.workloads.prepare_dedup",
                                         "datatrove.pipeline.tokens"])
    from engine.workloads.prepare_io import resolve_inputs

    files = resolve_inputs(args.input)
    run = Run(args, files)
    config = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in sorted(vars(args).items()) if k not in RUN_ONLY}
    config["files"] = [[f, Path(f).stat().st_size] for f in run.files]
    manifest_path = run.out / "manifest.json"
    if manifest_path.exists():
        done = read_json(manifest_path, "written by an earlier prepare run in this folder")
        old = {k: v for k, v in done.get("config", {}).items() if k not in RUN_ONLY}
        if old != {k: v for k, v in config.items() if k != "files"}:
            raise WorkloadError(f"--output {run.out}: holds a finished prepare run with other "
                                "options; use a new --output or remove that folder")
        print(f"{manifest_path}: already complete; nothing to do", file=sys.stderr, flush=True)
        return 0
    check_config(run, config)
    (run.work / "failed" / f"part-{run.part}").unlink(missing_ok=True)
    progress = Progress(run, sum(Path(f).stat().st_size for f in run.files))
    progress.start()
    last: dict[str, Any] | None = None
    try:
        pipelines(run, config)
        progress.set_phase("tokenize")
        prepare_tokenizer(run)
        tokenize(run, progress)
        if run.part == 0:
            manifest = build_manifest(run, config, started)
            last = progress.record()
            last.update(step=manifest["documents_in"], total_steps=manifest["documents_in"],
                        kept=manifest["documents_out"],
                        removed=sum(manifest["removed"].values()))
            progress.close(last)  # before work/ goes: its counters are the records' source
            write_json_atomic(manifest_path, manifest)
            print(f"prepared {manifest['documents_out']} of {manifest['documents_in']} "
                  f"documents, {sum(manifest['tokens'].values())} tokens in {run.out}",
                  file=sys.stderr, flush=True)
            if not args.keep_work:
                shutil.rmtree(run.work, ignore_errors=True)
    except BaseException as exc:
        if not manifest_path.exists() and not isinstance(exc, KeyboardInterrupt):
            marker = run.work / "failed" / f"part-{run.part}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              encoding="utf-8")
        raise
    finally:
        progress.close(last)
    return 0


if __name__ == "__main__":  # required: datatrove's forkserver re-imports this module
    run_main(main)
