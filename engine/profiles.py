"""TOML profiles: the files a user writes to describe a job or a cluster, and
the one place that turns them into `JobSpec` and `ClusterSpec`.

Contract
========

Every loader either returns a frozen value from `engine.model` or raises
`ProfileError`; nothing else escapes for a bad file (a missing file, a file
that is not UTF-8, a TOML syntax error, a wrong type, an unknown field, a
broken cross-field rule). Validation is strict: no field is guessed, no type
is coerced (``nodes = "2"`` is an error, not 2), unknown fields are errors at
every level. Nothing here runs a program or starts a shell, and nothing
imports a screen library.

`str(ProfileError)` is always one line::

    <file>: <field path>: <problem>; expected <what>
    profiles/bad.toml: resources.gpus_per_node: input should be greater than or equal
        to 0; expected an integer from 0 to 64          (one line, wrapped here)
    profiles/bad.toml: line 3, column 7: Expected '=' after a key in a key/value pair
    --set foo: expected key=value

Field paths are dotted, list items are ``[i]``, table keys that are not bare
words are quoted: ``env."MY VAR"``, ``nodes[1].host``, ``command[0]``. When a
file has several problems the message names the first one and
`ProfileError.errors` holds one such line per problem. A problem in a value
that came from ``--set`` says ``(value from --set)``.

Job profile: ``<dir>/NAME.toml``
--------------------------------

::

    kind = "command"        # required: "train" | "compress" | "eval" | "prepare" |
                            # "command"
    name = "hello"          # default: the file stem. Free text, 1-128 characters,
                            # no control characters (newline, NUL, ...), not blank
    description = "..."     # default "". Newlines and tabs allowed, other control
                            # characters not
    command = ["python3", "-c", "print('hello')"]
                            # kind "command" only, and required there: the argv as a
                            # non-empty list of strings (never one string: no shell
                            # ever parses it); argv[0] not empty; no NUL anywhere
    launcher = "local"      # "local" | "horovodrun" | "torchrun"; the last two only
                            # for kinds "train" and "compress"
    priority = 0            # integer, -1000..1000
    retries = 0             # integer, 0..20: automatic retries after a failure
    workdir = "/abs/path"   # optional, an absolute path
    [resources]
    nodes = 1               # integer 1..4096; more than 1 needs launcher
                            # horovodrun or torchrun, except for kind
                            # "prepare": one part per node (--part K/N
                            # appended by the engine), launcher "local"
    gpus_per_node = 0       # integer 0..64
    cpus = 1                # integer 1..4096, per node
    memory_gb = 0           # a finite number, 0..1048576 (model.LIMITS), per node
    nodes_with = ["a100"]   # default []: any node. Labels or node names (at most
                            # 32); only nodes that have ALL of them, as labels
                            # or as their name, run the job
    [env]                   # extra environment variables, NAME = "value" (strings
    SEED = "42"             # only). NAME matches ^[A-Za-z_][A-Za-z0-9_]*$;
                            # LD_PRELOAD and LLMCONSOLE_* are refused
    [args]                  # workload kinds only: key = str | int |
    lr = 3e-4               # float | bool | non-empty list of those; key matches
    amp = true              # ^[A-Za-z][A-Za-z0-9_-]{0,63}$
    [guard]                 # kinds train and compress (method "distill") only:
    on_nan = "restart"      # the loss guard and stall watch, `engine.guard`
                            # (on_nan, diverge_factor, diverge_window,
                            # on_diverge, max_restarts, lr_scale, stall_after,
                            # on_stall)

Names, commands, args and env values are taken verbatim: shell
metacharacters (``; $( ) ' " | &``) are ordinary characters because the
engine never uses a shell. The rules for names, text, env names and sizes
are `engine.spec_rules`, the ones the API applies: every string is UTF-8 (a
``--set`` value with a byte that is not, such as ``$'\xff'``, is refused
naming the override), and each argument, each ``NAME=value`` and all of
them together must fit what the kernel's execve takes.

Workload arguments. With ``check_args`` (what submit, `validate_file` and
`list_profiles` use) a workload's [args] are also checked against the
workload's own parser (`engine.workloads.options`, no torch needed): every
key an option of it (a typo gets the close name: ``max_stepz`` -> "did you
mean max_steps?"), an on/off option given true/false, every required option
there (``--output`` is assigned at submit), and every value one the parser
takes, ranges included (``max_steps = -5``, ``lr = nan`` are refused). The
error names the field (``args.max_steps``), marked ``(value from --set)``
when the value came from an override.

The argv of a job (`build_argv`): for kind "command" it is ``command`` as
given (a first element "python"/"python3" is not rewritten). For the other
kinds it is ``[sys.executable, "-m", "engine.workloads.<module>", *flags]``
with module ``train``, ``compress``, ``evaluate`` or ``prepare``, and flags from [args] in
file order: key ``learning_rate`` gives ``--learning-rate``; ``x = 3`` gives
``--x 3``; ``flag = true`` gives ``--flag`` and ``false`` nothing; a list gives
``--key v1 v2``. Floats are written with `repr` (3e-4 -> ``0.0003``), booleans
inside a list as ``true``/``false``. A value that starts with '-' and is not
a plain negative number is joined to its option (``model = "--help"`` gives
``--model=--help``), so it reaches the program as a value, never as an option.

Cluster profile: ``<dir>/clusters/NAME.toml`` (or ``<dir>/NAME.toml``)
----------------------------------------------------------------------

::

    kind = "cluster"        # required
    name = "lab"            # default: the file stem (same rule as a job name)
    description = "..."     # optional
    admins = ["alice"]      # user names allowed to cancel/retry anyone's job
    known_hosts = "~/.ssh/known_hosts"  # optional: the file that holds the
                            # nodes' host keys (default: the user's own)
    share_logs = false      # true: every user may read every job's logs, metrics,
                            # processes and env names (default: owner and admins)
    [[nodes]]               # at least one; the order is kept
    name = "gpu1"           # required, ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, unique
    host = "10.0.0.5"       # optional: absent = the head node itself (at most one
                            # such node). A hostname, an ssh alias or an IP address:
                            # no spaces, no leading '-', no shell metacharacters
    port = 22               # 1..65535; absent = ssh's choice (~/.ssh/config, else 22)
    user = "train"          # optional, ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$; absent =
                            # ssh's choice
    identity = "~/.ssh/id_ed25519"  # optional private key (ssh -i); absent = ssh's
    python = "/opt/llmconsole/.venv/bin/python"  # optional; absent = the engine's
                            # own interpreter path (`model.node_python`)
    root = "/scratch/llmc"  # optional run directory on the node; absent = the
                            # engine home for the head node, else
                            # <engine home>/nodes/<name> (`model.node_root`)
                            # (identity, python, root: absolute or under ~)
    gpus = 8                # optional integer >= 0; absent = what the node reports
    slots = 32              # optional integer >= 1; absent = the node's CPU count
    memory_gb = 512         # optional number >= 0; absent = not limited
    labels = ["a100", "ib"] # optional, ^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$ each:
                            # what a job's resources.nodes_with may ask for

Pipeline profile: ``<dir>/NAME.toml``
-------------------------------------

::

    kind = "pipeline"       # required
    name = "pipeline-tiny"  # default: the file stem
    description = "..."
    [[stages]]              # at least one, run in dependency order
    name = "pretrain"       # required, ^[a-z][a-z0-9_-]{0,31}$, unique
    profile = "pretrain-tiny"   # a job profile name (looked up in this file's
                            # folder first), or a path (relative to this
                            # file's folder when it has a '/')
    after = ["pretrain"]    # optional: earlier stages to wait for (default:
                            # the stages its "@stage" arguments name, else the
                            # previous stage)
    [stages.set]            # optional: merged into the job profile, like --set
    launcher = "horovodrun"
    args = { max_steps = 120, model = "@pretrain" }

An argument ``"@stage"`` is replaced by that earlier stage's output folder
(`engine.pipelines`): a prepare stage's is its prepared data, so
``data = "@prepare"`` gives the training stage ``--data <that folder>``. One
that names no earlier workload stage (a later
stage, which a cycle needs, the stage itself, no stage, a command stage) is a
`ReferenceError` naming the stage. ``--set STAGE.key=value`` overrides a
stage's field.

Where profiles are found (`profile_dirs`)
-----------------------------------------

Each entry of ``$LLMCONSOLE_PROFILES`` (``os.pathsep``-separated), then
``./profiles``, then the shipped ``profiles/`` next to the ``engine``
package; only existing directories, each once, as absolute paths. A name is
looked up as ``NAME.toml`` in that order, first hit wins; a cluster name as
``clusters/NAME.toml`` then ``NAME.toml`` in each directory in turn. An
argument that is the path of an existing file is used as is.

``--set`` overrides (`parse_overrides`)
---------------------------------------

``key.sub=value``: the value is read as a TOML value (``2`` int, ``1e-3``
float, ``true`` bool, ``[1, 2]`` list, ``"x"`` string) and kept as the raw
text when it is not one TOML value (so ``--set name=my run`` works). The
overrides are merged, deeply, into the file's table before validation, so
they are validated exactly like the file. `load_job_profile` keeps the raw
text for fields that only take strings (name, description, workdir, kind,
launcher, env.NAME): ``--set env.SEED=42`` sets the string "42".
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

import engine
from engine import guard as guard_rules
from engine import secrets, spec_rules
from engine.errors import UserError
from engine.model import (
    LIMITS,
    PART_KINDS,
    ClusterSpec,
    JobSpec,
    NodeSpec,
    PipelineSpec,
    Resources,
    StageSpec,
)
from engine.spec_rules import RuleError
from engine.workloads import options as workload_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "WORKLOAD_MODULES",
    "ProfileError",
    "ProfileInfo",
    "ReferenceError",
    "build_argv",
    "default_cluster",
    "find_profile",
    "list_profiles",
    "load_cluster_profile",
    "load_job_profile",
    "load_pipeline_profile",
    "profile_kind",
    "profile_names",
    "parse_cluster_text",
    "parse_overrides",
    "profile_dirs",
    "validate_file",
]

#: kind -> module under `engine.workloads` that runs it.
WORKLOAD_MODULES: dict[str, str] = {"train": "train", "compress": "compress", "eval": "evaluate",
                                     "prepare": "prepare"}

DISTRIBUTED_LAUNCHERS = spec_rules.DISTRIBUTED_LAUNCHERS  # one rule for profiles and the API
DISTRIBUTED_KINDS = spec_rules.DISTRIBUTED_KINDS
RESERVED_ENV_PREFIX = spec_rules.RESERVED_ENV_PREFIX
REFUSED_ENV = spec_rules.REFUSED_ENV

_ARG_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")

_ERROR_TYPE = "llmconsole"  # pydantic error type of this module's own checks


# ---------------------------------------------------------------------------
# Errors


def _one_line(text: str) -> str:
    """`text` with every control or line-breaking character, and every lone
    surrogate (a byte that was not UTF-8), escaped."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            escaped = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
            out.append(escaped or (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return "".join(out)


class ProfileError(UserError):
    """A profile (or a ``--set``) that cannot be used.

    `str(e)` is one line: ``<path>: <field>: <message>; expected <expected>``,
    parts that are None left out (``line L, column C`` takes the place of the
    field for a TOML syntax error). `errors` holds one such line per problem
    found, the first being `str(e)`.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        field: str | None = None,
        expected: str | None = None,
        line: int | None = None,
        column: int | None = None,
        errors: Sequence[str] | None = None,
    ) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self.field = field
        self.message = message
        self.expected = expected
        self.line = line
        self.column = column
        text = self._compose()
        self.errors: list[str] = list(errors) if errors else [text]
        super().__init__(text)

    def _compose(self) -> str:
        parts: list[str] = []
        if self.path is not None:
            parts.append(str(self.path))
        if self.line is not None:
            parts.append(f"line {self.line}, column {self.column}")
        if self.field is not None:
            parts.append(self.field)
        tail = self.message
        if self.expected:
            tail += f"; expected {self.expected}"
        parts.append(tail)
        return _one_line(": ".join(parts))

    def __str__(self) -> str:
        return self._compose()

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message,), self.__dict__)


def _custom(problem: str, expected: str) -> PydanticCustomError:
    # The template is formatted with the context: keep braces out of `problem`.
    return PydanticCustomError(_ERROR_TYPE, problem.replace("{", "(").replace("}", ")"),
                               {"expected": expected})


# ---------------------------------------------------------------------------
# Field checks (raise PydanticCustomError so that the field path is kept)


def _rule(check: Callable[[str], str]) -> Callable[[str], str]:
    """A rule of `engine.spec_rules` as a field check (the field path kept)."""

    def apply(value: str) -> str:
        try:
            return check(value)
        except RuleError as err:
            raise _custom(err.problem, err.expected) from None

    return apply


_NAME_EXPECTED = spec_rules.NAME_EXPECTED
_check_free_name = _rule(spec_rules.check_name)
_check_text = _rule(spec_rules.check_text)
_check_workdir = _rule(spec_rules.check_workdir)
_ENV_NAME_EXPECTED = spec_rules.ENV_NAME_EXPECTED
_check_env_name = _rule(spec_rules.check_env_name)
_check_node_path = _rule(spec_rules.check_node_path)
_check_label = _rule(spec_rules.check_label)
_check_node_selector = _rule(spec_rules.check_node_selector)
NodePath = Annotated[str, AfterValidator(_check_node_path)]
Label = Annotated[str, AfterValidator(_check_label)]
NodeSelector = Annotated[str, AfterValidator(_check_node_selector)]


def _check_description(value: str) -> str:
    problem = spec_rules.utf8_problem(value)
    if problem:
        raise _custom(problem, "UTF-8 text")
    if spec_rules.has_control(value, allowed="\n\t"):
        raise _custom("contains a control character", "text (newlines and tabs allowed)")
    return value


_ARG_KEY_EXPECTED = "a key matching ^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_ARG_VALUE_EXPECTED = "a string, integer, float, boolean or a non-empty list of those"


def _check_arg_key(value: str) -> str:
    if not _ARG_KEY_RE.fullmatch(value):
        raise _custom("is not a valid option name", _ARG_KEY_EXPECTED)
    return value


def _check_arg_scalar(value: object) -> None:
    if isinstance(value, str):
        try:
            spec_rules.check_text(value, _ARG_VALUE_EXPECTED)
        except RuleError as err:
            raise _custom(err.problem, err.expected) from None
    elif not isinstance(value, bool | int | float):
        raise _custom(f"{_toml_type(value)} cannot be an argument", _ARG_VALUE_EXPECTED)


def _check_arg_value(value: Any) -> Any:
    if isinstance(value, list):
        if not value:
            raise _custom("is an empty list", _ARG_VALUE_EXPECTED)
        for item in value:
            if isinstance(item, list):
                raise _custom("lists cannot be nested", _ARG_VALUE_EXPECTED)
            _check_arg_scalar(item)
    else:
        _check_arg_scalar(value)
    return value


_NODE_NAME_EXPECTED = "a name matching ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _check_node_name(value: str) -> str:
    if not _NODE_NAME_RE.fullmatch(value):
        raise _custom("is not a valid node name", _NODE_NAME_EXPECTED)
    return value


_HOST_EXPECTED = spec_rules.HOST_EXPECTED
_check_host = _rule(spec_rules.check_host)


_USER_EXPECTED = "a user name matching ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


def _check_user(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise _custom("is not a valid user name", _USER_EXPECTED)
    return value


FreeName = Annotated[str, AfterValidator(_check_free_name)]
Description = Annotated[str, AfterValidator(_check_description)]
ArgvItem = Annotated[str, AfterValidator(_check_text)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
EnvValue = Annotated[str, AfterValidator(_check_text)]
ArgKey = Annotated[str, AfterValidator(_check_arg_key)]
ArgValue = Annotated[Any, AfterValidator(_check_arg_value)]
UserName = Annotated[str, AfterValidator(_check_user)]
Gigabytes = Annotated[float, Field(ge=LIMITS["memory_gb"][0], le=LIMITS["memory_gb"][1],
                                   allow_inf_nan=False)]


def _range(field: str) -> str:
    low, high = LIMITS[field]
    return f"an integer from {low} to {high}"


_MEMORY_EXPECTED = f"a finite number from {LIMITS['memory_gb'][0]} to {LIMITS['memory_gb'][1]}"


# ---------------------------------------------------------------------------
# Schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ResourcesModel(_Strict):
    # The same bounds as the API's check (engine.model.LIMITS).
    nodes: int = Field(default=1, ge=LIMITS["nodes"][0], le=LIMITS["nodes"][1])
    gpus_per_node: int = Field(default=0, ge=LIMITS["gpus_per_node"][0],
                               le=LIMITS["gpus_per_node"][1])
    cpus: int = Field(default=1, ge=LIMITS["cpus"][0], le=LIMITS["cpus"][1])
    memory_gb: Gigabytes = 0.0
    nodes_with: Annotated[list[NodeSelector], Field(max_length=spec_rules.NODES_WITH_MAX)] = (
        Field(default_factory=list))


class _JobModel(_Strict):
    kind: Literal["train", "compress", "eval", "prepare", "command"]
    name: FreeName
    description: Description = ""
    command: Annotated[list[ArgvItem], Field(min_length=1)] | None = None
    launcher: Literal["local", "horovodrun", "torchrun"] = "local"
    priority: int = Field(default=0, ge=LIMITS["priority"][0], le=LIMITS["priority"][1])
    retries: int = Field(default=0, ge=LIMITS["retries"][0], le=LIMITS["retries"][1])
    workdir: Annotated[str, AfterValidator(_check_workdir)] | None = None
    resources: _ResourcesModel = _ResourcesModel()  # frozen, so sharing it is safe
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    args: dict[ArgKey, ArgValue] = Field(default_factory=dict)
    guard: dict[str, Any] | None = None  # checked by engine.guard.parse (_guard_problems)


class _NodeModel(_Strict):
    name: Annotated[str, AfterValidator(_check_node_name)]
    host: Annotated[str, AfterValidator(_check_host)] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: UserName | None = None
    identity: NodePath | None = None
    python: NodePath | None = None
    root: NodePath | None = None
    gpus: int | None = Field(default=None, ge=0, le=1_000_000)
    slots: int | None = Field(default=None, ge=1, le=1_000_000)
    memory_gb: Gigabytes | None = None
    labels: list[Label] = Field(default_factory=list)


_STAGE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_STAGE_EXPECTED = "a stage name matching ^[a-z][a-z0-9_-]{0,31}$"


def _check_stage_name(value: str) -> str:
    if not _STAGE_RE.fullmatch(value):
        raise _custom("is not a valid stage name", _STAGE_EXPECTED)
    return value


StageName = Annotated[str, AfterValidator(_check_stage_name)]


class _StageModel(_Strict):
    name: StageName
    profile: Annotated[str, Field(min_length=1), AfterValidator(_check_text)]
    after: list[StageName] | None = None
    set: dict[str, Any] = Field(default_factory=dict)


class _PipelineModel(_Strict):
    kind: Literal["pipeline"]
    name: FreeName
    description: Description = ""
    stages: Annotated[list[_StageModel], Field(min_length=1)]


class _ClusterModel(_Strict):
    kind: Literal["cluster"]
    name: FreeName
    description: Description = ""
    admins: list[UserName] = Field(default_factory=list)
    known_hosts: NodePath | None = None
    share_logs: bool = False
    nodes: Annotated[list[_NodeModel], Field(min_length=1)]


_JOB_KINDS_TEXT = 'one of "train", "compress", "eval", "prepare", "command"'

# What a field takes, by the shape of its path ('*' = any key, '[]' = any index).
_EXPECTED: dict[str, dict[tuple[str, ...], str]] = {
    "job": {
        ("kind",): _JOB_KINDS_TEXT,
        ("name",): _NAME_EXPECTED,
        ("description",): "a string",
        ("command",): 'a non-empty list of strings, e.g. ["python3", "-c", "print(1)"]',
        ("command", "[]"): "a string",
        ("launcher",): 'one of "local", "horovodrun", "torchrun"',
        ("priority",): _range("priority"),
        ("retries",): _range("retries"),
        ("workdir",): "an absolute path",
        ("resources",): "a table with nodes, gpus_per_node, cpus, memory_gb, nodes_with",
        ("resources", "nodes"): _range("nodes"),
        ("resources", "gpus_per_node"): _range("gpus_per_node"),
        ("resources", "cpus"): _range("cpus") + " (per node)",
        ("resources", "memory_gb"): _MEMORY_EXPECTED,
        ("resources", "nodes_with"): (f"a list of at most {spec_rules.NODES_WITH_MAX} node "
                                      "labels or names, e.g. nodes_with = [\"a100\"] (with "
                                      "--set: 'resources.nodes_with=[\"a100\"]')"),
        ("resources", "nodes_with", "[]"): spec_rules.NODE_SELECTOR_EXPECTED,
        ("env",): 'a table of NAME = "value"',
        ("env", "*"): 'a string (quote numbers: SEED = "42")',
        ("env", "*", "[key]"): _ENV_NAME_EXPECTED,
        ("args",): "a table of key = value",
        ("args", "*"): _ARG_VALUE_EXPECTED,
        ("args", "*", "[key]"): _ARG_KEY_EXPECTED,
        ("guard",): "a [guard] table of " + ", ".join(guard_rules.FIELDS),
    },
    "cluster": {
        ("kind",): '"cluster"',
        ("name",): _NAME_EXPECTED,
        ("description",): "a string",
        ("admins",): "a list of user names",
        ("admins", "[]"): _USER_EXPECTED,
        ("nodes",): "a non-empty list of [[nodes]] tables",
        ("nodes", "[]"): "a [[nodes]] table",
        ("nodes", "[]", "name"): _NODE_NAME_EXPECTED,
        ("nodes", "[]", "host"): _HOST_EXPECTED,
        ("nodes", "[]", "port"): "an integer from 1 to 65535",
        ("nodes", "[]", "user"): _USER_EXPECTED,
        ("nodes", "[]", "gpus"): "an integer >= 0",
        ("nodes", "[]", "slots"): "an integer >= 1",
        ("nodes", "[]", "memory_gb"): _MEMORY_EXPECTED,
        ("nodes", "[]", "identity"): spec_rules.NODE_PATH_EXPECTED,
        ("nodes", "[]", "python"): spec_rules.NODE_PATH_EXPECTED,
        ("nodes", "[]", "root"): spec_rules.NODE_PATH_EXPECTED,
        ("nodes", "[]", "labels"): "a list of labels",
        ("nodes", "[]", "labels", "[]"): spec_rules.LABEL_EXPECTED,
        ("known_hosts",): spec_rules.NODE_PATH_EXPECTED,
        ("share_logs",): "true or false (default false: logs are the owner's and admins')",
    },
}

_EXPECTED["pipeline"] = {
    ("kind",): '"pipeline"',
    ("name",): _NAME_EXPECTED,
    ("description",): "a string",
    ("stages",): "a non-empty list of [[stages]] tables",
    ("stages", "[]"): "a [[stages]] table",
    ("stages", "[]", "name"): _STAGE_EXPECTED,
    ("stages", "[]", "profile"): "a job profile name or path",
    ("stages", "[]", "after"): "a list of earlier stage names",
    ("stages", "[]", "after", "[]"): _STAGE_EXPECTED,
    ("stages", "[]", "set"): "a table of profile fields, e.g. { args = { max_steps = 10 } }",
}

_TABLES: dict[str, dict[tuple[str, ...], type[BaseModel]]] = {
    "pipeline": {(): _PipelineModel, ("stages", "[]"): _StageModel},
    "job": {(): _JobModel, ("resources",): _ResourcesModel},
    "cluster": {(): _ClusterModel, ("nodes", "[]"): _NodeModel},
}


# ---------------------------------------------------------------------------
# Turning pydantic errors into lines


def _toml_type(value: object) -> str:
    """'a string', 'an integer', ...: the TOML type of `value`, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _suggest(unknown: str, known: Sequence[str]) -> str | None:
    """The known field a misspelt `unknown` most likely meant, if any."""
    starts = [k for k in known if k.startswith(unknown) or unknown.startswith(k)]
    if starts:
        return starts[0]
    close = difflib.get_close_matches(unknown, known, n=1, cutoff=0.75)
    return close[0] if close else None


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for item in loc:
        if item == "[key]":
            continue
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            key = item if _BARE_KEY_RE.fullmatch(item) else json.dumps(item, ensure_ascii=False)
            out += f".{key}" if out else key
    return out or "(top level)"


def _shape(schema: str, loc: Sequence[int | str]) -> tuple[str, ...]:
    shape: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            shape.append("[]")
        elif schema == "job" and i == 1 and loc[0] in ("env", "args"):
            shape.append("*")
        else:
            shape.append(item)
    return tuple(shape)


def _describe(schema: str, err: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(field path, problem, expected) for one pydantic error."""
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    shape = _shape(schema, loc)
    path = _field_path(loc)
    if kind == "extra_forbidden":
        model = _TABLES[schema].get(shape[:-1])
        known = list(model.model_fields) if model else []
        problem = "unknown field"
        hint = _suggest(str(loc[-1]), known)
        if hint is None and schema == "job" and shape == (loc[-1],):
            hint = _suggest(str(loc[-1]), list(_ResourcesModel.model_fields))
            hint = f"resources.{hint}" if hint else None
        if hint:
            problem += f" (did you mean {hint}?)"
        return path, problem, "one of: " + ", ".join(known) if known else None
    expected = _EXPECTED[schema].get(shape)
    if kind == _ERROR_TYPE:
        return path, str(err["msg"]), ctx.get("expected") or expected
    if kind == "missing":
        return path, "field required", expected
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"input should be a table, not {_toml_type(err.get('input'))}", expected
    msg = str(err["msg"])
    return path, msg[:1].lower() + msg[1:], expected


def _from_problems(
    path: Path,
    problems: Sequence[tuple[str, str, str | None]],
    overridden: Sequence[str] = (),
) -> ProfileError:
    def from_set(field: str) -> bool:
        return any(field == k or field.startswith((k + ".", k + "[")) for k in overridden)

    marked = [
        (field, problem + (" (value from --set)" if from_set(field) else ""), expected)
        for field, problem, expected in problems
    ]
    lines = [str(ProfileError(p, path=path, field=f, expected=e)) for f, p, e in marked]
    field, problem, expected = marked[0]
    return ProfileError(problem, path=path, field=field, expected=expected, errors=lines)


def _validate(
    model: type[_JobModel] | type[_ClusterModel] | type[_PipelineModel],
    schema: str,
    data: Mapping[str, Any],
    path: Path,
    overridden: Sequence[str],
) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(schema, err) for err in exc.errors(include_url=False)]
        raise _from_problems(path, problems, overridden) from None


# ---------------------------------------------------------------------------
# Reading files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"not UTF-8 text (byte {exc.start})", path=path,
                           expected="a UTF-8 TOML file") from None
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        pos = _TOML_POS_RE.search(message)
        if pos:
            line, column = int(pos.group(1)), int(pos.group(2))
            message = message[: pos.start()]
        else:
            message = _TOML_END_RE.sub("", message)
            lines = text.split("\n")
            line, column = len(lines), len(lines[-1]) + 1
        raise ProfileError(message, path=path, line=line, column=column) from None
    except RecursionError:
        raise ProfileError("nested too deeply", path=path) from None


# ---------------------------------------------------------------------------
# Overrides


def _has_datetime(value: object) -> bool:
    if isinstance(value, list):
        return any(_has_datetime(v) for v in value)
    if isinstance(value, dict):
        return any(_has_datetime(v) for v in value.values())
    return not isinstance(value, str | int | float | bool)


def _parse_value(raw: str) -> object:
    try:
        doc = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
    if list(doc) != ["v"] or _has_datetime(doc["v"]):
        return raw
    return doc["v"]


def _split_overrides(items: Sequence[str]) -> list[tuple[tuple[str, ...], object, str]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ProfileError("expected key=value", field=f"--set {item}")
        part, problem = "key", spec_rules.utf8_problem(key)
        if problem is None:
            part, problem = "value", spec_rules.utf8_problem(raw)
        if problem:
            raise ProfileError(f"the {part} {problem}", field=f"--set {key}",
                               expected="UTF-8 text (check the encoding of the terminal "
                               "or script that passed it)")
        parts = tuple(p.strip() for p in key.split("."))
        if not all(parts):
            raise ProfileError("empty key", field=f"--set {item}",
                               expected="key=value with a dotted key, e.g. resources.nodes=2")
        out.append((parts, _parse_value(raw), raw))
    return out


def _set_path(target: dict[str, Any], parts: Sequence[str], value: object) -> None:
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = {}
            target[part] = child
        target = child
    target[parts[-1]] = value


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = _deep_merge({}, value)
        else:
            out[key] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """``["resources.gpus_per_node=2", "name=x"]`` -> a nested dict.

    Each value is parsed as one TOML value, else kept as the raw string.
    Later items win. Raises `ProfileError` for an item without ``=`` or with
    an empty key part.
    """
    result: dict[str, Any] = {}
    for parts, value, _raw in _split_overrides(items):
        _set_path(result, parts, value)
    return result


# `--set env.HF_TOKEN=@env`: a secret-looking variable's value, from the
# submitter's environment (never written on the command line).
FROM_ENVIRONMENT = "@env"
_JOB_STRING_FIELDS = {("name",), ("description",), ("workdir",), ("kind",), ("launcher",)}


def _job_overrides(items: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    result: dict[str, Any] = {}
    keys = []
    for parts, value, raw in _split_overrides(items):
        is_env = len(parts) == 2 and parts[0] == "env"
        takes_string = parts in _JOB_STRING_FIELDS or is_env
        if takes_string and not isinstance(value, str):
            value = raw
        if is_env and secrets.is_secret_name(parts[1]):
            value = _secret_from_environment(parts[1], raw)
        _set_path(result, parts, value)
        keys.append(_field_path(parts))
    return result, keys


def _secret_from_environment(name: str, raw: str) -> str:
    """The value of ``--set env.NAME=@env`` for a secret-looking NAME: the
    submitter's own variable. A secret's value written on the command line
    is refused: every user of the machine sees it (ps, /proc) and it stays
    in the shell's history."""
    field = f"--set env.{name}"
    if raw != FROM_ENVIRONMENT:
        raise ProfileError("a secret's value on the command line is seen by every user of "
                           "this machine (ps) and kept in your shell history", field=field,
                           expected=f"{field}={FROM_ENVIRONMENT} to take it from your own "
                           f"environment, or the profile's [env] in a file only you can read")
    value = os.environ.get(name)
    if value is None:
        raise ProfileError(f"{name} is not set in your environment", field=field,
                           expected=f"export {name}=... before submitting, or set it in the "
                           "profile's [env]")
    return value


# ---------------------------------------------------------------------------
# Jobs


def _arg_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# What argparse itself takes for a negative number rather than an option.
_NEGATIVE_NUMBER_RE = re.compile(r"-\d+|-\d*\.\d+")


def _looks_like_option(text: str) -> bool:
    return text.startswith("-") and not _NEGATIVE_NUMBER_RE.fullmatch(text)


def _flags(args: Mapping[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
        elif isinstance(value, list):
            flags.append(flag)
            flags.extend(_arg_text(v) for v in value)
        else:
            text = _arg_text(value)
            # "--model=--help": a value that starts with '-' stays a value
            flags.extend((f"{flag}={text}",) if _looks_like_option(text) else (flag, text))
    return flags


def build_argv(
    kind: str, command: Sequence[str] | None, args: Mapping[str, Any]
) -> tuple[str, ...]:
    """The argv of a job (see the module docstring). Expects validated input."""
    if kind == "command":
        if not command:
            raise ValueError("kind command needs a command")
        return tuple(command)
    module = WORKLOAD_MODULES[kind]
    return (sys.executable, "-m", f"engine.workloads.{module}", *_flags(args))


_OUTPUT_PLACEHOLDER = "(the output folder assigned at submit)"


def _workload_problems(kind: str, args: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """[args] checked against the workload's own parser
    (`engine.workloads.options`): each key an option of it, a flag given
    true/false, a value that parses. ``@NAME`` references are checked as the
    text they are (they become folders later), and a missing ``--output`` is
    the one assigned at submit."""
    module = WORKLOAD_MODULES[kind]
    prog = workload_options.PROGRAMS[module]
    table = workload_options.options(module)
    see = f"see `{prog} --help`"
    problems: list[tuple[str, str, str | None]] = []
    given: dict[str, str] = {}  # flag -> field
    for key, value in args.items():
        field = _field_path(("args", key))
        flag = "--" + key.replace("_", "-")
        opt = table.get(flag)
        if opt is None:
            keys = sorted({o.key for o in table.values()})
            hint = _suggest(key.replace("-", "_"), keys)
            problems.append((field, f"the {kind} workload has no option {flag}"
                             + (f" (did you mean {hint}?)" if hint else ""),
                             f"an option of {prog} ({see})" if hint else
                             "one of: " + ", ".join(keys)))
            continue
        given[flag] = field
        if opt.takes == "flag" and not isinstance(value, bool):
            problems.append((field, f"{flag} is an on/off option, not {_toml_type(value)}",
                             f"{key} = true or {key} = false"))
        elif opt.takes != "flag" and isinstance(value, bool):
            problems.append((field, f"{flag} takes a value, not true/false",
                             f"a value for {flag} ({see})"))
        elif opt.takes == "one" and isinstance(value, list):
            problems.append((field, f"{flag} takes one value, not a list",
                             f"one value for {flag}"))
        elif isinstance(value, list) and any(_looks_like_option(_arg_text(v)) for v in value):
            problems.append((field, f"an item starting with '-' would reach {prog} as an "
                             "option, not as a value of " + flag,
                             "items that do not start with '-'"))
    if problems:
        return problems
    for opt in table.values():
        if opt.required and opt.flag not in given and opt.flag != "--output" \
                and not set(opt.alternatives) & set(given):
            needs = " or ".join((opt.flag, *opt.alternatives))  # --method or --search
            problems.append((f"args.{opt.key}", f"missing: the {kind} workload needs {needs}",
                             (f"one of: {', '.join(opt.choices)}; " if opt.choices else "")
                             + f"{opt.key} = ... in [args], or --set args.{opt.key}=..."))
    if problems:
        return problems
    argv = _flags(args)
    if "--output" not in given:
        argv += ["--output", _OUTPUT_PLACEHOLDER]
    try:
        workload_options.parse(module, argv)
    except workload_options.OptionError as err:
        opt = table.get(err.option or "")
        expected = err.expected or (f"one of: {', '.join(opt.choices)}" if opt and opt.choices
                                    else see)
        problems.append((given.get(err.option or "", "args"), err.problem, expected))
    return problems


def _exec_problems(m: _JobModel, argv: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """Each argument and NAME=value within the kernel's per-argument limit,
    and all of them within `spec_rules.exec_size_limit()`."""
    items: list[tuple[str, str]]
    if m.kind == "command":
        items = [(f"command[{i}]", a) for i, a in enumerate(m.command or ())]
    else:
        items = [(_field_path(("args", k)), a) for k, v in m.args.items()
                 for a in _flags({k: v})]
    items += [(_field_path(("env", k)), f"{k}={v}") for k, v in m.env.items()]
    problems: list[tuple[str, str, str | None]] = []
    for field, text in items:
        try:
            spec_rules.check_arg_size(text)
        except RuleError as err:
            problems.append((field, err.problem, err.expected))
    if not problems:
        try:
            spec_rules.check_exec_size(argv, m.env)
        except RuleError as err:
            problems.append(("command" if m.kind == "command" else "args", err.problem,
                             err.expected))
    return problems


def _job_rules(m: _JobModel) -> list[tuple[str, str, str | None]]:
    problems: list[tuple[str, str, str | None]] = []
    if m.kind == "command":
        if m.command is None:
            problems.append(("command", 'required for kind "command"',
                             'command = ["program", "arg", ...]'))
        elif not m.command[0]:
            problems.append(("command[0]", "the program is empty", "a program name or path"))
        if m.args:
            problems.append(("args", 'not used by kind "command"',
                             "the arguments inside command = [...]"))
    elif m.command is not None:
        problems.append(("command", f'not allowed for kind "{m.kind}" (its argv is built from '
                         "[args])", "no command; options go in [args]"))
    if m.launcher in DISTRIBUTED_LAUNCHERS and m.kind not in DISTRIBUTED_KINDS:
        problems.append(("launcher", f'"{m.launcher}" is not available for kind "{m.kind}"',
                         '"local" (horovodrun and torchrun are for kinds train and compress)'))
    if m.kind in PART_KINDS and "part" in m.args:
        problems.append(("args.part", "--part is set by the engine, one part per node",
                         "resources.nodes = N to run the job in N parts"))
    if m.resources.nodes > 1 and m.launcher not in DISTRIBUTED_LAUNCHERS \
            and m.kind not in PART_KINDS:
        problems.append(("resources.nodes",
                         f'a job on {m.resources.nodes} nodes needs a distributed launcher, '
                         f'not "{m.launcher}"',
                         'launcher = "horovodrun" or "torchrun" (or resources.nodes = 1; '
                         'kind "prepare" runs a part per node with launcher "local")'))
    problems += _guard_problems(m)
    flags: dict[str, str] = {}
    for key in m.args:
        flag = key.replace("_", "-")
        if flag in flags:
            problems.append((f"args.{key}", f"gives the same option --{flag} as args.{flags[flag]}",
                             "one key per option"))
        flags.setdefault(flag, key)
    return problems


def _guard_problems(m: _JobModel) -> list[tuple[str, str, str | None]]:
    """[guard] is for training: kind train, and compress with method distill."""
    if m.guard is None:
        return []
    if m.kind not in guard_rules.GUARD_KINDS or (
            m.kind == "compress" and m.args.get("method") != "distill"):
        what = f'kind "{m.kind}"' + (f' (method {m.args.get("method")!r})'
                                     if m.kind == "compress" else "")
        return [("guard", f"{what} does not train, so it has no loss to guard",
                 'no [guard] table (it is for kind "train", and "compress" with '
                 'method = "distill")')]
    try:
        guard_rules.parse(m.guard)
    except guard_rules.GuardError as err:
        return list(err.problems)
    return []


def _job_spec(data: Mapping[str, Any], path: Path, overridden: Sequence[str] = (),
              check_args: bool = False) -> JobSpec:
    if data.get("kind") == "cluster":
        raise ProfileError("this is a cluster profile", path=path, field="kind",
                           expected=f"a job profile ({_JOB_KINDS_TEXT}); "
                           "load it as a cluster profile")
    if data.get("kind") == "pipeline":
        raise ProfileError("this is a pipeline profile", path=path, field="kind",
                           expected=f"a job profile ({_JOB_KINDS_TEXT}); a pipeline cannot "
                           "be a stage of another pipeline")
    data = {**data}
    data.setdefault("name", path.stem)
    stem_problem = spec_rules.utf8_problem(path.stem)
    if stem_problem:
        raise ProfileError(f"the file name {stem_problem}", path=path,
                           expected="a file name in UTF-8 (rename the file)")
    m: _JobModel = _validate(_JobModel, "job", data, path, overridden)
    problems = _job_rules(m)
    if problems:
        raise _from_problems(path, problems, overridden)
    argv = build_argv(m.kind, m.command, m.args)
    problems = _exec_problems(m, argv)
    if not problems and check_args and m.kind in WORKLOAD_MODULES:
        problems = _workload_problems(m.kind, m.args)
    if problems:
        raise _from_problems(path, problems, overridden)
    return JobSpec(
        name=m.name,
        kind=m.kind,
        argv=argv,
        launcher=m.launcher,
        resources=Resources(
            nodes=m.resources.nodes,
            gpus_per_node=m.resources.gpus_per_node,
            cpus=m.resources.cpus,
            memory_gb=float(m.resources.memory_gb),
            nodes_with=tuple(dict.fromkeys(m.resources.nodes_with)),
        ),
        env=tuple(sorted(m.env.items())),
        retries=m.retries,
        priority=m.priority,
        workdir=m.workdir,
        profile=path.stem,
        guard=guard_rules.parse(m.guard) if m.guard is not None else None,
    )


# ---------------------------------------------------------------------------
# Clusters


def default_cluster() -> ClusterSpec:
    """The head node alone, run by a local agent."""
    return ClusterSpec(name="local", nodes=(NodeSpec(name="local"),))


def _cluster_rules(m: _ClusterModel) -> list[tuple[str, str, str | None]]:
    problems: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    local: int | None = None
    for i, node in enumerate(m.nodes):
        if node.name in seen:
            problems.append((f"nodes[{i}].name", f"duplicate node name {node.name} (also "
                             f"nodes[{seen[node.name]}])", "a name used by one node only"))
        seen.setdefault(node.name, i)
        if node.host is None:
            if local is not None:
                problems.append((f"nodes[{i}].host", f"missing, and nodes[{local}] is already "
                                 "the head node (a node without host)",
                                 "a host for every node but one"))
            else:
                local = i
    return problems


def _cluster_spec(data: Mapping[str, Any], path: Path) -> ClusterSpec:
    kind = data.get("kind")
    if isinstance(kind, str) and kind in (*WORKLOAD_MODULES, "command"):
        raise ProfileError("this is a job profile", path=path, field="kind",
                           expected='kind = "cluster" in a cluster profile')
    data = {**data}
    data.setdefault("name", path.stem)
    m: _ClusterModel = _validate(_ClusterModel, "cluster", data, path, ())
    problems = _cluster_rules(m)
    if problems:
        raise _from_problems(path, problems)
    return ClusterSpec(
        name=m.name,
        nodes=tuple(
            NodeSpec(
                name=n.name,
                host=n.host,
                port=n.port,
                user=n.user,
                identity=n.identity,
                python=n.python,
                root=n.root,
                gpus=n.gpus,
                slots=n.slots,
                memory_gb=float(n.memory_gb) if n.memory_gb is not None else None,
                labels=tuple(dict.fromkeys(n.labels)),
            )
            for n in m.nodes
        ),
        admins=tuple(dict.fromkeys(m.admins)),
        known_hosts=m.known_hosts,
        share_logs=m.share_logs,
    )


# ---------------------------------------------------------------------------
# Finding files


def _shipped_dir() -> Path:
    return Path(engine.__file__).resolve().parent.parent / "profiles"


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, in order (see the module docstring)."""
    candidates = [
        Path(entry).expanduser()
        for entry in os.environ.get("LLMCONSOLE_PROFILES", "").split(os.pathsep)
        if entry
    ]
    candidates += [Path("profiles"), _shipped_dir()]
    out: list[Path] = []
    seen: set[Path] = set()
    for cand in candidates:
        try:
            if not cand.is_dir():
                continue
            key = cand.resolve()
        except OSError:
            continue
        if key not in seen:
            seen.add(key)
            out.append(cand.absolute())
    return out


def _not_found(name: str, dirs: Sequence[Path], what: str) -> ProfileError:
    where = ", ".join(str(d) for d in dirs) or "no profile directory exists"
    return ProfileError(
        f"no {what} profile of that name (searched: {where})",
        path=name,
        expected="the path of a .toml file or a name shown by `llmconsole profiles list`",
    )


def _candidates(name_or_path: str, dirs: Sequence[Path] | None, subdirs: Sequence[str]
                ) -> tuple[Path | None, list[Path]]:
    direct = Path(name_or_path).expanduser()
    if name_or_path and direct.is_file():
        return direct, []
    search = list(profile_dirs() if dirs is None else dirs)
    looks_like_path = any(sep and sep in name_or_path for sep in ("/", os.sep, os.altsep))
    if not name_or_path or looks_like_path:
        return None, search
    stem = name_or_path.removesuffix(".toml")
    for d in search:
        for sub in subdirs:
            cand = Path(d) / sub / f"{stem}.toml"
            if cand.is_file():
                return cand, search
    return None, search


def find_profile(name_or_path: str, dirs: Sequence[Path] | None = None) -> Path:
    """The file of a job profile: an existing file path as is, else the first
    ``NAME.toml`` in `dirs` (default `profile_dirs()`)."""
    found, searched = _candidates(name_or_path, dirs, ("",))
    if found is None:
        raise _not_found(name_or_path, searched, "job")
    return found


def _find_cluster(name_or_path: str, dirs: Sequence[Path] | None) -> Path:
    found, searched = _candidates(name_or_path, dirs, ("clusters", ""))
    if found is None:
        raise _not_found(name_or_path, searched, "cluster")
    return found


# ---------------------------------------------------------------------------
# Public loaders


def load_job_profile(
    name_or_path: str, overrides: Sequence[str] = (), dirs: Sequence[Path] | None = None,
    *, check_args: bool = False,
) -> JobSpec:
    """The `JobSpec` of a job profile after ``--set`` `overrides`.

    `JobSpec.profile` is the file stem; `JobSpec.name` defaults to it. With
    `check_args`, a workload's [args] are also checked against the
    workload's own parser (what submit and `validate_file` do).
    """
    extra, keys = _job_overrides(overrides)
    path = find_profile(name_or_path, dirs)
    data = _deep_merge(_read_toml(path), extra)
    return _job_spec(data, path, keys, check_args)


def load_cluster_profile(
    name_or_path: str | None, dirs: Sequence[Path] | None = None
) -> ClusterSpec:
    """The `ClusterSpec` of a cluster profile; None gives `default_cluster()`."""
    if name_or_path is None:
        return default_cluster()
    path = _find_cluster(name_or_path, dirs)
    return _cluster_spec(_read_toml(path), path)


def parse_cluster_text(text: str, path: Path | str) -> ClusterSpec:
    """The `ClusterSpec` of cluster-profile TOML `text`, checked exactly as
    `load_cluster_profile` checks a file, errors naming `path` (the file
    that text is about to become: `llmconsole cluster import` validates
    before it writes)."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"not valid TOML ({exc})", path=path) from None
    return _cluster_spec(data, path)


def _check_data(data: Mapping[str, Any], path: Path, kind: object) -> None:
    if kind == "cluster":
        _cluster_spec(data, path)
    elif kind == "pipeline":
        _pipeline_spec(data, path, [], None, check_args=True)
    else:
        _job_spec(data, path, check_args=True)


def validate_file(path: Path) -> None:
    """Raise `ProfileError` unless `path` is a valid job, pipeline or cluster
    profile (told apart by ``kind``): everything submit checks before it
    queues anything, a workload's [args] against the workload's own parser
    and a pipeline's ``@stage`` references included."""
    path = Path(path)
    data = _read_toml(path)
    _check_data(data, path, data.get("kind"))


@dataclass(frozen=True)
class ProfileInfo:
    """One profile file as `list_profiles` sees it. `name` is what to type
    (the file stem); `error` is the `ProfileError` line of an invalid file."""

    name: str
    path: Path
    kind: str
    description: str
    error: str | None


def _info(path: Path, in_clusters: bool) -> ProfileInfo:
    kind = "cluster" if in_clusters else "unknown"
    description = ""
    try:
        data = _read_toml(path)
        if isinstance(data.get("kind"), str):
            kind = data["kind"]
        if isinstance(data.get("description"), str):
            description = data["description"]
        _check_data(data, path, kind)
    except ProfileError as exc:
        return ProfileInfo(path.stem, path, kind, description, str(exc))
    return ProfileInfo(path.stem, path, kind, description, None)


def list_profiles(dirs: Sequence[Path] | None = None) -> list[ProfileInfo]:
    """Every ``*.toml`` in `dirs` and their ``clusters/``, job profiles then
    cluster profiles, each sorted by name. Of two files with the same name and
    the same group (job or cluster) the one found first wins, as in lookups.
    Invalid files are listed with `error` set; this never raises."""
    seen: set[tuple[bool, str]] = set()
    out: list[ProfileInfo] = []
    for d in profile_dirs() if dirs is None else dirs:
        for sub in ("clusters", ""):
            folder = Path(d) / sub
            try:
                files = sorted(p for p in folder.glob("*.toml") if p.is_file())
            except OSError:
                continue
            for f in files:
                info = _info(f, in_clusters=bool(sub))
                key = (info.kind == "cluster", info.name)
                if key not in seen:
                    seen.add(key)
                    out.append(info)
    out.sort(key=lambda i: (i.kind == "cluster", i.name))
    return out


# ---------------------------------------------------------------------------
# Pipelines


def profile_names(dirs: Sequence[Path] | None = None) -> list[str]:
    """The names of the job and pipeline profiles found (file stems, each
    once, sorted), without reading them."""
    names: set[str] = set()
    for d in profile_dirs() if dirs is None else dirs:
        try:
            names.update(p.stem for p in Path(d).glob("*.toml") if p.is_file())
        except OSError:
            continue
    return sorted(names)


def profile_kind(name_or_path: str, dirs: Sequence[Path] | None = None) -> str:
    """The ``kind`` of a job or pipeline profile ("" when it has none)."""
    kind = _read_toml(find_profile(name_or_path, dirs)).get("kind")
    return kind if isinstance(kind, str) else ""


def _stage_overrides(items: Sequence[str], stages: Sequence[str], path: Path
                     ) -> dict[str, list[str]]:
    routed: dict[str, list[str]] = {name: [] for name in stages}
    for item in items:
        stage, dot, rest = item.partition(".")
        if not dot or stage not in routed:
            raise ProfileError("a pipeline's --set names a stage first", path=path,
                               field=f"--set {item}",
                               expected="STAGE.key=value with STAGE one of "
                               + ", ".join(stages))
        routed[stage].append(rest)
    return routed


class ReferenceError(ProfileError):
    """An ``@NAME`` argument that names nothing usable: in a pipeline, not
    an earlier stage with an output folder; for a single job, no profile, or
    no succeeded job of it (`engine.pipelines`)."""


def _pipeline_spec(data: Mapping[str, Any], path: Path, overrides: Sequence[str],
                   dirs: Sequence[Path] | None, check_args: bool = False) -> PipelineSpec:
    data = {**data}
    data.setdefault("name", path.stem)
    m: _PipelineModel = _validate(_PipelineModel, "pipeline", data, path, ())
    names = [s.name for s in m.stages]
    problems: list[tuple[str, str, str | None]] = []
    for i, stage in enumerate(m.stages):
        if stage.name in names[:i]:
            problems.append((f"stages[{i}].name", f"duplicate stage name {stage.name}",
                             "a name used by one stage only"))
        for after in stage.after or []:
            if after not in names[:i]:
                problems.append((f"stages[{i}].after", f"{after} is not an earlier stage",
                                 "names of stages listed above this one"))
    if problems:
        raise _from_problems(path, problems)
    routed = _stage_overrides(overrides, names, path)
    stages = []
    for i, stage in enumerate(m.stages):
        ref = stage.profile
        if "/" in ref and not Path(ref).is_absolute():
            ref = str(path.parent / ref)
        try:
            search = [path.parent, *(profile_dirs() if dirs is None else dirs)]
            stage_path = find_profile(ref, search)
            extra, keys = _job_overrides(routed[stage.name])
            table = _deep_merge(_deep_merge(_read_toml(stage_path), dict(stage.set)), extra)
            spec = _job_spec(table, stage_path, keys, check_args)
        except ProfileError as err:
            raise ProfileError(f"stage {stage.name}: {err}", path=path,
                               field=f"stages[{i}]") from None
        stages.append(StageSpec(stage.name, spec,
                                tuple(stage.after) if stage.after is not None else None))
    refs = [(f"stages[{i}]", f"stage {stages[i].name}: {problem}", expected)
            for i, problem, expected in spec_rules.stage_reference_problems(stages)]
    if refs:
        first = _from_problems(path, refs)
        raise ReferenceError(first.message, path=path, field=first.field,
                             expected=first.expected, errors=first.errors)
    return PipelineSpec(name=m.name, stages=tuple(stages), description=m.description)


def load_pipeline_profile(
    name_or_path: str, overrides: Sequence[str] = (), dirs: Sequence[Path] | None = None,
    *, check_args: bool = False,
) -> PipelineSpec:
    """The `PipelineSpec` of a pipeline profile; ``--set`` items are
    ``STAGE.key=value``. Each stage's job profile is validated as usual
    (`check_args` as in `load_job_profile`), with the stage's ``set`` table
    and overrides merged in; an error names the stage. Every ``@stage``
    argument must name an earlier stage with an output folder, else
    `ReferenceError` (a cycle is a reference to a later stage)."""
    path = find_profile(name_or_path, dirs)
    return _pipeline_spec(_read_toml(path), path, overrides, dirs, check_args)
