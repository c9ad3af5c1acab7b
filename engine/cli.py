"""The `llmconsole` command. Headless: it imports neither textual nor rich
(the screen is loaded only by the bare `llmconsole` command) and talks to
the engine only through `engine.client`, starting the daemon when none runs.
Every listing takes --json. Errors are one line on stderr and exit code 1
(2 for bad usage), never a traceback. Every user-controlled string it
prints (names, reasons, paths, descriptions, error messages) goes through
`_printable`, so control characters appear escaped, never raw; `logs`
writes the bytes the engine sent, unchanged. `engine status` exits 0 when
an engine answers, 3 when none runs, 4 when this user cannot reach the
socket (someone else's engine, or a path too long for a socket). The CLI
never starts an engine in a home that is not the caller's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.cli_common import (
    ACTIVE,
    EXIT_ERROR,
    EXIT_NO_ENGINE,
    EXIT_UNREACHABLE,
    NAME_WIDTH,
    STATES,
    CliError,
    _age,
    _client,
    _cut,
    _emit,
    _printable,
    _table,
)
from engine.errors import TooLarge, Unavailable, Unreachable, UserError

# typing's TYPE_CHECKING without importing typing (3 ms of every CLI call): the
# annotations are strings (from __future__ import annotations)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# ------------------------------------------------------------------ output
def _where(job: dict[str, Any]) -> str:
    parts = []
    for p in job.get("placements") or []:
        gpus = ",".join(str(g) for g in p["gpus"])
        parts.append(f"{p['node']}:{gpus}" if gpus else p["node"])
    return _printable(" ".join(parts) or "-")


def _jobs_table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs here (`llmconsole jobs --all` lists ended ones too)"
    rows = [[str(j["id"]), _cut(_printable(j["name"]), NAME_WIDTH), j["kind"], j["state"],
             str(j["attempt"]), _printable(j["owner"]), _age(j["submitted_at"]), _where(j),
             _printable(j.get("reason") or j.get("waiting") or "")]
            for j in jobs]
    return _table(rows, ["ID", "NAME", "KIND", "STATE", "TRY", "OWNER", "AGE", "WHERE", "REASON"])


def _show(job: dict[str, Any]) -> str:
    spec = job.get("spec", {})
    res = job["resources"]
    lines = [
        f"job {job['id']}: {_printable(job['name'])}",
        f"  state      {job['state']} (attempt {job['attempt']})"
        + (f" - {_printable(job['reason'])}" if job.get("reason") else "")
        + (f" - {_printable(job['waiting'])}" if job.get("waiting") else ""),
        f"  kind       {job['kind']}, launcher {job['launcher']}, "
        f"profile {_printable(job['profile'])}",
        f"  owner      {_printable(job['owner'])} (uid {job['owner_uid']}), "
        f"priority {job['priority']}",
        f"  resources  {res['nodes']} node(s) x {res['gpus_per_node']} GPU(s), "
        f"{res['cpus']} CPU slot(s), {res['memory_gb']} GB"
        + (f", on nodes with {', '.join(_printable(x) for x in res['nodes_with'])}"
           if res.get("nodes_with") else ""),
        f"  argv       {json.dumps(spec.get('argv', []))}",
    ]
    if job.get("output"):
        lines.append(f"  output     {_printable(job['output'])}")
    if job.get("after"):
        lines.append(f"  after      {', '.join(str(a) for a in job['after'])}")
    if job.get("exit_code") is not None:
        lines.append(f"  exit code  {job['exit_code']}")
    lines.append("  attempts")
    for a in job.get("attempts", []):
        where = _printable(" ".join(f"{p['node']}:{','.join(map(str, p['gpus']))}".rstrip(":")
                                    for p in a["placements"]) or "-")
        lines.append(f"    #{a['number']} {a['state']:<10} on {where}  pid {a['pid'] or '-'}  "
                     f"exit {a['exit_code'] if a['exit_code'] is not None else '-'}"
                     + (f"  ({_printable(a['reason'])})" if a.get("reason") else ""))
    lines.append("  history")
    for e in job.get("history", []):
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        lines.append(f"    {stamp} #{e['attempt']} {e['from'] or '-'} -> {e['to']}: "
                     f"{_printable(e['cause'])} [{_printable(e['actor'])}]")
    return "\n".join(lines)


# ----------------------------------------------------------------- engine



# --------------------------------------------------------------- commands
def _submitted(job: dict[str, Any]) -> str:
    return (f"submitted job {job['id']} ({_printable(job['name'])}): {job['state']}"
            + (f"\n  output {_printable(job['output'])}" if job.get("output") else ""))


class _LooksUp(Exception):
    """The submission would look up an earlier job's output (an @ reference)."""


