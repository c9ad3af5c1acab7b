"""Validation of a job spec that arrives over the API (the CLI sends the
`JobSpec.to_dict()` of a validated profile; scripts may send anything).
Raises BadRequest naming the field and what was expected, one line:
``spec.<field>: <problem>; expected <what>``.

The rules are `engine.spec_rules` and `engine.model.LIMITS`, the ones a
profile follows: every string UTF-8 without NUL (a lone surrogate such as
"\\udcff" is refused), names 1-128 characters and not blank, env names
allow-listed, the program (argv[0]) not empty, a distributed launcher
only for kinds train and compress, numbers finite and within LIMITS, the argv and environment
within what the kernel's execve takes, `resources.nodes_with` a list of at
most `spec_rules.NODES_WITH_MAX` labels or node names (repeats dropped, the
first kept; absent, as in specs from before it existed: any node)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from engine import spec_rules
from engine.errors import BadRequest
from engine.guard import GUARD_KINDS, GuardError, GuardSpec, from_stored, parse
from engine.model import KINDS, LAUNCHERS, LIMITS, PART_KINDS, JobSpec, Resources
from engine.spec_rules import RuleError

FIELDS = {"name", "kind", "argv", "launcher", "resources", "env", "retries", "priority",
          "workdir", "profile", "guard"}
RESOURCE_FIELDS = {"nodes", "gpus_per_node", "cpus", "memory_gb", "nodes_with"}


def _apply(field: str, check: Callable[[str], str], value: str) -> None:
    try:
        check(value)
    except RuleError as err:
        raise BadRequest(f"{field}: {_shown(err.problem)}; expected {err.expected}") from None


def _shown(text: str) -> str:
    """`text` safe to put in a JSON error and on a terminal."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _int(data: dict[str, Any], key: str, default: int, where: str) -> int:
    low, high = LIMITS[key]
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{where}{key}: expected an integer from {low} to {high}, "
                         f"got {_shown(repr(value))[:40]}")
    return value


def _memory(res: dict[str, Any]) -> float:
    low, high = LIMITS["memory_gb"]
    value = res.get("memory_gb", 0.0)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high):
        raise BadRequest(f"spec.resources.memory_gb: expected a finite number from {low} to "
                         f"{high}, got {_shown(repr(value))[:40]}")
    return float(value)


def _nodes_with(res: dict[str, Any]) -> tuple[str, ...]:
    value = res.get("nodes_with", [])
    limit = spec_rules.NODES_WITH_MAX
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"spec.resources.nodes_with: expected a list of at most {limit} node "
                         f"labels or names, got {_shown(repr(value))[:40]}")
    for i, item in enumerate(value):
        field = f"spec.resources.nodes_with[{i}]"
        if not isinstance(item, str):
            raise BadRequest(f"{field}: expected a string, {spec_rules.NODE_SELECTOR_EXPECTED}")
        _apply(field, spec_rules.check_node_selector, item)
    return tuple(dict.fromkeys(value))


def spec_from_payload(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise BadRequest("spec: expected a JSON object (a job spec)")
    unknown = set(data) - FIELDS
    if unknown:
        names = ", ".join(sorted(_shown(repr(k) if not isinstance(k, str) else k)
                                 for k in unknown))
        raise BadRequest(f"spec: unknown field(s) {names}; "
                         f"expected only {', '.join(sorted(FIELDS))}")
    name = data.get("name")
    if not isinstance(name, str):
        raise BadRequest(f"spec.name: expected a string of {spec_rules.NAME_EXPECTED}")
    _apply("spec.name", spec_rules.check_name, name)
    kind = data.get("kind")
    if kind not in KINDS:
        raise BadRequest(f"spec.kind: expected one of {', '.join(KINDS)}, "
                         f"got {_shown(repr(kind))[:40]}")
    launcher = data.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise BadRequest(f"spec.launcher: expected one of {', '.join(LAUNCHERS)}, "
                         f"got {_shown(repr(launcher))[:40]}")
    try:
        spec_rules.check_launcher(kind, launcher)
    except RuleError as err:
        raise BadRequest(f"spec.launcher: {err.problem}; expected {err.expected}") from None
    argv = data.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BadRequest("spec.argv: expected a non-empty list of strings (no NUL bytes)")
    _apply("spec.argv[0]", spec_rules.check_program, argv[0])
    for i, arg in enumerate(argv):
        _apply(f"spec.argv[{i}]", spec_rules.check_text, arg)
        _apply(f"spec.argv[{i}]", spec_rules.check_arg_size, arg)
    res = data.get("resources") or {}
    if not isinstance(res, dict) or set(res) - RESOURCE_FIELDS:
        raise BadRequest(f"spec.resources: expected an object with {sorted(RESOURCE_FIELDS)}")
    resources = Resources(
        nodes=_int(res, "nodes", 1, "spec.resources."),
        gpus_per_node=_int(res, "gpus_per_node", 0, "spec.resources."),
        cpus=_int(res, "cpus", 1, "spec.resources."),
        memory_gb=_memory(res),
        nodes_with=_nodes_with(res),
    )
    if resources.nodes > 1 and launcher == "local" and kind not in PART_KINDS:
        raise BadRequest("spec.launcher: a job on several nodes needs launcher "
                         "'horovodrun' or 'torchrun' (kind 'prepare' runs a part per node)")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("spec.env: expected an object of name -> string")
    for key, value in env.items():
        field = f"spec.env.{_shown(key)}"
        _apply(field, spec_rules.check_env_name, key)
        if not isinstance(value, str):
            raise BadRequest(f"{field}: expected a string value")
        _apply(field, spec_rules.check_text, value)
        _apply(field, spec_rules.check_arg_size, f"{key}={value}")
    try:
        spec_rules.check_exec_size(argv, env)
    except RuleError as err:
        raise BadRequest(f"spec.argv: {err.problem}; expected {err.expected}") from None
    workdir = data.get("workdir")
    if workdir is not None:
        if not isinstance(workdir, str):
            raise BadRequest("spec.workdir: expected an absolute path")
        _apply("spec.workdir", spec_rules.check_workdir, workdir)
    profile = data.get("profile")
    if profile is not None:
        if not isinstance(profile, str):
            raise BadRequest("spec.profile: expected a string")
        _apply("spec.profile", spec_rules.check_text, profile)
    return JobSpec(
        name=name, kind=kind, argv=tuple(argv), launcher=launcher, resources=resources,
        env=tuple(sorted(env.items())),
        retries=_int(data, "retries", 0, "spec."),
        priority=_int(data, "priority", 0, "spec."),
        workdir=workdir, profile=profile, guard=_guard(data.get("guard"), kind),
    )


def _guard(value: Any, kind: str) -> GuardSpec | None:
    """spec.guard: the profile's [guard] as to_dict writes it (engine.guard)."""
    if value is None:
        return None
    if kind not in GUARD_KINDS:
        raise BadRequest(f"spec.guard: kind {kind} does not train; expected no guard")
    try:
        return from_stored(value) if isinstance(value, dict) else parse(value, "spec.guard")
    except GuardError as err:
        field, problem, expected = err.problems[0]
        raise BadRequest(f"{field.replace('guard.', 'spec.guard.', 1)}: {problem}; "
                         f"expected {expected}") from None
