"""The rules a job spec's fields follow, written once: profiles
(`engine.profiles`, the CLI and the screen) and the API (`engine.spec_check`,
scripts) both apply these functions, so a spec one accepts the other accepts.

Contract
========

Each ``check_*`` function takes a value and returns it unchanged when it
follows the rule, or raises `RuleError` with `problem` (what is wrong with
the value, without naming the field) and `expected` (what would be right).
The caller names the field: a profile as ``<file>: <field>: <problem>;
expected <expected>``, the API as ``spec.<field>: <problem>; expected
<expected>``. Nothing here does I/O beyond reading the kernel's argument
limit (`os.sysconf`).

The rules:

- every string (names, argv items, env names and values, workdir, profile)
  is UTF-8 text: a lone surrogate (what Python makes of a byte such as 0xff
  that is not UTF-8, e.g. ``--set name=$'\\xff'``) is refused, and no NUL;
- a job name has 1 to 128 characters, no control or line-breaking
  character, and is not blank (whitespace or invisible characters only);
- an environment variable name matches ``^[A-Za-z_][A-Za-z0-9_]*$`` and is
  neither ``LD_PRELOAD`` nor ``LLMCONSOLE_*``;
- a workdir is an absolute path;
- a command's program (``argv[0]``, ``command[0]``) is not empty
  (`check_program`);
- a distributed launcher (horovodrun, torchrun) runs kinds train and
  compress only (`check_launcher`);
- a node's host (`check_host`) is an IP address, or a hostname or ssh alias
  of letters, digits, '.', '-' and '_' (no leading '-', no '@', no shell
  metacharacters, at most 253 characters);
- each entry of a job's ``resources.nodes_with`` is a node label or a node
  name (`check_node_selector`: the label syntax, which node names also
  follow), at most `NODES_WITH_MAX` of them;
- the argv and environment fit what ``execve`` takes: each argument and
  each ``NAME=value`` at most `MAX_ARG_BYTES` bytes (Linux's
  MAX_ARG_STRLEN, 131072 with the terminating NUL), all of them together
  (with their pointers) at most `exec_size_limit()`, half of the kernel's
  ``ARG_MAX``: the other half is left to the allow-listed environment the
  engine adds and the launcher's own arguments;
- a workload argument ``@NAME`` in a pipeline names an earlier stage that
  has an output folder (`stage_reference_problems`).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from engine.model import WORKLOAD_KINDS, StageSpec

__all__ = [
    "ENV_NAME_EXPECTED",
    "HOST_EXPECTED",
    "MAX_ARG_BYTES",
    "NAME_EXPECTED",
    "NODES_WITH_MAX",
    "NODE_SELECTOR_EXPECTED",
    "REFERENCE_RE",
    "REFUSED_ENV",
    "RESERVED_ENV_PREFIX",
    "RuleError",
    "check_env_name",
    "check_host",
    "check_exec_size",
    "check_arg_size",
    "check_name",
    "check_launcher",
    "check_node_selector",
    "check_program",
    "check_text",
    "check_workdir",
    "exec_size",
    "exec_size_limit",
    "references",
    "stage_reference_problems",
]

DISTRIBUTED_LAUNCHERS = ("horovodrun", "torchrun")
DISTRIBUTED_KINDS = ("train", "compress")
NAME_MAX = 128
NAME_EXPECTED = f"1 to {NAME_MAX} characters without control characters"
RESERVED_ENV_PREFIX = "LLMCONSOLE_"
REFUSED_ENV = ("LD_PRELOAD",)
ENV_NAME_EXPECTED = "a name matching ^[A-Za-z_][A-Za-z0-9_]*$ (not LD_PRELOAD nor LLMCONSOLE_*)"
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The longest argument (or ``NAME=value``) execve takes on Linux, in bytes,
#: without its terminating NUL (MAX_ARG_STRLEN = 32 pages = 131072 with it).
MAX_ARG_BYTES = 131072 - 1
_POINTER = 8  # each argument and variable also takes a pointer in the new stack
_DEFAULT_ARG_MAX = 2 * 1024 * 1024

#: ``@NAME``: a workload argument standing for another job's output folder.
REFERENCE_RE = re.compile(r"@([A-Za-z0-9][A-Za-z0-9._-]{0,127})")


class RuleError(ValueError):
    """A value that breaks a rule; the caller names the field."""

    def __init__(self, problem: str, expected: str) -> None:
        super().__init__(f"{problem}; expected {expected}")
        self.problem = problem
        self.expected = expected


# ---------------------------------------------------------------------------
# Text


def utf8_problem(value: str) -> str | None:
    """Why `value` cannot be sent as UTF-8 (a lone surrogate), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        byte = ord(bad) - 0xDC00 if 0xDC80 <= ord(bad) <= 0xDCFF else None
        what = f"byte 0x{byte:02x}" if byte is not None else f"\\u{ord(bad):04x}"
        return f"is not UTF-8 text ({what} at character {exc.start})"
    return None


