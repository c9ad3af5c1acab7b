"""Prepared data: the folder a prepare job writes, read through memory maps.

The folder (the contract between prepare and the workloads that read it)::

    DIR/manifest.json     written last: its presence means the folder is complete
    DIR/tokenizer/        the saved tokenizer the ids come from
    DIR/train/*.ds        token ids, dtype manifest["token_dtype"] (uint16/uint32)
    DIR/train/*.ds.index  little-endian uint64: each document's END offset (in
                          tokens) within its shard; every document ends with eos
    DIR/heldout/*.ds ...  the same for the held-out split

The canonical order of a split is its shards sorted by file name, documents
in order. A split read here is one stream of token ids over those shards
(`TokenStream`); `Blocks` cuts it into rows of ``block_size`` tokens, the
tail that does not fill a row dropped, exactly as `data.pack_blocks` cuts the
tokens of a corpus, so the same documents give the same rows either way.

Contract
========

- Nothing is read until it is asked for: opening a folder reads the manifest
  and the shard files' sizes; a row reads its ``block_size`` tokens from the
  memory map (`TokenStream.tokens_read` counts them). Memory and start-up do
  not grow with the dataset.
- `open_prepared` refuses a missing folder, one without ``manifest.json``
  (a prepare job not finished), a manifest of another format, and a shard
  whose size disagrees with the manifest: one `WorkloadError` line each,
  naming the fix.
- `write_shards` writes such a folder from token ids (tests, benchmarks);
  `write_prepared_texts` tokenizes texts into one, split as training splits
  a corpus (`data.split_indices`).
- ``python -m engine.workloads.shards measure --data DIR [train options]``
  runs one training step on DIR in a child process and prints JSON: time to
  the first step, RSS then, peak RSS, tokens read before it (benchmarks).

Importing this module imports numpy only; torch is imported by `Blocks`
when it builds a tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.workloads.common import WorkloadError

FORMAT = "llmconsole-prepare/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")
DTYPES: dict[str, Any] = {"uint16": np.uint16, "uint32": np.uint32}
INDEX_DTYPE = np.dtype("<u8")


def _fix(folder: Path) -> str:
    return (f"run a prepare job first (python -m engine.workloads.prepare --input ... "
            f"--output {folder}) and pass its output folder")


# ---------------------------------------------------------------- the manifest
def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a complete prepared folder, its keys checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkloadError(f"--data {folder}: no such folder; {_fix(folder)}")
    path = folder / MANIFEST
    if not path.is_file():
        raise WorkloadError(f"--data {folder}: no {MANIFEST} (not prepared data, or a prepare "
                            f"job that did not finish); {_fix(folder)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"--data {folder}: {MANIFEST} is unreadable ({exc}); "
                            f"{_fix(folder)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise WorkloadError(f"--data {folder}: {MANIFEST} has format {found!r}, expected "
                            f"{FORMAT!r}; {_fix(folder)}")
    if manifest.get("token_dtype") not in DTYPES:
        raise WorkloadError(f"--data {folder}: token_dtype {manifest.get('token_dtype')!r} "
                            f"in {MANIFEST}; expected one of {sorted(DTYPES)}")
    for key in ("vocab_size", "eos_id"):
        if not isinstance(manifest.get(key), int):
            raise WorkloadError(f"--data {folder}: {MANIFEST} has no integer {key!r}; "
                                f"{_fix(folder)}")
    if not isinstance(manifest.get("shards"), list):
        raise WorkloadError(f"--data {folder}: {MANIFEST} has no 'shards' list; "
                            f"{_fix(folder)}")
    return manifest


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class Shard:
    path: Path
    tokens: int
    documents: int


class TokenStream:
    """One split's shards in canonical order, read as one stream of ids."""

    def __init__(self, folder: Path, split: str, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.split = split
        self.dtype = np.dtype(DTYPES[manifest["token_dtype"]])
        entries = sorted((s for s in manifest["shards"] if s.get("split") == split),
                         key=lambda s: str(s.get("file")))
        self.shards: list[Shard] = []
        for entry in entries:
            path = self.folder / str(entry["file"])
            tokens = int(entry.get("tokens", -1))
            try:
                size = path.stat().st_size
            except OSError:
                raise WorkloadError(f"--data {self.folder}: shard {entry['file']} is missing; "
                                    "the folder is damaged: run the prepare job again") from None
            if size != tokens * self.dtype.itemsize:
                raise WorkloadError(f"--data {self.folder}: shard {entry['file']} has {size} "
                                    f"bytes, the manifest says {tokens} {self.dtype.name} "
                                    "tokens; the folder is damaged: run the prepare job again")
            self.shards.append(Shard(path, tokens, int(entry.get("documents", 0))))
        self.starts = np.zeros(len(self.shards) + 1, dtype=np.int64)
        np.cumsum([s.tokens for s in self.shards], out=self.starts[1:])
        self._maps: dict[int, np.memmap] = {}
        self.tokens_read = 0

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def _map(self, k: int) -> np.memmap:
        if k not in self._maps:
            self._maps[k] = np.memmap(self.shards[k].path, dtype=self.dtype, mode="r")
        return self._maps[k]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64 (may span shards)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"tokens [{start}, {stop}) outside a stream of {len(self)}")
        out = np.empty(stop - start, dtype=np.int64)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo, hi = int(self.starts[k]), int(self.starts[k + 1])
            end = min(stop, hi)
            out[pos - start:end - start] = self._map(k)[pos - lo:end - lo]
            pos = end
            k += 1
        self.tokens_read += stop - start
        return out

    def document_ends(self, k: int) -> np.ndarray:
        """Shard `k`'s document index (end offsets within the shard)."""
        index = self.shards[k].path.with_name(self.shards[k].path.name + ".index")
        if not index.is_file():
            raise WorkloadError(f"--data {self.folder}: {index.name} is missing; the folder "
                                "is damaged: run the prepare job again")
        return np.memmap(index, dtype=INDEX_DTYPE, mode="r")

    def iter_documents(self) -> Iterable[np.ndarray]:
        """Every document's ids (eos included), in canonical order."""
        for k in range(len(self.shards)):
            begin = 0
            for end in self.document_ends(k):
                yield self.read(int(self.starts[k]) + begin, int(self.starts[k]) + int(end))
                begin = int(end)


