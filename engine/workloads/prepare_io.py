"""The files of a prepare run: which inputs, in which order, read how, and
the intermediate files the stages hand each other.

Contract
========

- `resolve_inputs` turns the ``--input`` values (files, folders, globs, and
  ``demo``: the demo corpus of `engine.workloads.data`, built and cached on
  first use, as ``--corpus demo`` elsewhere) into
  the canonical list of files: each value's files sorted by path, the values
  in the order given, a file named twice kept once. Kinds by name: ``.jsonl``
  (also ``.json``: one object a line), ``.txt``/``.md`` (documents separated
  by blank lines), ``.parquet``; the first two may end in ``.gz`` or ``.zst``
  (parquet compresses inside; a compressed parquet file is refused).
- `shard` gives task ``rank`` of ``tasks`` a contiguous block of that list, so
  the order (task, position in task) is the order of files and lines: "the
  first copy" of a duplicate is the first in the files as listed.
- The readers stream (one line, one text document or one parquet batch in
  memory) and never stop at bad input: a line that is not UTF-8
  (``not_utf8``), not JSON (``bad_json``), without the text field or with a
  non-string one (``missing_field``), or a file that cannot be decompressed
  or parsed from some point on (``corrupt_file``, counted once, the documents
  before it kept) is counted with its file and 1-based line (parquet: row)
  and logged as one line; the job decides about the share afterwards.
- `InputReader` is the first step of the filter stage. Its counter file
  ``read`` (see `prepare_counts`) holds ``documents``, ``bytes`` (of input
  read so far), ``bad`` and one count per problem, and ``examples``: the
  first 20 bad records of the task as ``{"file", "line", "problem"}``.
- `RankWriter` / `RankReader` are the intermediate files between stages:
  ``<folder>/<rank:05d>.jsonl.gz``, one ``{"id", "text"}`` object a line, in
  stream order; a task without documents writes an empty file. Readers of a
  later stage read exactly their own rank's file, so the document indices the
  dedup stages use agree between stages.
- `SplitWriter` ends the dedup stage: each document goes to the held-out or
  train folder by `engine.workloads.data.is_held_out` of its (normalised)
  text, as training splits a corpus; counters ``train`` and ``heldout``.
"""

from __future__ import annotations

import glob
import gzip
import io
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from engine.workloads.common import WorkloadError
from engine.workloads.data import DEMO, is_held_out
from engine.workloads.prepare_counts import Counts

TEXT_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt", ".md": "txt",
                 ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst")
#: bad records kept with file and line per task (the manifest keeps 20 in all).
EXAMPLES = 20
#: ExactDedupSignature's priority is a uint16 >= 1: 65535 - rank keeps the lowest rank.
PRIORITY_MAX = 65535


def kind_of(path: Path) -> tuple[str, str | None] | None:
    """("jsonl" | "txt" | "parquet", ".gz" | ".zst" | None), or None for a
    file prepare does not read."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    kind = TEXT_SUFFIXES.get(suffixes[-1]) if suffixes else None
    return (kind, compression) if kind else None


def _known(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and kind_of(path) is not None


def resolve_inputs(values: Sequence[str]) -> list[Path]:
    """The canonical list of input files (see the module docstring)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for value in values:
        path = Path(value).expanduser()
        if value == DEMO and not path.exists():
            from engine.workloads.data import demo_corpus_file

            files = [demo_corpus_file()]
        elif path.is_dir():
            files = sorted(f for f in path.rglob("*") if _known(f))
        elif path.is_file():
            if kind_of(path) is None:
                raise WorkloadError(f"--input {value}: not a file prepare reads; expected "
                                    ".jsonl, .txt, .md or .parquet (text ones may end in .gz "
                                    "or .zst)")
            files = [path]
        elif glob.has_magic(value):
            files = sorted(Path(f) for f in glob.glob(str(path), recursive=True)
                           if _known(Path(f)))
        else:
            raise WorkloadError(f"--input {value}: no such file or folder; expected a file, "
                                "a folder or a glob of .jsonl/.txt/.parquet files")
        if not files:
            raise WorkloadError(f"--input {value}: no .jsonl, .txt, .md or .parquet files "
                                "in it; expected at least one")
        for f in files:
            kind = kind_of(f)
            if kind is not None and kind[0] == "parquet" and kind[1]:
                raise WorkloadError(f"--input {f}: a compressed parquet file; parquet "
                                    "compresses inside, expected a plain .parquet file")
            resolved = f.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append(resolved)
    return out