def cmd_submit(args: argparse.Namespace) -> int:
    """Validated with every check of engine.pipelines.prepare; a payload
    that depends only on the profile, --set and --name (a command job) comes
    from engine.spec_cache when it was made before, without pydantic."""
    from engine import spec_cache

    client = _client()
    overrides = args.set or ()
    payload = spec_cache.load_payload(args.profile, overrides, args.name)
    if payload is not None:
        try:
            job = client.submit(payload, after=args.after or ())
        except TooLarge:
            pass  # the full path below says which field is too large
        else:
            _emit(args, job, _submitted)
            return 0

    from engine import pipelines
    from engine.paths import outputs_dir

    found: dict[str, str | None] = {}

    def find_output(profile: str) -> str | None:
        if profile not in found:
            found[profile] = pipelines.newest_output(client.jobs(states=["succeeded"]),
                                                     profile)
        return found[profile]

    sub = pipelines.prepare(args.profile, args.set or (), outputs_dir(),
                            pipelines.make_stamp(time.time(), pipelines.submission_salt()),
                            find_output,
                            name=args.name, after=args.after or (), load=spec_cache.load)
    try:
        if sub.pipeline is None:
            spec, after = sub.items[0]
            job = client.submit(spec, after=[a for a in after if isinstance(a, int)])
            _emit(args, job, _submitted)
            spec_cache.store_payload(args.profile, overrides, args.name,
                                     lambda stamp, outputs: _payloads(args, stamp, outputs))
            return 0
        submitted = client.submit_many(sub.items)
    except TooLarge:
        raise CliError(_too_large(args.profile, sub.items)) from None

    def text(js: list[dict[str, Any]]) -> str:
        lines = [f"submitted pipeline {_printable(sub.pipeline or '')}: {len(js)} jobs"]
        for j in js:
            waits = f" after {', '.join(map(str, j['after']))}" if j.get("after") else ""
            lines.append(f"  job {j['id']:<5} {_printable(j['name'])}: {j['state']}{waits}")
        outputs = {j["output"] for j in js if j.get("output")}
        if outputs:
            lines.append(f"  outputs under {_printable(os.path.commonpath(sorted(outputs)))}")
        return "\n".join(lines)

    _emit(args, submitted, text)
    return 0


def _payloads(args: argparse.Namespace, stamp: str, outputs: Path
              ) -> list[dict[str, Any]] | None:
    """The payloads `submit` would send with this stamp and outputs root;
    None when it looks up an earlier job's output."""
    from engine import pipelines, spec_cache

    def looks_up(_profile: str) -> str | None:
        raise _LooksUp

    try:
        sub = pipelines.prepare(args.profile, args.set or (), outputs, stamp, looks_up,
                                name=args.name, load=spec_cache.load)
    except _LooksUp:
        return None
    return [spec for spec, _after in sub.items] if sub.pipeline is None else None


def _too_large(profile: str, items: Sequence[tuple[dict[str, Any], Any]]) -> str:
    """Why a submission is over the engine's request limit: the profile's
    file, the size, and its largest field."""
    from engine import profiles
    from engine.errors import MAX_REQUEST_BYTES

    try:
        where = f"{profile} ({profiles.find_profile(profile)})"
    except UserError:
        where = profile
    size = len(json.dumps([spec for spec, _after in items]).encode())
    field, biggest = max((_largest_field(spec) for spec, _after in items), key=lambda f: f[1])
    return (f"profile {where} makes a request of {size} bytes, over the engine's limit of "
            f"{MAX_REQUEST_BYTES} bytes (its largest field, {field}, is {biggest} bytes); "
            f"make the profile smaller, or put large data in files and name them in its args")