class Blocks:
    """Rows of `block_size` tokens over a stream, the tail dropped: indexed
    by a row, a slice or a list of rows, it reads only those rows and gives
    a LongTensor (rows, block_size)."""

    def __init__(self, stream: TokenStream, block_size: int) -> None:
        self.stream = stream
        self.block_size = block_size
        self.rows = len(stream) // block_size

    def __len__(self) -> int:
        return self.rows

    def numpy(self, rows: Sequence[int]) -> np.ndarray:
        out = np.empty((len(rows), self.block_size), dtype=np.int64)
        for i, r in enumerate(rows):
            r = int(r)
            if not 0 <= r < self.rows:
                raise IndexError(f"row {r} outside {self.rows} rows")
            out[i] = self.stream.read(r * self.block_size, (r + 1) * self.block_size)
        return out

    def __getitem__(self, key: Any) -> Any:
        import torch

        if isinstance(key, slice):
            rows: Sequence[int] = range(*key.indices(self.rows))
        elif isinstance(key, int | np.integer):
            return torch.from_numpy(self.numpy([int(key)])[0])
        else:
            rows = [int(r) for r in key]
        return torch.from_numpy(self.numpy(rows))


@dataclass
class Prepared:
    """A prepared folder opened for reading."""

    folder: Path
    manifest: dict[str, Any]
    train: TokenStream
    heldout: TokenStream

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / "tokenizer"

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokens_read(self) -> int:
        return self.train.tokens_read + self.heldout.tokens_read

    def blocks(self, split: str, block_size: int) -> Blocks:
        stream = self.train if split == "train" else self.heldout
        b = Blocks(stream, block_size)
        if not len(b):
            raise WorkloadError(f"--data {self.folder}: the {split} split has {len(stream)} "
                                f"tokens, fewer than one block of {block_size}; use a smaller "
                                "--block-size or prepare more text")
        return b