def shard(count: int, rank: int, tasks: int) -> range:
    """The indices of the `count` files task `rank` of `tasks` reads: a
    contiguous block, the blocks in rank order covering every file once."""
    return range(rank * count // tasks, (rank + 1) * count // tasks)


# ---------------------------------------------------------------- reading input
class _Open:
    """A binary line stream over a possibly compressed file, and how far
    into the file on disk it has read."""

    def __init__(self, path: Path, compression: str | None, stack: ExitStack) -> None:
        self.raw: IO[bytes] = stack.enter_context(open(path, "rb"))
        self.stream: IO[bytes]
        if compression == ".gz":
            self.stream = stack.enter_context(gzip.GzipFile(fileobj=self.raw))  # type: ignore[arg-type]
        elif compression == ".zst":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True)
            self.stream = stack.enter_context(io.BufferedReader(reader))
        else:
            self.stream = self.raw

    def position(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


#: (line, text or None, problem or None, bytes of the file read so far)
Record = tuple[int, str | None, str | None, int]


def _jsonl(stream: _Open, field: str) -> Iterator[Record]:
    for number, raw in enumerate(stream.stream, 1):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None, "not_utf8", stream.position()
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield number, None, "bad_json", stream.position()
            continue
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            yield number, None, "missing_field", stream.position()
            continue
        yield number, text, None, stream.position()


def _txt(stream: _Open) -> Iterator[Record]:
    lines: list[str] = []
    start, bad_line = 0, 0
    number = 0
    for number, raw in enumerate(stream.stream, 1):
        if raw.strip():
            if not lines and not bad_line:
                start = number
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad_line = bad_line or number
            continue
        if bad_line:
            yield bad_line, None, "not_utf8", stream.position()
        elif lines:
            yield start, "".join(lines), None, stream.position()
        lines, bad_line = [], 0
    if bad_line:
        yield bad_line, None, "not_utf8", stream.position()
    elif lines:
        yield start, "".join(lines), None, stream.position()


def _parquet(path: Path, field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        yield 1, None, "missing_field", 0
        return
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield row, value, None, 0
            else:
                yield row, None, "missing_field", 0


def read_records(path: Path, field: str) -> Iterator[Record]:
    """The records of one input file in order, bad ones included (text None,
    problem set); a file that breaks part-way ends with one ``corrupt_file``
    record at the line after the last one read."""
    kind = kind_of(path)
    assert kind is not None, path
    last = 0
    try:
        with ExitStack() as stack:
            if kind[0] == "parquet":
                records = _parquet(path, field)
            else:
                opened = _Open(path, kind[1], stack)
                records = _jsonl(opened, field) if kind[0] == "jsonl" else _txt(opened)
            for record in records:
                last = record[0]
                yield record
    except _decode_errors() + (ValueError,) as exc:
        logger.warning(f"{path}: cannot read past line {last} ({type(exc).__name__}: {exc})")
        yield last + 1, None, "corrupt_file", 0


class InputReader(PipelineStep):
    """The filter stage's reader: this task's block of the input files."""

    name = "llmconsole input reader"
    type = "📖 - READER"

    def __init__(self, files: Sequence[str], text_field: str, work: str) -> None:
        super().__init__()
        self.files = list(files)
        self.text_field = text_field
        self.work = work

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        counts = Counts(Path(self.work), "filter", "read", rank)
        examples: list[dict[str, Any]] = []
        counts.values.update(documents=0, bytes=0, bad=0, examples=examples)
        done_bytes = 0
        for index in shard(len(self.files), rank, world_size):
            path = Path(self.files[index])
            for line, text, problem, position in read_records(path, self.text_field):
                counts.values["bytes"] = done_bytes + position
                if problem is not None:
                    counts.add("bad")
                    counts.add(problem)
                    logger.warning(f"bad input: {path} line {line}: {problem}")
                    if len(examples) < EXAMPLES:
                        examples.append({"file": str(path), "line": line, "problem": problem})
                    counts.flush()
                    continue
                assert text is not None
                counts.add("documents")
                counts.flush()
                yield Document(text=text, id=f"{index}:{line}",
                               metadata={"priority": PRIORITY_MAX - rank})
            done_bytes += path.stat().st_size
            counts.values["bytes"] = done_bytes
        counts.finish()


# ---------------------------------------------------------------- between stages
def rank_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"{rank:05d}.jsonl.gz"


class RankWriter(PipelineStep):
    """Writes every document to this task's file and passes it on."""

    name = "llmconsole rank writer"
    type = "💽 - WRITER"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        path = rank_file(self.folder, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wb", compresslevel=1) as fh:
            for doc in data or ():
                fh.write(orjson.dumps({"id": doc.id, "text": doc.text}) + b"\n")
                yield doc


class RankReader(PipelineStep):
    """Reads this task's file of an earlier stage (none: no documents)."""

    name = "llmconsole rank reader"
    type = "📖 - READER"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        path = rank_file(self.folder, rank)
        if not path.exists():
            return
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                row = orjson.loads(raw)
                yield Document(text=row["text"], id=row["id"])


def read_texts(folder: str | Path, tasks: int, limit: int) -> list[str]:
    """The first `limit` texts of a stage's rank files, in rank order (the
    canonical order of the documents)."""
    texts: list[str] = []
    for rank in range(tasks):
        path = rank_file(folder, rank)
        if not path.exists():
            continue
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                if len(texts) >= limit:
                    return texts
                texts.append(orjson.loads(raw)["text"])
    return texts


class SplitWriter(PipelineStep):
    """Sends each document to the train or held-out files (the end of the
    dedup stage)."""

    name = "llmconsole held-out split"
    type = "💽 - WRITER"

    def __init__(self, train: str, heldout: str, fraction: float, work: str) -> None:
        super().__init__()
        self.train, self.heldout = train, heldout
        self.fraction = fraction
        self.work = work

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        counts = Counts(Path(self.work), "select", "split", rank)
        counts.values.update(train=0, heldout=0)
        paths = {name: rank_file(folder, rank)
                 for name, folder in (("train", self.train), ("heldout", self.heldout))}
        for path in paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(paths["train"], "wb", compresslevel=1) as train, \
                gzip.open(paths["heldout"], "wb", compresslevel=1) as heldout:
            for doc in data or ():
                held = is_held_out(doc.text, self.fraction)
                (heldout if held else train).write(
                    orjson.dumps({"id": doc.id, "text": doc.text}) + b"\n")
                counts.add("heldout" if held else "train")
                counts.flush()
        counts.finish()
        return
        yield  # a generator: the executor drains it