def _largest_field(value: Any, key: str = "spec") -> tuple[str, int]:
    """The dotted key of the largest leaf of `value` and its size in JSON."""
    if isinstance(value, dict) and value:
        return max((_largest_field(v, f"{key}.{k}") for k, v in value.items()),
                   key=lambda f: f[1])
    if isinstance(value, list) and value:
        return max((_largest_field(v, f"{key}[{i}]") for i, v in enumerate(value)),
                   key=lambda f: f[1])
    return _printable(key), len(json.dumps(value).encode())


def cmd_jobs(args: argparse.Namespace) -> int:
    states: Sequence[str] = args.state or (() if args.all else ACTIVE)
    owner = os.getuid() if args.mine else None
    jobs = _client().jobs(states=states, owner=owner, limit=args.limit)
    _emit(args, jobs, _jobs_table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The job; for a prepare job whose output holds manifest.json, its
    summary after it (and the manifest itself under "manifest" in --json)."""
    job = _client().job(args.id)
    manifest = _manifest(job)
    if manifest is not None and args.json:
        job["manifest"] = manifest
    _emit(args, job, lambda j: _show(j) + (_prepared(manifest) if manifest is not None else ""))
    return 0


def _manifest(job: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest.json in the job's output folder, if it has one."""
    output = job.get("output")
    if not output:
        return None
    # here, not at the top: the engine and its CLI run without the workloads package
    # (a node or a second user may have the engine alone)
    from engine.workloads import manifest_view

    manifest, _why = manifest_view.read_manifest(output)
    return manifest


def _prepared(manifest: dict[str, Any]) -> str:
    """The manifest's summary, indented under the job's details."""
    from engine.workloads import manifest_view

    return "\n" + "\n".join("  " + _printable(line)
                            for line in manifest_view.summary_lines(
                                manifest, width=manifest_view.LINE_WIDTH - 2))


def cmd_logs(args: argparse.Namespace) -> int:
    """The bytes the engine sent, unchanged: a line the job wrote that is not
    UTF-8 reaches the terminal (or a pipe) as it was written."""
    out = sys.stdout.buffer
    for line in _client().logs(args.id, attempt=args.attempt, follow=args.follow,
                               tail=args.tail).raw():
        out.write(line)
        if args.follow:
            out.flush()
    out.flush()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel each job (see CANCEL_HELP); with --wait, then wait until each
    stopping one has ended and print its final state."""
    client = _client()
    stopping = []
    for job_id in args.ids:
        job = client.cancel(job_id)
        if job["state"] in ("starting", "running"):
            stopping.append(job["id"])
            print(f"job {job['id']}: stopping", flush=True)
        else:
            print(f"job {job['id']}: {job['state']}")
    if args.wait:
        for job_id in stopping:
            job = _until_ended(client, job_id)
            print(f"job {job['id']}: {job['state']}"
                  + (f" ({_printable(job['reason'])})" if job.get("reason") else ""))
    return 0


def _until_ended(client: Any, job_id: int) -> dict[str, Any]:
    """The job once its state is terminal: polled, from every 5 ms (a job
    usually ends within tens of ms of its SIGTERM) up to every 200 ms."""
    delay = 0.005
    while True:
        job: dict[str, Any] = client.job(job_id)
        if job["state"] not in ACTIVE:
            return job
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def cmd_retry(args: argparse.Namespace) -> int:
    job = _client().retry(args.id)
    _emit(args, job, lambda j: f"job {j['id']}: attempt {j['attempt']} {j['state']}")
    return 0


def cmd_priority(args: argparse.Namespace) -> int:
    job = _client().set_priority(args.id, args.priority)
    _emit(args, job, lambda j: f"job {j['id']}: priority {j['priority']} ({j['state']})")
    return 0


def _ps_table(procs: list[dict[str, Any]]) -> str:
    if not procs:
        return "no processes (the job is not running)"
    rows = [[_printable(p["node"]), str(p["pid"]), "-" if p.get("rank") is None else str(p["rank"]),
             f"{p['cpu_percent']:.0f}%", f"{p['rss_mb']:.0f} MB",
             "-" if p.get("gpu_memory_mb") is None else f"{p['gpu_memory_mb']:.0f} MB",
             _printable(p["state"]), _printable(p["name"])] for p in procs]
    return _table(rows, ["NODE", "PID", "RANK", "CPU", "RSS", "GPU MEM", "STATE", "NAME"])


def cmd_ps(args: argparse.Namespace) -> int:
    _emit(args, _client().processes(args.id), _ps_table)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    points = _client().metrics(args.id, attempt=args.attempt, names=args.name or ())

    def render(pts: list[dict[str, Any]]) -> str:
        if not pts:
            return "no metrics"
        by_step: dict[tuple[int, int], dict[str, float]] = {}
        names: list[str] = []
        for p in pts:
            by_step.setdefault((p["attempt"], p["step"]), {})[p["name"]] = p["value"]
            if p["name"] not in names:
                names.append(p["name"])
        rows = [[str(a), str(s), *[f"{v[n]:.6g}" if n in v else "-" for n in names]]
                for (a, s), v in sorted(by_step.items())]
        return _table(rows, ["TRY", "STEP", *[_printable(n.upper()) for n in names]])

    _emit(args, points, render)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.workloads import compare
    from engine.workloads.common import WorkloadError

    folders: list[str] = []
    client = None
    for item in args.items:
        if item.isdigit():
            client = client or _client()
            job = client.job(int(item))
            if not job.get("output"):
                raise CliError(f"job {item} ({_printable(job['name'])}) is a {job['kind']} job "
                               "with no output folder; compare train, compress and eval jobs")
            folders.append(str(job["output"]))
        else:
            folders.append(item)
    try:
        rows = compare.load_results(folders)
    except WorkloadError as err:
        raise CliError(str(err)) from None
    _emit(args, compare.to_json(rows), lambda _d: compare.render_table(rows).rstrip("\n"))
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from engine import profiles

    if args.action == "list":
        infos = profiles.list_profiles()
        data = [{"name": i.name, "kind": i.kind, "path": str(i.path),
                 "description": i.description, "error": i.error} for i in infos]
        _emit(args, data, lambda d: _table(
            [[_printable(x["name"]), _printable(x["kind"]),
              _printable(x["error"] or x["description"])] for x in d],
            ["NAME", "KIND", "DESCRIPTION"]) if d else "no profiles found")
        return 0
    if args.action == "validate":
        targets = args.names or [str(i.path) for i in profiles.list_profiles()]
        bad = 0
        for name in targets:
            try:
                path = profiles.find_profile(name)
                profiles.validate_file(path)
                print(f"ok       {_printable(path)}")
            except profiles.ProfileError as err:
                bad += 1
                print(f"invalid  {_printable(err)}", file=sys.stderr)
        return EXIT_ERROR if bad else 0
    if args.action == "show":
        if not args.names:
            raise CliError("profiles show: name a profile (see `llmconsole profiles list`)")
        known = {i.name: i.path for i in profiles.list_profiles()}
        for name in args.names:
            path = known.get(name) or profiles.find_profile(name)
            profiles.validate_file(path)
            print(f"# {_printable(path)}")
            print(path.read_text(), end="")
        return 0
    raise CliError(f"profiles {args.action}: expected list, validate or show")


def cmd_engine(args: argparse.Namespace) -> int:
    from engine import daemon, paths

    if args.action == "serve":
        import asyncio
        import logging

        from engine.profiles import load_cluster_profile

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cluster = load_cluster_profile(args.cluster or os.environ.get("LLMCONSOLE_CLUSTER"))
        try:
            socket_mode = int(args.socket_mode, 8)
        except ValueError:
            raise CliError(f"--socket-mode {args.socket_mode!r}: expected octal permissions "
                           f"such as 600 or 660") from None
        try:  # a faster event loop when installed (it is, with the project)
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(daemon.serve(
            cluster, socket_mode=socket_mode, socket_group=args.socket_group,
            telemetry_interval=args.telemetry_interval, lost_after=args.lost_after))
        return 0
    if args.action == "start":
        from engine.client import EngineClient

        try:
            health = EngineClient().health()
            print(f"engine already running (pid {health['pid']}) on "
                  f"{_printable(paths.socket_path())}")
            return 0
        except Unreachable:
            raise  # never start an engine in someone else's home
        except Unavailable:
            pass
        pid = daemon.start_background(args.cluster or os.environ.get("LLMCONSOLE_CLUSTER"))
        print(f"engine started (pid {pid}) on {_printable(paths.socket_path())}")
        return 0
    if args.action == "stop":
        print("engine stopped; jobs keep running" if daemon.stop() else "no engine running")
        return 0
    if args.action == "status":
        from engine.client import EngineClient

        try:
            health = EngineClient().health()
        except Unreachable as err:  # an engine may run there, but not for this user
            if args.json:
                print(json.dumps({"running": None, "reachable": False, "error": err.message}))
            else:
                print(f"engine unreachable: {_printable(err.message)}")
            return EXIT_UNREACHABLE
        except Unavailable as err:
            if args.json:
                print(json.dumps({"running": False, "reachable": True, "error": err.message}))
            else:
                print(f"no engine running ({_printable(err.message)})")
            return EXIT_NO_ENGINE
        health["running"] = True
        health["socket"] = str(paths.socket_path())
        _emit(args, health, lambda h: f"engine running: pid {h['pid']}, "
              f"cluster {_printable(h['cluster'])}, up {h['uptime_s']:.0f}s, "
              f"socket {_printable(h['socket'])}")
        return 0
    raise CliError(f"engine {args.action}: expected start, stop, status or serve")


def cmd_overview(args: argparse.Namespace) -> int:
    """Bare `llmconsole`: the screen when it is installed, else a summary."""
    run: Callable[[], int] | None
    try:
        from console.app import run
    except ImportError:  # installed without the screen's dependencies
        run = None
    if run is not None and sys.stdout.isatty() and not args.json:
        client = _client()
        client.close()
        return int(run() or 0)
    client = _client()
    nodes, jobs = client.nodes(), client.jobs(states=ACTIVE)
    if args.json:
        print(json.dumps({"nodes": nodes, "jobs": jobs}, indent=2))
        return 0
    from engine import cli_nodes

    print(cli_nodes.nodes_table(nodes))
    print()
    print(_jobs_table(jobs))
    return 0


# ------------------------------------------------------------------ parser
# Each command: (help, --json flag, its arguments). `main` builds the
# subparser of the command it runs only (argparse makes a parser per command:
# building all of them was a third of a `jobs` call); help for the whole
# command, or a command it does not know, builds all of them.
def _submit_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_submit)
    p.add_argument("profile", help="profile name (see `profiles list`) or path to a .toml file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a profile field, e.g. resources.gpus_per_node=2")
    p.add_argument("--after", action="append", type=int, metavar="ID",
                   help="start only when job ID has succeeded (repeatable)")
    p.add_argument("--name", help="job name (default: the profile's)")


def _jobs_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_jobs)
    p.add_argument("--state", action="append", choices=STATES)
    p.add_argument("--all", action="store_true", help="include ended jobs")
    p.add_argument("--mine", action="store_true", help="only my jobs")
    p.add_argument("--limit", type=int, default=None)


def _id_args(func: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.set_defaults(func=func)
        p.add_argument("id", type=int)
    return add


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_logs)
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.add_argument("--attempt", type=int, help="attempt number (default: the latest)")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_cancel)
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--wait", action="store_true",
                   help="return when every stopping job has ended, printing its final state")


def _priority_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_priority)
    p.add_argument("id", type=int)
    p.add_argument("priority", type=int, help="from -1000 to 1000; profiles default to 0")


def _nodes_args(p: argparse.ArgumentParser) -> None:
    from engine import cli_nodes

    p.set_defaults(func=cli_nodes.cmd_nodes)
    cli_nodes.add_actions(p)


def _nodes_help() -> str:
    from engine import cli_nodes

    return ("nodes, their GPUs and who uses them (and: " + ", ".join(cli_nodes.ACTIONS) + ")")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    from engine import cli_cluster

    p.set_defaults(func=cli_cluster.cmd_cluster)
    cli_cluster.add_parser_arguments(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_compare)
    p.add_argument("items", nargs="+", metavar="ID|FOLDER",
                   help="a job id or an output folder holding results.json")


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_metrics)
    p.add_argument("id", type=int)
    p.add_argument("--attempt", type=int)
    p.add_argument("--name", action="append", help="only this metric (repeatable)")


def _profiles_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_profiles)
    p.add_argument("action", choices=("list", "validate", "show"))
    p.add_argument("names", nargs="*", metavar="NAME")


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_engine)
    p.add_argument("action", choices=("start", "stop", "status", "serve"))
    p.add_argument("--cluster", help="cluster profile (default: $LLMCONSOLE_CLUSTER, "
                                     "else the head node alone)")
    p.add_argument("--socket-mode", default="600", help="socket permissions, octal (serve)")
    p.add_argument("--socket-group", help="group allowed on a shared engine's socket (serve)")
    p.add_argument("--telemetry-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--lost-after", type=float, default=60.0,
                   help="seconds a node may stay unreachable before its jobs are lost")


CANCEL_HELP = ("cancel jobs: a held or queued one is cancelled at once; a running one is "
               "told to stop (SIGTERM to its processes, SIGKILL after a grace time) and "
               "printed as 'stopping': the command returns without waiting for its end "
               "unless --wait")

COMMANDS: dict[str, tuple[str | Callable[[], str], bool,
                          Callable[[argparse.ArgumentParser], None]]] = {
    "submit": ("queue a job from a profile", True, _submit_args),
    "jobs": ("list jobs (active ones unless --all or --state)", True, _jobs_args),
    "show": ("a job's details, attempts and history", True, _id_args(cmd_show)),
    "logs": ("a job's output (stdout and stderr)", False, _logs_args),
    "cancel": (CANCEL_HELP, False, _cancel_args),
    "retry": ("run an ended job again, as a new attempt", True, _id_args(cmd_retry)),
    "priority": ("change a waiting job's priority (higher starts first)", True,
                 _priority_args),
    "nodes": (_nodes_help, True, _nodes_args),
    "cluster": ("cluster profiles: import one from a hostfile, a horovod -H list or a Slurm "
                "node list", False, _cluster_args),
    "compare": ("a table of the results of train, compress and eval jobs (size, latency, "
                "perplexity)", True, _compare_args),
    "ps": ("a running job's processes on every node (rank, CPU, memory)", True,
           _id_args(cmd_ps)),
    "metrics": ("a job's metric points (loss, lr, ...)", True, _metrics_args),
    "profiles": ("list, validate or show profiles", True, _profiles_args),
    "engine": ("start, stop or inspect the engine daemon", True, _engine_args),
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, told the terminal's width so that it does
    not import shutil to find it (argparse makes a formatter for every
    argument added: shutil, with bz2 and lzma, was 3 ms of every call)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def _columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` runs when the parser needs only its subparser: its
    first word, when that is a command and no top-level -h comes before it."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `llmconsole` parser: every command, or only `command`'s."""
    parser = argparse.ArgumentParser(
        prog="llmconsole",
        description="Run training, compression and evaluation jobs on a GPU cluster.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=cmd_overview)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (help_, json_flag, arguments) in COMMANDS.items():
        if command is not None and name != command:
            continue
        text = help_ if isinstance(help_, str) else help_()
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"llmconsole: error: {_printable(err)}", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as err:  # a file of someone else's, not caught nearer
        print(f"llmconsole: error: {_printable(err.filename or '')}: permission denied; use "
              f"files and an LLMCONSOLE_HOME of your own", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
