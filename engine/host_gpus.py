"""This host's GPUs for one rank of a horovodrun job across nodes, run as

    python -I -S host_gpus.py -- PROGRAM [ARG...]

horovodrun starts every rank with the same environment, copied from the
launching node, so one CUDA_VISIBLE_DEVICES cannot fit hosts that were given
different GPUs. The engine puts the whole allocation in
LLMCONSOLE_HOST_GPUS ("host=0,1;host2=2,3", hosts as written in `-H`);
horovod tells each rank its host in HOROVOD_HOSTNAME. This script sets
CUDA_VISIBLE_DEVICES to that host's GPUs and execs PROGRAM. A host missing
from the map is an error (exit 2), never a silent "all GPUs".

Standard library only, no package imports: it runs on every node under
`-I -S`, like the agent's supervisor.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "LLMCONSOLE_HOST_GPUS"


def parse(text: str) -> dict[str, str]:
    """"h1=0,1;h2=2" -> {"h1": "0,1", "h2": "2"}."""
    out = {}
    for item in text.split(";"):
        host, sep, gpus = item.partition("=")
        if sep and host:
            out[host] = gpus
    return out


def format_map(by_host: dict[str, tuple[int, ...]]) -> str:
    return ";".join(f"{host}={','.join(str(g) for g in gpus)}" for host, gpus in by_host.items())


def main(args: list[str]) -> int:
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: host_gpus.py -- PROGRAM [ARG...]", file=sys.stderr)
        return 2
    host = os.environ.get("HOROVOD_HOSTNAME", "")
    table = parse(os.environ.get(VARIABLE, ""))
    if host not in table:
        print(f"host_gpus: host {host!r} is not in {VARIABLE}={os.environ.get(VARIABLE, '')!r}",
              file=sys.stderr)
        return 2
    os.environ["CUDA_VISIBLE_DEVICES"] = table[host]
    try:
        os.execvp(args[0], args)  # noqa: S606 — an argv list, no shell
    except OSError as e:
        print(f"host_gpus: cannot run {args[0]}: {e}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
