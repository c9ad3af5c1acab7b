"""Validation of a job spec that arrives over the API (the CLI sends the
`JobSpec.to_dict()` of a validated profile; scripts may send anything).
Raises BadRequest naming the field and what was expected."""

from __future__ import annotations

import re
from typing import Any

from engine.errors import BadRequest
from engine.model import KINDS, LAUNCHERS, LIMITS, JobSpec, Resources

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = {"name", "kind", "argv", "launcher", "resources", "env", "retries", "priority",
          "workdir", "profile"}
RESOURCE_FIELDS = {"nodes", "gpus_per_node", "cpus", "memory_gb"}


def _int(data: dict[str, Any], key: str, default: int, where: str) -> int:
    low, high = LIMITS[key]
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{where}{key}: expected an integer from {low} to {high}, "
                         f"got {value!r}")
    return value


def spec_from_payload(data: Any) -> JobSpec:
    if not isinstance(data, dict):
        raise BadRequest("spec: expected a JSON object (a job spec)")
    unknown = set(data) - FIELDS
    if unknown:
        raise BadRequest(f"spec: unknown field(s) {', '.join(sorted(unknown))}; "
                         f"expected only {', '.join(sorted(FIELDS))}")
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or CONTROL.search(name):
        raise BadRequest("spec.name: expected 1-128 characters without control characters")
    kind = data.get("kind")
    if kind not in KINDS:
        raise BadRequest(f"spec.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    launcher = data.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise BadRequest(f"spec.launcher: expected one of {', '.join(LAUNCHERS)}, "
                         f"got {launcher!r}")
    argv = data.get("argv")
    if (not isinstance(argv, list) or not argv
            or not all(isinstance(a, str) and "\x00" not in a for a in argv)):
        raise BadRequest("spec.argv: expected a non-empty list of strings (no NUL bytes)")
    res = data.get("resources") or {}
    if not isinstance(res, dict) or set(res) - RESOURCE_FIELDS:
        raise BadRequest(f"spec.resources: expected an object with {sorted(RESOURCE_FIELDS)}")
    memory = res.get("memory_gb", 0.0)
    if not isinstance(memory, (int, float)) or isinstance(memory, bool) or memory < 0:
        raise BadRequest("spec.resources.memory_gb: expected a number >= 0")
    resources = Resources(
        nodes=_int(res, "nodes", 1, "spec.resources."),
        gpus_per_node=_int(res, "gpus_per_node", 0, "spec.resources."),
        cpus=_int(res, "cpus", 1, "spec.resources."),
        memory_gb=float(memory),
    )
    if resources.nodes > 1 and launcher == "local":
        raise BadRequest("spec.launcher: a job on several nodes needs launcher "
                         "'horovodrun' or 'torchrun'")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("spec.env: expected an object of name -> string")
    for key, value in env.items():
        if not ENV_NAME.match(key) or not isinstance(value, str) or "\x00" in value:
            raise BadRequest(f"spec.env.{key}: expected a variable name and a string value")
        if key.startswith("LLMCONSOLE_") or key == "LD_PRELOAD":
            raise BadRequest(f"spec.env.{key}: reserved; remove it from the profile")
    workdir = data.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        raise BadRequest("spec.workdir: expected an absolute path")
    profile = data.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise BadRequest("spec.profile: expected a string")
    return JobSpec(
        name=name, kind=kind, argv=tuple(argv), launcher=launcher, resources=resources,
        env=tuple(sorted(env.items())),
        retries=_int(data, "retries", 0, "spec."),
        priority=_int(data, "priority", 0, "spec."),
        workdir=workdir, profile=profile,
    )
