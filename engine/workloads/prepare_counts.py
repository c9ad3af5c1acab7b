"""Counters the prepare steps keep per task, on disk, for the parent's
progress records and for the manifest.

Contract
========

- A task (one datatrove rank of one stage) owns one file per counter name:
  ``<work>/counts/<stage>/<name>-<rank:05d>.json``, a JSON object of integer
  counts (``{"documents": 12, "bytes": 3400, ...}``) plus ``"done": true`` once
  the step has seen its last document. It is rewritten atomically (temporary
  file and rename) at most once a second while the step runs and once at its
  end, so a reader never sees half a file.
- A rank that is killed and run again rewrites its files from zero, so after
  a stage's completion markers are all present its ``done`` files are exact.
- `total` sums one counter over every rank of a stage (any part's, as they
  share the folder); it reads what is there now, so mid-stage it is a lower
  bound: what the progress records need.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: seconds between two rewrites of a running step's counter file.
FLUSH_EVERY_S = 1.0


def counts_dir(work: Path, stage: str) -> Path:
    return work / "counts" / stage


class Counts:
    """The counters of one step in one task; `add` and `flush` as it goes,
    `finish` at its end."""

    def __init__(self, work: Path, stage: str, name: str, rank: int) -> None:
        self.path = counts_dir(work, stage) / f"{name}-{rank:05d}.json"
        self.values: dict[str, Any] = {}
        self._last = 0.0

    def add(self, key: str, value: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + value

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < FLUSH_EVERY_S:
            return
        self._last = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.values, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def finish(self) -> None:
        self.values["done"] = True
        self.flush(force=True)


def read_all(work: Path, stage: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(rank, counts) of every counter file `name` of `stage`, by rank."""
    folder = counts_dir(work, stage)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"{name}-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced while read: the next poll sees it
        yield int(path.stem.rsplit("-", 1)[1]), data


def total(work: Path, stage: str, name: str, key: str) -> int:
    """Sum of `key` over every rank's counter file `name` of `stage`."""
    return sum(int(v.get(key, 0)) for _, v in read_all(work, stage, name))


def merged(work: Path, stage: str, name: str) -> dict[str, int]:
    """Every integer key of the counter files `name` of `stage`, summed."""
    out: dict[str, int] = {}
    for _, values in read_all(work, stage, name):
        for key, value in values.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out
