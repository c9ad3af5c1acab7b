"""`llmconsole cluster import FILE`: a cluster profile written from the host
lists people already have (`engine.hostlists`: horovod ``-H`` lists,
horovod/Open MPI/DeepSpeed hostfiles, Slurm node lists).

Contract
========

- FILE is a file, ``-`` for standard input, or the list itself when no file
  has that name and it reads as one (``h1:4,h2:4``, ``gpu[01-04]``).
  ``--format`` (default ``auto``, `hostlists.detect_format`) says which
  format it is in.
- Each host becomes a node: ``host`` is the host as written, ``name`` is
  derived from it (`node_names`: the first DNS label when no other host has
  the same one, else the whole host, with what a node name cannot hold
  turned into '-'), ``slots`` is the host's slot count when the list gives
  one; ``gpus`` is written only with ``--gpus-from-slots`` (in horovod and
  DeepSpeed hostfiles ``slots`` means GPUs per node), else it is left to
  what the node's agent reports. Open MPI's ``max_slots`` is read and
  checked, and not used: the engine never oversubscribes.
- The first node is the head node, written without ``host`` (the engine's
  own machine, reached without SSH), unless ``--head NAME`` (a node's name
  or host) picks another or ``--no-head`` makes every node remote.
- The profile (TOML, a comment header saying where it came from) goes to
  ``--output PATH``, default ``profiles/clusters/<name>.toml`` (which
  ``--cluster <name>`` then finds from this folder), ``-`` for standard
  output; ``--name`` defaults to FILE's stem. An existing file is replaced
  only with ``--force``. The text is validated by the profile loader
  (`profiles.parse_cluster_text`) before anything is written, and written
  atomically (a temporary file in the same folder, then renamed).
- Every problem is one line naming the input, the line and column where
  the host list has it, and the fix (`CliError`); nothing is written then.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.cli_common import CliError, _emit, _printable

if TYPE_CHECKING:
    from engine.hostlists import HostEntry

# hostlists and spec_rules are imported by the functions that use them: the
# `llmconsole` parser imports this module for every command (see
# tests/unit/test_cli_imports.py), and `jobs` or `cancel` need neither.

__all__ = ["add_parser_arguments", "cmd_cluster", "node_names", "render_profile"]

# A host list is a few lines per node; more than this is not one (a wrong
# file), and reading it all would only delay the error.
MAX_INPUT_BYTES = 4 * 1024 * 1024
DEFAULT_DIR = Path("profiles") / "clusters"
FORMAT_TEXT = {
    "horovod": "a horovodrun -H list",
    "hostfile": "a horovod/Open MPI/DeepSpeed hostfile",
    "slurm": "a Slurm node list",
}
_NODE_NAME_MAX = 64
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
_FILE_STEM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INLINE_HINT = re.compile(r"[,:\[]")


# ------------------------------------------------------------------ pure parts
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _as_name(text: str) -> str:
    name = _NOT_IN_NAME.sub("-", text).lstrip("._-")[:_NODE_NAME_MAX].rstrip(".")
    return name or "node"


def node_names(hosts: Sequence[str]) -> list[str]:
    """A valid, unique node name for each host (see the module docstring);
    names that would still repeat get ``-2``, ``-3``, ... ."""
    short = [host if _is_ip(host) else host.split(".", 1)[0] or host for host in hosts]
    counts = Counter(short)
    wanted = [_as_name(s if counts[s] == 1 else h) for s, h in zip(short, hosts, strict=True)]
    taken: set[str] = set()
    out = []
    for name in wanted:
        unique, n = name, 1
        while unique in taken:
            n += 1
            tail = f"-{n}"
            unique = name[:_NODE_NAME_MAX - len(tail)] + tail
        taken.add(unique)
        out.append(unique)
    return out


def _toml_string(text: str) -> str:
    # JSON strings are TOML basic strings, but for DEL, which TOML wants escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _comment(text: str) -> str:
    """`text` safe inside a TOML comment: printable, escaped otherwise."""
    return _printable(text).encode("utf-8", "backslashreplace").decode("utf-8")


def render_profile(
    entries: Sequence[HostEntry], *, name: str, source: str, fmt: str,
    head: str | None = None, no_head: bool = False, gpus_from_slots: bool = False,
    when: str = "",
) -> str:
    """The cluster profile's TOML text for `entries` (see the module
    docstring). `head` names the head node by node name or host (None: the
    first); `no_head` leaves every node remote. Raises `CliError` for a
    `head` that names no node."""
    from engine import hostlists

    hosts = [e.host for e in entries]
    names = node_names(hosts)
    head_index: int | None = None if no_head else 0
    if head is not None and not no_head:
        matches = [i for i, (n, h) in enumerate(zip(names, hosts, strict=True))
                   if head in (n, h)]
        if not matches:
            raise CliError(f"--head {head}: no imported node has that name or host (nodes: "
                           f"{_printable(hostlists.compress_slurm(names, ', '))}); name one "
                           f"of them, or pass --no-head")
        head_index = matches[0]
    described = hostlists.compress_slurm(hosts, ", ")
    lines = [
        f"# Written by `llmconsole cluster import` from {_comment(source)}",
        f"# ({FORMAT_TEXT[fmt]}){f' on {when}' if when else ''}: {len(hosts)} host(s), "
        f"{_comment(described)}.",
        "# The head node has no host: it is the machine the engine runs on. Every",
        "# other node is reached with ssh (its ~/.ssh/config applies). Add user, port,",
        "# identity, gpus and labels where needed; `llmconsole profiles validate`",
        "# checks the file. Every node needs the project and its .venv at the same",
        "# path as here (a shared home, or the same `make setup`).",
        'kind = "cluster"',
        f"name = {_toml_string(name)}",
        f"description = {_toml_string('Imported from ' + _printable(source))}",
    ]
    for i, (entry, node) in enumerate(zip(entries, names, strict=True)):
        lines += ["", "[[nodes]]", f"name = {_toml_string(node)}"]
        if i != head_index:
            lines.append(f"host = {_toml_string(entry.host)}")
        if entry.slots is not None:
            lines.append(f"slots = {entry.slots}")
            if gpus_from_slots:
                lines.append(f"gpus = {entry.slots}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ I/O
def _read_source(file: str) -> tuple[str, str, bool]:
    """(the text, how to name it in messages, whether it came from a file
    or stdin rather than the argument itself)."""
    if file == "-":
        raw = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        where = "standard input"
    else:
        path = Path(file).expanduser()
        if not path.exists() and _INLINE_HINT.search(file) and "/" not in file:
            return file, f"the list {file!r}", False
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_INPUT_BYTES + 1)
        except FileNotFoundError:
            raise CliError(f"{_printable(file)}: no such file; give a hostfile, '-' to read "
                           "standard input, or a host list such as h1:4,h2:4 or gpu[01-04]"
                           ) from None
        except OSError as err:
            raise CliError(f"{_printable(file)}: cannot read it ({err.strerror or err}); "
                           "give a readable file") from None
        where = str(path)
    if len(raw) > MAX_INPUT_BYTES:
        raise CliError(f"{_printable(where)}: more than {MAX_INPUT_BYTES} bytes, not a host "
                       "list; give the hostfile itself")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CliError(f"{_printable(where)}: not UTF-8 text (byte {err.start}); give a "
                       "host list in UTF-8") from None
    return text, where, True


def _check_hosts(entries: Sequence[HostEntry], where: str) -> None:
    from engine import spec_rules
    from engine.spec_rules import RuleError

    for entry in entries:
        try:
            spec_rules.check_host(entry.host)
        except RuleError as err:
            raise CliError(f"{_printable(where)}: line {entry.line}, column {entry.column}: "
                           f"host {_printable(entry.host)!s} {err.problem}; expected "
                           f"{err.expected}") from None


def _profile_name(args: argparse.Namespace, file: str, from_file: bool) -> str:
    if args.name is not None:
        name: str = args.name
    elif args.output not in (None, "-"):
        name = Path(args.output).stem
    elif from_file and file != "-":
        name = Path(file).stem
    else:
        name = "imported"
    from engine import spec_rules
    from engine.spec_rules import RuleError

    try:
        spec_rules.check_name(name)
    except RuleError as err:
        raise CliError(f"--name {_printable(name)}: {err.problem}; expected "
                       f"{err.expected}") from None
    return name


def _output_path(args: argparse.Namespace, name: str) -> Path | None:
    """Where to write (None: standard output)."""
    if args.output == "-":
        return None
    if args.output is not None:
        return Path(args.output).expanduser()
    if not _FILE_STEM_RE.fullmatch(name):
        raise CliError(f"the profile name {_printable(name)!r} cannot be a file name; give "
                       "--output PATH, or a --name of letters, digits, '.', '-' and '_'")
    return DEFAULT_DIR / f"{name}.toml"


def _write_atomically(path: Path, text: str, force: bool) -> None:
    import tempfile  # here: it imports random and shutil, which other commands do not need

    if path.exists() and not force:
        raise CliError(f"{_printable(path)} exists; pass --force to replace it, or --output "
                       "another path")
    if path.is_dir():
        raise CliError(f"{_printable(path)} is a folder; give --output a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise CliError(f"cannot write in {_printable(path.parent)} ({err.strerror or err}); "
                       "give --output a path in a folder of yours") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # a profile, not a secret
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails, rather than replaces, if one appeared meanwhile
            except FileExistsError:
                raise CliError(f"{_printable(path)} exists; pass --force to replace it, or "
                               "--output another path") from None
            except OSError:  # a filesystem without hard links
                os.replace(tmp, path)
    except OSError as err:
        raise CliError(f"cannot write {_printable(path)} ({err.strerror or err}); give "
                       "--output a path in a folder of yours") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def cmd_import(args: argparse.Namespace) -> int:
    from engine import hostlists
    from engine.hostlists import HostListError

    text, where, from_file = _read_source(args.file)
    fmt = hostlists.detect_format(text) if args.format == "auto" else args.format
    try:
        _, entries = hostlists.parse_hosts(text, fmt)
    except HostListError as err:
        hint = (f" (read as {FORMAT_TEXT[fmt]}: give --format if it is another)"
                if args.format == "auto" else "")
        raise CliError(f"{_printable(where)}: {_printable(err)}{hint}") from None
    _check_hosts(entries, where)
    if args.gpus_from_slots and all(e.slots is None for e in entries):
        raise CliError(f"--gpus-from-slots: {_printable(where)} gives no slot counts "
                       f"({FORMAT_TEXT[fmt]}); drop the option and set gpus in the profile")
    name = _profile_name(args, args.file, from_file)
    out = _output_path(args, name)
    source = "standard input" if args.file == "-" else where
    profile = render_profile(entries, name=name, source=source, fmt=fmt, head=args.head,
                             no_head=args.no_head, gpus_from_slots=args.gpus_from_slots,
                             when=time.strftime("%Y-%m-%d"))
    from engine import profiles  # pydantic: loaded by the commands that read profiles only

    target = out if out is not None else Path("(standard output)")
    try:
        cluster = profiles.parse_cluster_text(profile, target)
    except profiles.ProfileError as err:
        raise CliError(f"the imported profile would be invalid: {err}") from None
    if out is None:
        sys.stdout.write(profile)
        return 0
    _write_atomically(out, profile, args.force)
    head = next((n.name for n in cluster.nodes if n.is_local), None)
    summary = {
        "path": str(out), "name": cluster.name, "format": fmt,
        "nodes": [{"name": n.name, "host": n.host, "slots": n.slots, "gpus": n.gpus}
                  for n in cluster.nodes],
        "head": head,
    }

    def render(data: dict[str, object]) -> str:
        names = hostlists.compress_slurm([n.name for n in cluster.nodes], ", ")
        lines = [f"wrote {_printable(out)}: {len(cluster.nodes)} node(s) ({_printable(names)}) "
                 f"from {FORMAT_TEXT[fmt]}",
                 f"  head node: {_printable(head)}" if head else
                 "  no head node: every node is reached over ssh",
                 f"  check it: llmconsole profiles validate {_printable(out)}",
                 f"  use it:   llmconsole engine start --cluster {_printable(out)}"]
        return "\n".join(lines)

    _emit(args, summary, render)
    return 0


# ------------------------------------------------------------------ parser
def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    p = actions.add_parser("import", help="write a cluster profile from a hostfile, a horovod "
                           "-H list or a Slurm node list",
                           description="Write a cluster profile from a hostfile, a horovod -H "
                           "list or a Slurm node list.")
    p.add_argument("file", metavar="FILE",
                   help="the host list: a file, '-' for standard input, or the list itself "
                   "(h1:4,h2:4 or gpu[01-04])")
    p.add_argument("--name", help="the cluster's name (default: FILE's stem)")
    p.add_argument("--output", metavar="PATH",
                   help="where to write ('-': standard output; default: "
                   "profiles/clusters/NAME.toml)")
    p.add_argument("--format", choices=("auto", *FORMAT_TEXT), default="auto",
                   help="the list's format (default: told from the text)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--gpus-from-slots", action="store_true",
                   help="also write gpus = slots (horovod and DeepSpeed hostfiles count GPUs "
                   "in slots)")
    heads = p.add_mutually_exclusive_group()
    heads.add_argument("--head", metavar="NAME",
                       help="the node (name or host) the engine runs on (default: the first)")
    heads.add_argument("--no-head", action="store_true",
                       help="no head node among them: every node is reached over ssh")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(cluster_run=cmd_import)


def cmd_cluster(args: argparse.Namespace) -> int:
    return int(args.cluster_run(args))