def check_text(value: str, expected: str = "UTF-8 text without NUL") -> str:
    """Any string the engine stores or passes on: UTF-8, no NUL."""
    problem = utf8_problem(value)
    if problem:
        raise RuleError(problem, expected)
    if "\x00" in value:
        raise RuleError("contains a NUL character", expected)
    return value


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def has_control(value: str, allowed: str = "") -> bool:
    """Whether `value` holds a control or line-breaking character not in `allowed`."""
    return any(_is_control(ch) and ch not in allowed for ch in value)


def check_name(value: str) -> str:
    """A job (or pipeline, or cluster) name."""
    check_text(value, NAME_EXPECTED)
    if has_control(value):
        raise RuleError("contains a control character (newline, tab, NUL, ...)", NAME_EXPECTED)
    if not value or all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Zs")
                        for ch in value):
        raise RuleError("is empty" if not value else "is blank (only spaces or invisible "
                        "characters)", NAME_EXPECTED)
    if len(value) > NAME_MAX:
        raise RuleError(f"has {len(value)} characters", NAME_EXPECTED)
    return value


def check_workdir(value: str) -> str:
    check_text(value, "an absolute path")
    if not value.startswith("/"):
        raise RuleError("is not an absolute path", 'an absolute path such as "/data/run"')
    return value


def check_program(value: str) -> str:
    """A job's program, argv[0]: not empty (execve would refuse it late)."""
    if not value:
        raise RuleError("the program is empty", "a program name or path")
    return value


def check_launcher(kind: str, launcher: str) -> str:
    """`launcher` for a job of `kind`: horovodrun and torchrun start ranks of
    a training, so only kinds train and compress take them."""
    if launcher in DISTRIBUTED_LAUNCHERS and kind not in DISTRIBUTED_KINDS:
        raise RuleError(f'"{launcher}" is not available for kind "{kind}"',
                        '"local" (horovodrun and torchrun are for kinds train and compress)')
    return launcher


NODE_PATH_EXPECTED = ('an absolute path or one under the home, such as "/opt/venv/bin/python" '
                      'or "~/.ssh/id_ed25519"')
LABEL_EXPECTED = "a label matching ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_node_path(value: str) -> str:
    """A path on a node or for ssh: absolute, or under a home (~)."""
    check_text(value, NODE_PATH_EXPECTED)
    if has_control(value):
        raise RuleError("contains a control character", NODE_PATH_EXPECTED)
    if not (value.startswith("/") or value == "~" or value.startswith("~/")):
        raise RuleError("is neither absolute nor under ~", NODE_PATH_EXPECTED)
    return value


def check_label(value: str) -> str:
    check_text(value, LABEL_EXPECTED)
    if not _LABEL_RE.fullmatch(value):
        raise RuleError("is not a valid label", LABEL_EXPECTED)
    return value


HOST_EXPECTED = (
    "a hostname, ssh alias or IP address (letters, digits, '.', '-', '_'; no leading '-')"
)
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_HOST_MAX = 253  # characters: the longest DNS name


def check_host(value: str) -> str:
    """A node's host: what ssh is given to reach it, never an option."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if "@" in value:
        raise RuleError("contains '@'", "a hostname only; put the user name in `user`")
    if len(value) > _HOST_MAX or not _HOST_RE.fullmatch(value):
        raise RuleError("is not a hostname or IP address", HOST_EXPECTED)
    return value


# A job names a few labels and node names; a longer list is a mistake (and
# every entry is checked against every node at each scheduling pass).
NODES_WITH_MAX = 32
NODE_SELECTOR_EXPECTED = ("a node label or node name matching "
                          "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_node_selector(value: str) -> str:
    """One entry of ``resources.nodes_with``: a label or a node name (node
    names follow the label syntax too, without ':')."""
    check_text(value, NODE_SELECTOR_EXPECTED)
    if not _LABEL_RE.fullmatch(value):
        raise RuleError("is not a node label or node name", NODE_SELECTOR_EXPECTED)
    return value


def check_env_name(value: str) -> str:
    check_text(value, ENV_NAME_EXPECTED)
    if not _ENV_NAME_RE.fullmatch(value):
        raise RuleError("is not a valid environment variable name", ENV_NAME_EXPECTED)
    if value in REFUSED_ENV:
        raise RuleError(f"{value} is refused (it would inject code into every process)",
                        ENV_NAME_EXPECTED)
    if value.startswith(RESERVED_ENV_PREFIX):
        raise RuleError(f"names starting with {RESERVED_ENV_PREFIX} are reserved for "
                        "llmconsole", ENV_NAME_EXPECTED)
    return value


# ---------------------------------------------------------------------------
# What execve takes


def exec_size_limit() -> int:
    """The most bytes a job's argv and environment may take together."""
    try:
        arg_max = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        arg_max = -1
    return (arg_max if arg_max > 0 else _DEFAULT_ARG_MAX) // 2


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape")) + 1 + _POINTER


