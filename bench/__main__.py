"""`make bench`: run every benchmark, print one table, save the figures to
bench/results/latest.json."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import (
    cli_speed,
    cluster,
    cluster_ssh,
    console,
    data,
    engine_api,
    scheduling,
    search,
    structured,
    workloads,
)
from bench.harness import Figure, machine, save, table

MODULES = (scheduling, engine_api, cli_speed, console, cluster, cluster_ssh, workloads, structured,
           search, data)


def main(argv: list[str]) -> int:
    """`python -m bench [NAME...]`: every benchmark, or the named ones
    (scheduling, engine_api, cli_speed, console, cluster, cluster_ssh, workloads,
    structured, search, data)."""
    names = {m.__name__.rsplit(".", 1)[-1]: m for m in MODULES}
    unknown = [a for a in argv if a not in names]
    if unknown:
        print(f"no benchmark {', '.join(unknown)}; choose from {', '.join(names)}",
              file=sys.stderr)
        return 2
    figures: list[Figure] = []
    for module in MODULES:
        if not argv or module.__name__.rsplit(".", 1)[-1] in argv:
            figures.extend(module.run())
    print(f"machine: {machine()}")
    print(table(figures))
    if argv:
        return 0  # a partial run does not replace the saved figures
    out = Path(__file__).resolve().parent / "results" / "latest.json"
    save(figures, out)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