def open_prepared(folder: Path) -> Prepared:
    """A complete prepared folder (see the module docstring), nothing read yet."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    if not (folder / "tokenizer").is_dir():
        raise WorkloadError(f"--data {folder}: no tokenizer/ folder; {_fix(folder)}")
    return Prepared(folder, manifest, TokenStream(folder, "train", manifest),
                    TokenStream(folder, "heldout", manifest))


def check_tokenizer(prepared: Prepared, tokenizer: Any, what: str,
                    fix: str = "leave --tokenizer out, or prepare the data with this "
                               "tokenizer (prepare --tokenizer DIR)") -> None:
    """Refuse a tokenizer whose vocabulary is not the data's; `fix` ends
    the message."""
    data_tok = load_data_tokenizer(prepared)
    if tokenizer.get_vocab() != data_tok.get_vocab() or \
            tokenizer.eos_token_id != data_tok.eos_token_id:
        raise WorkloadError(f"{what} disagrees with the tokenizer of --data {prepared.folder} "
                            f"({len(tokenizer)} vs {len(data_tok)} tokens, eos "
                            f"{tokenizer.eos_token_id} vs {data_tok.eos_token_id}); the ids "
                            f"were made by the data's: {fix}")


def check_model_vocab(prepared: Prepared, model_vocab: int, what: str) -> None:
    """Refuse a model that cannot embed every id of the data."""
    if model_vocab < prepared.vocab_size:
        raise WorkloadError(f"{what} has a vocabulary of {model_vocab} tokens, the ids of "
                            f"--data {prepared.folder} go up to {prepared.vocab_size}; use a "
                            "model trained with the data's tokenizer, or prepare the data with "
                            "the model's tokenizer (prepare --tokenizer MODEL)")


def load_data_tokenizer(prepared: Prepared) -> Any:
    from engine.workloads.data import load_tokenizer

    return load_tokenizer(prepared.tokenizer_folder)


# ---------------------------------------------------------------- writing
def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class _ShardWriter:
    """One split's shards: documents appended, a new shard every
    `docs_per_shard` documents, each with its index."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, eos_id: int,
                 docs_per_shard: int) -> None:
        self.folder, self.split, self.dtype = folder, split, dtype
        self.eos = np.array([eos_id], dtype=dtype).tobytes()
        self.docs_per_shard = docs_per_shard
        self.written: list[dict[str, Any]] = []
        self.fh: Any = None
        self.ends: list[int] = []

    def add(self, ids: np.ndarray) -> None:
        if self.fh is None:
            self.fh = open(self.folder / self._name(), "wb")  # noqa: SIM115
        self.fh.write(ids.astype(self.dtype).tobytes())
        self.fh.write(self.eos)
        self.ends.append((self.ends[-1] if self.ends else 0) + ids.size + 1)
        if len(self.ends) >= self.docs_per_shard:
            self._finish()

    def _name(self) -> str:
        return f"{self.split}/{len(self.written):05d}.ds"

    def _finish(self) -> None:
        if self.fh is None:
            return
        self.fh.close()
        name = self._name()
        np.asarray(self.ends, dtype=INDEX_DTYPE).tofile(self.folder / f"{name}.index")
        self.written.append({"split": self.split, "file": name, "documents": len(self.ends),
                             "tokens": self.ends[-1]})
        self.fh, self.ends = None, []

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.written


