"""Deduplication for prepare: exact copies of the normalised text, then
near copies by MinHash LSH; the kept copy of each group is the first in the
canonical order (task, position in task; see `prepare_io.shard`).

Contract
========

- Exact: datatrove's three exact-dedup stages (`ExactDedupSignature` in the
  filter stage, `ExactFindDedups` in one task, `ExactDedupFilter` wherever the
  filtered documents are read again), a 64-bit xxhash of the text. Among equal
  hashes datatrove keeps the highest priority, then the lowest document index:
  the reader sets priority ``65535 - rank`` (`prepare_io.PRIORITY_MAX`), so the
  first copy in the canonical order is kept.
- Near: datatrove's `MinhashDedupSignature`, `MinhashDedupBuckets` and
  `MinhashDedupFilter` on word 5-gram shingles, 64-bit hashes, with
  `FirstKeptCluster` in place of `MinhashDedupCluster`: the same union of the
  bucket pairs, but every cluster's root is its smallest (task, index), so the
  first copy is the one kept (datatrove's union by size keeps the root of the
  larger half: deterministic, but not the first).
- `minhash_config(threshold)` picks the LSH bands b and rows r (b*r <= 128
  hashes) that minimise the sum of the false-positive area below the
  threshold and the false-negative area above it, for the probability
  ``1 - (1 - s**r)**b`` that a pair of Jaccard similarity s is found (the
  rule datasketch's MinHashLSH uses). Threshold 0.7 gives 14 bands x 9 rows.
- `Count` is a pass-through step that counts documents (``documents``) into
  a counter file: before and after a dedup filter, the difference is what
  it removed.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from engine.workloads.prepare_counts import Counts

MAX_HASHES = 128
N_GRAMS = 5


def document_text(doc: Document) -> str:
    return doc.text


def document_priority(doc: Document) -> int:
    return int(doc.metadata.get("priority", 1))


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=document_text, document_priority=document_priority,
                            hash_config=HashConfig(precision=64))


def detection(s: float, bands: int, rows: int) -> float:
    """The probability that LSH with `bands` x `rows` pairs two documents of
    Jaccard similarity `s`."""
    return 1.0 - (1.0 - s ** rows) ** bands


@lru_cache(maxsize=32)
def lsh_shape(threshold: float, max_hashes: int = MAX_HASHES) -> tuple[int, int]:
    """(bands, rows) for `threshold` (see the module docstring)."""
    steps = 100
    best: tuple[float, int, int] | None = None
    for rows in range(1, max_hashes + 1):
        for bands in range(1, max_hashes // rows + 1):
            fp = sum(detection(threshold * i / steps, bands, rows)
                     for i in range(steps)) * threshold / steps
            fn = sum(1 - detection(threshold + (1 - threshold) * i / steps, bands, rows)
                     for i in range(steps)) * (1 - threshold) / steps
            if best is None or fp + fn < best[0]:
                best = (fp + fn, bands, rows)
    assert best is not None
    return best[1], best[2]


def minhash_config(threshold: float) -> MinhashConfig:
    bands, rows = lsh_shape(round(threshold, 4))
    return MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=bands,
                         hashes_per_bucket=rows, n_grams=N_GRAMS)


class FirstKeptCluster(PipelineStep):
    """MinHash stage 3 (one task): clusters the pairs of the buckets stage
    and writes, per task of the signature stage, the sorted indices of the
    documents to remove (``<rank:06d>.remove``, uint32, what
    `MinhashDedupFilter` reads)."""

    name = "llmconsole MinHash clusters (first kept)"
    type = "🫂 - DEDUP"

    def __init__(self, input_folder: str, output_folder: str) -> None:
        super().__init__()
        self.input_folder = input_folder
        self.output_folder = output_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.input_folder)
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def root(x: tuple[int, int]) -> tuple[int, int]:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for name in sorted(folder.list_files(glob_pattern="*.dups")):
            with folder.open(name, "rb") as fh:
                for f1, d1, f2, d2 in read_tuples_from_file(fh, "4I", lines_to_buffer=5):
                    a, b = root((f1, d1)), root((f2, d2))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        removed: dict[int, list[int]] = {}
        for node in sorted(parent):
            if root(node) != node:
                removed.setdefault(node[0], []).append(node[1])
        out = Path(self.output_folder)
        out.mkdir(parents=True, exist_ok=True)
        for file, docs in removed.items():
            (out / f"{file:06d}.remove").write_bytes(
                b"".join(struct.pack("<I", d) for d in docs))
            self.stat_update("to_remove", value=len(docs))
        return
        yield  # a generator: the executor drains it


class Count(PipelineStep):
    """Counts the documents passing through (counter `name` of `stage`)."""

    name = "llmconsole count"
    type = "📊 - STATS"

    def __init__(self, work: str, stage: str, counter: str) -> None:
        super().__init__()
        self.work, self.stage, self.counter = work, stage, counter

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        counts = Counts(Path(self.work), self.stage, self.counter, rank)
        counts.values.update(documents=0)
        for doc in data or ():
            counts.add("documents")
            counts.flush()
            yield doc
        counts.finish()