def exec_size(argv: Iterable[str], env: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
    """Bytes `argv` and `env` take in a new process: each string, its NUL and
    its pointer."""
    pairs = env.items() if isinstance(env, Mapping) else env
    return sum(_size(a) for a in argv) + sum(_size(f"{k}={v}") for k, v in pairs)


def check_arg_size(value: str) -> str:
    """One argument (or one ``NAME=value``) within the kernel's MAX_ARG_STRLEN."""
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_ARG_BYTES:
        raise RuleError(f"is {size} bytes long, over the kernel's limit of {MAX_ARG_BYTES} "
                        "bytes per argument", f"at most {MAX_ARG_BYTES} bytes (pass long "
                        "data in a file)")
    return value


def check_exec_size(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """The argv and environment together within `exec_size_limit()`."""
    size, limit = exec_size(argv, env), exec_size_limit()
    if size > limit:
        raise RuleError(f"the argv and environment take {size} bytes, over the limit of "
                        f"{limit} bytes (half the kernel's ARG_MAX)",
                        f"at most {limit} bytes in all (pass long data in a file)")


# ---------------------------------------------------------------------------
# References between pipeline stages


def references(kind: str, argv: Sequence[str]) -> list[str]:
    """The NAMEs of the ``@NAME`` arguments of a workload job's argv, in order
    (``@@text`` is a literal, and command jobs have none)."""
    if kind not in WORKLOAD_KINDS:
        return []
    out: list[str] = []
    for arg in argv[1:]:
        m = REFERENCE_RE.fullmatch(arg)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def _waits_for(stages: Sequence[StageSpec], j: int) -> list[str]:
    """The stages stage `j` waits for, as `engine.pipelines.expand` chains
    them: its ``after``, else the stages it refers to, else the previous one."""
    stage = stages[j]
    if stage.after is not None:
        return list(stage.after)
    return references(stage.spec.kind, stage.spec.argv) or [s.name for s in stages[j - 1:j]]


def _reaches(stages: Sequence[StageSpec], start: int, target: int) -> bool:
    """Whether stage `start` waits, directly or through other stages, for `target`."""
    index = {s.name: i for i, s in enumerate(stages)}
    seen: set[int] = set()
    todo = [start]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        for name in _waits_for(stages, i):
            j = index.get(name)
            if j == target:
                return True
            if j is not None:
                todo.append(j)
    return False


def stage_reference_problems(stages: Sequence[StageSpec]) -> list[tuple[int, str, str]]:
    """(stage index, problem, expected) for each ``@NAME`` argument of a
    pipeline that does not name an earlier stage with an output folder: a
    name that is no stage, the stage itself, a later stage (a cycle when that
    stage waits for this one, through its references, its ``after`` or the
    file order), a command stage."""
    names = [s.name for s in stages]
    problems: list[tuple[int, str, str]] = []
    for i, stage in enumerate(stages):
        earlier = names[:i]
        expected = "one of the stages above it: " + (", ".join(earlier) or "(none)")
        for name in references(stage.spec.kind, stage.spec.argv):
            if name in earlier:
                if stages[names.index(name)].spec.kind not in WORKLOAD_KINDS:
                    problems.append((i, f"@{name} has no output folder (it is a command job)",
                                     "a train, compress, eval or prepare stage"))
                continue
            if name == stage.name:
                why = "it is this stage itself"
            elif name in names:
                j = names.index(name)
                why = (f"stage {name} comes later and waits for {stage.name}: a cycle"
                       if _reaches(stages, j, i) else
                       f"stage {name} comes later; stages run in file order, so move it above "
                       f"{stage.name}")
            else:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                why = "no stage has that name" + (f", did you mean @{close[0]}?" if close
                                                  else "")
            problems.append((i, f"@{name} is not an earlier stage ({why})", expected))
    return problems
