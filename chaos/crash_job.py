"""The job of the engine-crash campaign, run as `python crash_job.py STARTS
LINES INTERVAL`: it records its start, then prints numbered lines and writes
numbered metric steps at a steady pace, then exits 0.

- At start it appends one line "start <job> <attempt> <pid>" to STARTS with
  O_APPEND (one write, so lines of jobs starting together never interleave);
  <job> and <attempt> come from LLMCONSOLE_ATTEMPT ("7.1"). A (job, attempt)
  counted twice there was launched twice.
- Then, for k in 1..LINES: prints "line <job> <k>" (flushed) and appends
  {"step": k, "loss": 1/k} to $LLMCONSOLE_RUN_DIR/metrics.jsonl, sleeping
  INTERVAL seconds between steps. The campaign checks that the engine's copy
  of the output and its metrics hold each k exactly once, in order.

Standard library only: it starts in a bare job environment.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    starts, lines, interval = argv[0], int(argv[1]), float(argv[2])
    job, _, attempt = os.environ.get("LLMCONSOLE_ATTEMPT", "0.0").partition(".")
    fd = os.open(starts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"start {job} {attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    metrics = os.path.join(os.environ.get("LLMCONSOLE_RUN_DIR", "."), "metrics.jsonl")
    with open(metrics, "a", encoding="utf-8") as points:
        for k in range(1, lines + 1):
            print(f"line {job} {k}", flush=True)
            points.write(json.dumps({"step": k, "loss": 1.0 / k}) + "\n")
            points.flush()
            time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
