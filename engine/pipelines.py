"""From profiles to the jobs that are submitted: output folders for
workload jobs, ``@`` references to other jobs' outputs, and pipelines
expanded into dependent jobs. Pure: the time stamp, the outputs root and the
lookup of earlier jobs are parameters.

Output folders. A workload job (kind train, compress or eval) without an
``--output`` argument gets ``--output <outputs root>/<name>-<stamp>``; a
pipeline's stage gets ``<outputs root>/<pipeline>-<stamp>/<stage>``. The
folder is fixed at submit time, so every attempt of a job (a retry, a resume)
writes to the same place.

References. In a workload's arguments, a value ``@NAME`` stands for an output
folder: in a pipeline, the output of the earlier stage NAME; in a single job,
the output of the newest succeeded job of profile NAME (``@pretrain-tiny``).
``@@text`` is the literal ``@text``. Arguments of ``command`` jobs are never
rewritten.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine import profiles
from engine.errors import UserError
from engine.model import WORKLOAD_KINDS, BatchRef, JobSpec, PipelineSpec, output_dir

_REF_RE = re.compile(r"@([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


class ReferenceError(UserError):
    """An ``@NAME`` argument that names nothing usable."""


def slug(name: str) -> str:
    """A folder-name-safe form of a job or pipeline name."""
    return _SLUG_RE.sub("-", name).strip("-.")[:64] or "job"


def references(spec: JobSpec) -> list[str]:
    """The NAMEs of the ``@NAME`` arguments of a workload job, in order."""
    if spec.kind not in WORKLOAD_KINDS:
        return []
    out = []
    for arg in spec.argv[1:]:
        m = _REF_RE.fullmatch(arg)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def substitute(spec: JobSpec, resolve: Callable[[str], str]) -> JobSpec:
    """`spec` with each ``@NAME`` argument replaced by ``resolve(NAME)`` and
    each ``@@text`` by ``@text``."""
    if spec.kind not in WORKLOAD_KINDS:
        return spec
    argv = [spec.argv[0]]
    for arg in spec.argv[1:]:
        m = _REF_RE.fullmatch(arg)
        if arg.startswith("@@"):
            argv.append(arg[1:])
        elif m:
            argv.append(resolve(m.group(1)))
        else:
            argv.append(arg)
    return replace(spec, argv=tuple(argv))


def with_output(spec: JobSpec, folder: Path) -> JobSpec:
    """`spec` with ``--output folder`` appended, unless it names one."""
    if spec.kind not in WORKLOAD_KINDS or output_dir(spec) is not None:
        return spec
    return replace(spec, argv=(*spec.argv, "--output", str(folder)))


def single_job(spec: JobSpec, outputs: Path, stamp: str,
               newest_output: Callable[[str], str | None]) -> JobSpec:
    """A job submitted on its own: ``@PROFILE`` arguments resolved through
    `newest_output` (the output folder of the newest succeeded job of that
    profile, or None), and an output folder assigned."""

    def resolve(name: str) -> str:
        found = newest_output(name)
        if found is None:
            raise ReferenceError(
                f"@{name}: no succeeded job of profile {name} to take the output of; "
                f"run `llmconsole submit {name}` first, or pass a folder with "
                f"--set args.<option>=/path")
        return found

    spec = substitute(spec, resolve)
    return with_output(spec, outputs / f"{slug(spec.name)}-{stamp}")


def expand(pipeline: PipelineSpec, outputs: Path, stamp: str
           ) -> list[tuple[JobSpec, list[BatchRef]]]:
    """The jobs of a pipeline, in stage order, each with the batch items it
    waits for. Job names are ``<pipeline>/<stage>``."""
    root = outputs / f"{slug(pipeline.name)}-{stamp}"
    index = {stage.name: i for i, stage in enumerate(pipeline.stages)}
    folders: dict[str, str] = {}
    jobs: list[tuple[JobSpec, list[BatchRef]]] = []
    for i, stage in enumerate(pipeline.stages):
        earlier = [s.name for s in pipeline.stages[:i]]

        def resolve(name: str, stage_name: str = stage.name,
                    earlier: Sequence[str] = earlier) -> str:
            if name not in earlier:
                raise ReferenceError(
                    f"pipeline {pipeline.name}: stage {stage_name}: @{name} is not an "
                    f"earlier stage; expected one of: {', '.join(earlier) or '(none)'}")
            if name not in folders:
                raise ReferenceError(
                    f"pipeline {pipeline.name}: stage {stage_name}: @{name} has no output "
                    "folder (it is a command job); refer to a train, compress or eval stage")
            return folders[name]

        refs = references(stage.spec)
        spec = with_output(substitute(stage.spec, resolve), root / stage.name)
        folder = output_dir(spec)
        if folder is not None:
            folders[stage.name] = folder
        if stage.after is not None:
            after = list(stage.after)
        else:
            after = refs or earlier[-1:]
        spec = replace(spec, name=f"{pipeline.name}/{stage.name}")
        jobs.append((spec, [BatchRef(index[name]) for name in dict.fromkeys(after)]))
    return jobs


def roots(jobs: Sequence[tuple[JobSpec, Sequence[BatchRef]]]) -> list[int]:
    """Indices of the jobs that wait for no other job of the batch."""
    return [i for i, (_spec, after) in enumerate(jobs) if not after]


def make_stamp(now: float, salt: int) -> str:
    """The time part of output folder names: ``YYYYmmdd-HHMMSS-NNNN``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{salt % 10000:04d}"


def newest_output(jobs: Iterable[Mapping[str, Any]], profile: str) -> str | None:
    """The output folder of the newest succeeded job of `profile` among job
    views (as the API lists them)."""
    for job in sorted(jobs, key=lambda j: -int(j["id"])):
        if job.get("state") == "succeeded" and job.get("profile") == profile \
                and job.get("output"):
            return str(job["output"])
    return None


@dataclass(frozen=True)
class Submission:
    """What to send for one `submit`: the jobs (as API payloads, with their
    ``after`` lists), and the pipeline's name when it is one."""

    items: list[tuple[dict[str, Any], list[int | dict[str, int]]]]
    pipeline: str | None = None


def prepare(profile: str, overrides: Sequence[str], outputs: Path, stamp: str,
            find_output: Callable[[str], str | None], name: str | None = None,
            after: Sequence[int] = ()) -> Submission:
    """A job or pipeline profile, validated and ready to submit: output
    folders assigned, references resolved, a pipeline's stages chained (the
    first stages wait for `after`). Raises `ProfileError` or
    `ReferenceError` (both `UserError`) before anything is sent."""
    if profiles.profile_kind(profile) == "pipeline":
        pipeline = profiles.load_pipeline_profile(profile, overrides)
        if name:
            pipeline = replace(pipeline, name=name)
        jobs = expand(pipeline, outputs, stamp)
        first = set(roots(jobs))
        items: list[tuple[dict[str, Any], list[int | dict[str, int]]]] = [
            (spec.to_dict(), [*(list(after) if i in first else []),
                              *({"batch": r.index} for r in refs)])
            for i, (spec, refs) in enumerate(jobs)]
        return Submission(items, pipeline.name)
    spec = profiles.load_job_profile(profile, overrides)
    if name:
        spec = replace(spec, name=name)
    spec = single_job(spec, outputs, stamp, find_output)
    return Submission([(spec.to_dict(), list(after))])