def write_shards(folder: Path, splits: dict[str, Iterable[Sequence[int] | np.ndarray]], *,
                 vocab_size: int, eos_id: int, tokenizer: Any = None,
                 docs_per_shard: int = 1000, extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write a prepared folder from token ids: ``splits`` maps "train" and
    "heldout" to documents (ids without eos; eos is appended to each). The
    documents stream to disk; `tokenizer` (a transformers tokenizer) is
    saved as ``tokenizer/``; ``manifest.json`` is written last, atomically.
    Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype_name = token_dtype(vocab_size)
    dtype = np.dtype(DTYPES[dtype_name])
    shards: list[dict[str, Any]] = []
    totals = {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    for split in SPLITS:
        (folder / split).mkdir(exist_ok=True)
        writer = _ShardWriter(folder, split, dtype, eos_id, docs_per_shard)
        for doc in splits.get(split, ()):
            ids = np.asarray(doc, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(f"token id outside [0, {vocab_size})")
            writer.add(ids)
            totals[split]["tokens"] += ids.size + 1
            totals[split]["documents"] += 1
        shards += writer.close()
    if tokenizer is not None:
        shutil.rmtree(folder / "tokenizer", ignore_errors=True)
        tokenizer.save_pretrained(str(folder / "tokenizer"))
    documents = sum(t["documents"] for t in totals.values())
    manifest: dict[str, Any] = {
        "format": FORMAT, "documents_in": documents, "documents_out": documents,
        "removed": {}, "bad": [], "bad_total": 0,
        "tokens": {s: totals[s]["tokens"] for s in SPLITS},
        "documents": {s: totals[s]["documents"] for s in SPLITS},
        "shards": shards, "token_dtype": dtype_name, "vocab_size": vocab_size,
        "eos_id": eos_id, "tokenizer": {"source": "write_shards", "sha256": ""},
        "inputs": [], "config": {}, "seconds": 0.0, **(extra or {})}
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def write_prepared_texts(folder: Path, texts: Sequence[str], tokenizer: Any,
                         eval_fraction: float = 0.05, docs_per_shard: int = 1000
                         ) -> dict[str, Any]:
    """Tokenize `texts` into a prepared folder, split as training splits a
    corpus (`data.split_indices`), so that ``--data`` on it reads the rows
    ``--corpus`` on the same texts packs."""
    from engine.workloads.data import split_indices

    train_i, held_i = split_indices(texts, eval_fraction)

    def encode(idx: list[int]) -> list[list[int]]:
        backend = tokenizer.backend_tokenizer
        return [e.ids for e in backend.encode_batch([texts[i] for i in idx],
                                                    add_special_tokens=False)]

    return write_shards(folder, {"train": encode(train_i), "heldout": encode(held_i)},
                        vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id,
                        tokenizer=tokenizer, docs_per_shard=docs_per_shard)


# ---------------------------------------------------------------- measuring
def measure_first_step(data: Path, train_args: Sequence[str] = (),
                       env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one training step on prepared folder `data` in a child process
    (``engine.workloads.train --data DATA --max-steps 1`` plus `train_args`,
    e.g. ``["--model", "tiny", "--block-size", "128"]``) and return its
    ``startup`` record: ``first_step_s`` (process start to the end of step
    1), ``rss_first_step_bytes`` and ``peak_rss_bytes`` then,
    ``tokens_read_first_step``; plus ``child_peak_rss_bytes`` (the whole
    run, from the OS)."""
    with tempfile.TemporaryDirectory(prefix="first-step-") as tmp:
        out = Path(tmp) / "out"
        argv = [sys.executable, "-m", "engine.workloads.train", "--output", str(out),
                "--data", str(data), "--max-steps", "1", "--eval-every", "1",
                "--checkpoint-every", "1000", "--warmup-steps", "0", *train_args]
        with open(Path(tmp) / "stderr", "w+", encoding="utf-8") as err:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
            # wait4: this child's own peak RSS (ru_maxrss, KiB on Linux)
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            tail = (err.read().strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        if proc.returncode != 0:
            raise WorkloadError(f"the training step on {data} failed: {tail}")
        results = json.loads((out / "results.json").read_text())
    record = dict(results["startup"])
    record["child_peak_rss_bytes"] = usage.ru_maxrss * 1024
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.workloads.shards",
                                description="Prepared data: measure a first training step.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time and memory to the first training step on DIR")
    m.add_argument("--data", required=True, type=Path)
    a, rest = p.parse_known_args(argv)
    print(json.dumps(measure_first_step(a.data, rest), sort_keys=True))
    return 0


if __name__ == "__main__":
    from engine.workloads.common import run_main

    run_main(main)
