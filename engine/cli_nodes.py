"""`llmconsole nodes [ACTION]`: the cluster's nodes from the CLI. Without an
action, the list: every node (state, GPUs, slots, load, its jobs) and every
GPU (model, utilisation, memory, owning job)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from engine.cli_common import CliError, _client, _emit, _printable, _table

Action = Callable[[argparse.Namespace], int]


def nodes_table(nodes: list[dict[str, Any]]) -> str:
    lines = []
    rows = []
    for n in nodes:
        load = n.get("load") or []
        state = n.get("state") or ("up" if n["up"] else "down")
        rows.append([_printable(n["name"]), state if state == "up" else state.upper(),
                     str(len(n["gpus"])), f"{n['slots_used']}/{n['slots']}",
                     "-" if n.get("cpu_percent") is None else f"{n['cpu_percent']:.0f}%",
                     "-" if n.get("memory_percent") is None else f"{n['memory_percent']:.0f}%",
                     "-" if not load else f"{load[0]:.2f}",
                     "-" if n.get("rtt_ms") is None else f"{n['rtt_ms']:.0f}ms",
                     ",".join(str(j) for j in n["jobs"]) or "-",
                     _printable(n.get("state_reason") or n.get("error") or "")])
    lines.append(_table(rows, ["NODE", "STATE", "GPUS", "SLOTS", "CPU", "MEM", "LOAD", "RTT",
                               "JOBS", "REASON"]))
    gpu_rows = []
    for n in nodes:
        for g in n["gpus"]:
            used, total = g.get("memory_used_mb"), g.get("memory_total_mb")
            gpu_rows.append([
                _printable(n["name"]), str(g["index"]), _printable(g.get("name") or "-"),
                "-" if g.get("util_percent") is None else f"{g['util_percent']:.0f}%",
                "-" if used is None or not total else f"{used / 1024:.1f}/{total / 1024:.0f} GiB",
                "-" if g.get("job") is None else str(g["job"]),
            ])
    if gpu_rows:
        lines.append("")
        lines.append(_table(gpu_rows, ["NODE", "GPU", "MODEL", "UTIL", "MEMORY", "JOB"]))
    else:
        lines.append("no GPUs on any node (CPU-only cluster)")
    return "\n".join(lines)




def cmd_list(args: argparse.Namespace) -> int:
    _emit(args, _client().nodes(), nodes_table)
    return 0


def _state_line(node: dict[str, Any]) -> str:
    reason = node.get("state_reason")
    return f"node {_printable(node['name'])}: {node.get('state', '?')}" + (
        f" ({_printable(reason)})" if reason else "")


def cmd_drain(args: argparse.Namespace) -> int:
    _emit(args, _client().drain(args.node, args.reason or ""), _state_line)
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    _emit(args, _client().undrain(args.node), _state_line)
    return 0


def check_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for c in r["checks"]:
            mark = "ok" if c["ok"] else "-" if c["ok"] is None else "FAIL"
            rows.append([_printable(r["node"]), c["check"], mark, _printable(c["detail"])])
    failed = [r["node"] for r in results if not r["ok"]]
    verdict = ("every check passed" if not failed else
               f"checks failed on {', '.join(_printable(n) for n in failed)}")
    return _table(rows, ["NODE", "CHECK", "OK", "DETAIL"]) + "\n" + verdict


def cmd_check(args: argparse.Namespace) -> int:
    results = _client().check_nodes(args.node)
    _emit(args, results, check_table)
    return 0 if all(r["ok"] for r in results) else 1


def cmd_trust(args: argparse.Namespace) -> int:
    """Client-side, no engine needed: scan NODE's host key, show it, ask,
    and write it to the cluster's known_hosts (engine.hostkeys.trust)."""
    from engine import hostkeys
    from engine.profiles import load_cluster_profile
    from engine.transport.ssh import query_argv, ssh_config_path, ssh_env

    cluster = load_cluster_profile(args.cluster or os.environ.get("LLMCONSOLE_CLUSTER"))
    try:
        node = cluster.node(args.node)
    except KeyError:
        names = ", ".join(n.name for n in cluster.nodes)
        raise CliError(f"nodes trust: no node {_printable(args.node)} in cluster "
                       f"{_printable(cluster.name)} (its nodes: {_printable(names)}); name one, "
                       f"or another cluster with --cluster") from None
    if node.is_local:
        raise CliError(f"nodes trust: {_printable(node.name)} is the head node, reached "
                       f"without ssh: it has no host key to trust")
    shown = sys.stderr if args.json else sys.stdout

    def confirm(question: str) -> bool:
        print(_printable(question), file=shown, flush=True)
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise CliError("nodes trust: stdin is not a terminal, so nothing was asked or "
                           "written; compare the fingerprint above with the node's and add "
                           "--yes")
        return input("trust it? [y/N] ").strip().lower() in ("y", "yes")

    config = ssh_config_path()
    done = hostkeys.trust(node.name, query_argv(node, known_hosts=cluster.known_hosts,
                                                ssh_config=config),
                          known_hosts=cluster.known_hosts, replace=args.replace,
                          confirm=confirm, env=ssh_env())
    key = f"{done.key.label} key {done.key.fingerprint}"
    data = {"node": done.node, "host": done.name, "known_hosts": done.file,
            "type": done.key.type, "fingerprint": done.key.fingerprint, "added": done.added,
            "replaced": [k.fingerprint for k in done.replaced]}
    _emit(args, data, lambda _: (
        f"node {_printable(done.node)}: {key} written to {_printable(done.file)}; the engine "
        f"connects at its next try" if done.added else
        f"node {_printable(done.node)}: {key} is already trusted in {_printable(done.file)}"))
    return 0


def _trust_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="a node of the cluster profile")
    p.add_argument("--replace", action="store_true",
                   help="the node was reinstalled: replace the key known for it")
    p.add_argument("--yes", action="store_true",
                   help="write the key without asking (check its fingerprint first)")
    p.add_argument("--cluster", help="cluster profile (default: $LLMCONSOLE_CLUSTER)")


def _optional_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", nargs="?", help="one node (default: all)")


def _node_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="a node of the cluster (see `llmconsole nodes`)")


def _drain_arguments(p: argparse.ArgumentParser) -> None:
    _node_argument(p)
    p.add_argument("--reason", help="why, shown with the node's state")


# name -> (what it does, how to add its arguments, what runs it)
ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Action]] = {
    "list": ("nodes, their GPUs and who uses them (the default)", lambda p: None, cmd_list),
    "check": ("a doctor before launches: link, host key, software, GPUs, disk, clock, peers",
              _optional_node, cmd_check),
    "drain": ("no new work on NODE (its running jobs go on); admins only", _drain_arguments,
              cmd_drain),
    "undrain": ("NODE takes new work again", _node_argument, cmd_undrain),
    "trust": ("show NODE's host-key fingerprint, ask, and add it to known_hosts",
              _trust_arguments, cmd_trust),
}


def add_actions(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="node_action", metavar="ACTION")
    for name, (help_, arguments, run) in ACTIONS.items():
        p = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        arguments(p)
        p.set_defaults(node_run=run)


def cmd_nodes(args: argparse.Namespace) -> int:
    run: Action = getattr(args, "node_run", None) or cmd_list
    return run(args)
