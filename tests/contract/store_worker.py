"""A process for the store's multi-process contract tests (not a test file).

    store_worker.py submit  DB N TAG GOFILE   wait for GOFILE, submit N jobs one
                                              by one, print their ids (JSON)
    store_worker.py batches DB SIZE READYFILE submit_many batches of SIZE jobs
                                              forever; touch READYFILE after the
                                              first commit (to be kill -9'd)
    store_worker.py open    DB GOFILE         wait for GOFILE, open DB (maybe not
                                              there yet), submit one job, print its id
    store_worker.py race    DB JOB GOFILE     wait for GOFILE, try QUEUED ->
                                              STARTING on attempt 1 of JOB; print
                                              "won" or "stale"
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from engine.lifecycle import JobState
from engine.model import JobSpec, Placement
from engine.store import StaleState, Store


def _wait(go: Path) -> None:
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go file never appeared")
        time.sleep(0.001)


def _spec(name: str) -> JobSpec:
    return JobSpec(name=name, kind="command", argv=("echo", name))


def main(argv: list[str]) -> int:
    mode, db = argv[0], Path(argv[1])
    pid = os.getpid()
    if mode == "submit":
        n, tag, go = int(argv[2]), argv[3], Path(argv[4])
        _wait(go)
        with Store(db) as store:
            ids = [
                store.submit(_spec(f"{tag}-{i}"), 1000, actor=f"w{pid}", now=time.time()).id
                for i in range(n)
            ]
        print(json.dumps(ids))
        return 0
    if mode == "batches":
        size, ready = int(argv[2]), Path(argv[3])
        with Store(db) as store:
            batch = 0
            while True:
                items = [(_spec(f"b{batch}-{i}"), 1000, ()) for i in range(size)]
                store.submit_many(items, actor=f"w{pid}", now=time.time())
                if batch == 0:
                    ready.touch()
                batch += 1
    if mode == "open":
        _wait(Path(argv[2]))
        with Store(db) as store:
            print(store.submit(_spec(f"open-{pid}"), 1000, actor=f"w{pid}", now=time.time()).id)
        return 0
    if mode == "race":
        job, go = int(argv[2]), Path(argv[3])
        with Store(db) as store:
            _wait(go)
            try:
                store.transition(
                    job, 1, JobState.QUEUED, JobState.STARTING,
                    cause="placed", actor=f"w{pid}", now=time.time(),
                    placements=[Placement(f"node-{pid}", (0,), 1)],
                )
            except StaleState as exc:
                print(f"stale {exc.current.value}")
            else:
                print("won")
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
