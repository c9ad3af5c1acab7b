"""The software a node runs, as its agent reports it in `hello`, and what
makes two nodes incompatible. Standard library only (the agent reads the
versions of torch and horovod from their installed metadata, without
importing them).

The requirement: the same llmconsole, Python (major.minor), torch and
horovod on the engine's host and on every node; a shared home, or the same
`make setup` at the same path, gives that. A node that differs is
`incompatible`: jobs are not placed there, and the reason names both sides
and the fix.
"""

from __future__ import annotations

import importlib.metadata
import platform

import engine

# what must agree, in the order differences are told
COMPARED = ("llmconsole", "python", "torch", "horovod")
NOT_INSTALLED = "not installed"


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def software_versions() -> dict[str, str]:
    """This machine's versions of what the nodes must share."""
    return {
        "llmconsole": engine.__version__,
        "python": platform.python_version(),
        "torch": _installed("torch"),
        "horovod": _installed("horovod"),
    }


def _comparable(name: str, version: str) -> str:
    if name == "python":  # a patch release does not change what runs
        return ".".join(version.split(".")[:2])
    return version


def incompatibilities(head: dict[str, str], node: dict[str, str], node_name: str
                      ) -> list[str]:
    """How `node`'s software differs from the head's, one phrase each
    ("torch 2.13.0 here, 2.9.1 on gpu1"); empty when they agree. A version
    the node did not report (an older agent) is a difference too."""
    out = []
    for name in COMPARED:
        mine, theirs = head.get(name, NOT_INSTALLED), node.get(name, "unknown")
        if _comparable(name, mine) != _comparable(name, theirs):
            out.append(f"{name} {mine} here, {theirs} on {node_name}")
    return out


def incompatible_reason(head: dict[str, str], node: dict[str, str], node_name: str
                        ) -> str | None:
    """One line with the fix, or None when the node may run jobs."""
    differences = incompatibilities(head, node, node_name)
    if not differences:
        return None
    return ("incompatible: " + "; ".join(differences) + ": install the same llmconsole and "
            "its .venv at the same path on every node (a shared home, or the same "
            "`make setup`)")
