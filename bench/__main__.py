"""`make bench`: run every benchmark, print one table, save the figures to
bench/results/latest.json."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import console, engine_api, scheduling, workloads
from bench.harness import Figure, machine, save, table

MODULES = (scheduling, engine_api, console, workloads)


def main() -> int:
    figures: list[Figure] = []
    for module in MODULES:
        figures.extend(module.run())
    print(f"machine: {machine()}")
    print(table(figures))
    out = Path(__file__).resolve().parent / "results" / "latest.json"
    save(figures, out)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
