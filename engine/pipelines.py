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
rewritten. A reference that names nothing usable is a `ReferenceError`
(a `ProfileError`): in a pipeline, a name that is not an earlier stage with
an output folder (`engine.spec_rules.stage_reference_problems`; a cycle is
a reference to a later stage), for a single job a profile that does not
exist or has no succeeded job yet.

`prepare` is what the CLI and the screen submit through: it loads the
profile with every check (`check_args=True`: [args] against the workload's
own parser), checks the ``--name`` given, and resolves references, so a job
that would fail on its input is refused before anything is queued.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine import spec_rules
from engine.model import WORKLOAD_KINDS, BatchRef, JobSpec, PipelineSpec, output_dir

# engine.profiles (pydantic) is imported where a profile is loaded or an error
# raised, not here: the CLI submits a spec it has cached (engine.spec_cache)
# without loading pydantic.
_REF_RE = spec_rules.REFERENCE_RE
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


def __getattr__(name: str) -> Any:
    if name == "ReferenceError":  # an ``@NAME`` argument that names nothing usable
        from engine.profiles import ReferenceError

        return ReferenceError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def slug(name: str) -> str:
    """A folder-name-safe form of a job or pipeline name."""
    return _SLUG_RE.sub("-", name).strip("-.")[:64] or "job"


def references(spec: JobSpec) -> list[str]:
    """The NAMEs of the ``@NAME`` arguments of a workload job, in order."""
    return spec_rules.references(spec.kind, spec.argv)


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
               newest_output: Callable[[str], str | None],
               profile_names: Callable[[], Sequence[str]] | None = None) -> JobSpec:
    """A job submitted on its own: ``@PROFILE`` arguments resolved through
    `newest_output` (the output folder of the newest succeeded job of that
    profile, or None), and an output folder assigned. `profile_names` (the
    profiles that exist) makes the advice for an unresolved reference right:
    run the profile first when it exists, else the close names."""

    def resolve(name: str) -> str:
        found = newest_output(name)
        if found is not None:
            return found
        from engine.profiles import ReferenceError

        folder = "or pass a folder with --set args.<option>=/path"
        known = list(profile_names()) if profile_names is not None else None
        if known is None or name in known:
            raise ReferenceError(
                f"@{name}: no succeeded job of profile {name} to take the output of; "
                f"run `llmconsole submit {name}` first, {folder}")
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        raise ReferenceError(
            f"@{name}: there is no profile {name}"
            + (f" (did you mean {' or '.join('@' + c for c in close)}?)" if close else "")
            + f"; name a profile shown by `llmconsole profiles list`, {folder}")

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
    problems = spec_rules.stage_reference_problems(pipeline.stages)
    if problems:
        from engine.profiles import ReferenceError

        i, problem, expected = problems[0]
        raise ReferenceError(f"pipeline {pipeline.name}: stage {pipeline.stages[i].name}: "
                             f"{problem}; expected {expected}")
    for i, stage in enumerate(pipeline.stages):
        earlier = [s.name for s in pipeline.stages[:i]]
        refs = references(stage.spec)
        # every reference names an earlier workload stage, whose folder is known
        spec = with_output(substitute(stage.spec, folders.__getitem__), root / stage.name)
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


_SUBMITTED = itertools.count()  # submissions made by this process


def submission_salt() -> int:
    """The salt of a submission's output folder names: this process's id
    and a count of its submissions (the id alone gave two submissions of one
    profile from the screen within a second the same folder: two trainings
    wrote one folder, and compare showed one run twice)."""
    return os.getpid() + 7919 * next(_SUBMITTED)


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


def load_profile(profile: str, overrides: Sequence[str]) -> JobSpec | PipelineSpec:
    """The job or pipeline profile with every check `prepare` makes
    (`check_args=True`); raises `ProfileError`."""
    from engine import profiles

    if profiles.profile_kind(profile) == "pipeline":
        return profiles.load_pipeline_profile(profile, overrides, check_args=True)
    return profiles.load_job_profile(profile, overrides, check_args=True)


def _profile_names() -> Sequence[str]:
    from engine import profiles

    return profiles.profile_names()


def prepare(profile: str, overrides: Sequence[str], outputs: Path, stamp: str,
            find_output: Callable[[str], str | None], name: str | None = None,
            after: Sequence[int] = (),
            load: Callable[[str, Sequence[str]], JobSpec | PipelineSpec] = load_profile,
            ) -> Submission:
    """A job or pipeline profile, validated and ready to submit: output
    folders assigned, references resolved, a pipeline's stages chained (the
    first stages wait for `after`). Raises `ProfileError` (a `UserError`;
    `ReferenceError` is one) before anything is sent. `load` gives the
    validated profile (the CLI passes `engine.spec_cache.load`, the same
    checks with their results kept)."""
    if name is not None:
        _check_name(name)
    loaded = load(profile, overrides)
    if isinstance(loaded, PipelineSpec):
        pipeline = loaded
        if name:
            pipeline = replace(pipeline, name=name)
        jobs = expand(pipeline, outputs, stamp)
        first = set(roots(jobs))
        items: list[tuple[dict[str, Any], list[int | dict[str, int]]]] = [
            (spec.to_dict(), [*(list(after) if i in first else []),
                              *({"batch": r.index} for r in refs)])
            for i, (spec, refs) in enumerate(jobs)]
        return Submission(items, pipeline.name)
    spec = loaded
    if name:
        spec = replace(spec, name=name)
    spec = single_job(spec, outputs, stamp, find_output, _profile_names)
    return Submission([(spec.to_dict(), list(after))])


def _check_name(name: str) -> None:
    """The ``--name`` of a submit follows the rule of a profile's ``name``."""
    try:
        spec_rules.check_name(name)
    except spec_rules.RuleError as err:
        from engine.profiles import ProfileError

        raise ProfileError(err.problem, field="--name", expected=err.expected) from None
