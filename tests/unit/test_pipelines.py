"""Pipeline profiles, their expansion into dependent jobs, output folders
and @references."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import pipelines
from engine.model import BatchRef, JobSpec, output_dir
from engine.profiles import ProfileError, load_pipeline_profile, validate_file

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLMCONSOLE_PROFILES", raising=False)
    monkeypatch.chdir(tmp_path)


def flag(spec: JobSpec, name: str) -> list[str]:
    """The values following --name in the argv."""
    argv = list(spec.argv)
    i = argv.index(name)
    out = []
    for value in argv[i + 1:]:
        if value.startswith("--"):
            break
        out.append(value)
    return out


def test_pipeline_tiny_expands_into_four_dependent_jobs() -> None:
    pipeline = load_pipeline_profile("pipeline-tiny", ["pretrain.args.max_steps=7"])
    jobs = pipelines.expand(pipeline, Path("/out"), "STAMP")
    names = [spec.name for spec, _ in jobs]
    assert names == ["pipeline-tiny/pretrain", "pipeline-tiny/prune", "pipeline-tiny/quantize",
                     "pipeline-tiny/evaluate"]
    root = "/out/pipeline-tiny-STAMP"
    assert [output_dir(spec) for spec, _ in jobs] == [f"{root}/{n}" for n in
                                                      ("pretrain", "prune", "quantize",
                                                       "evaluate")]
    pretrain, prune, quantize, evaluate = (spec for spec, _ in jobs)
    assert pretrain.launcher == "horovodrun" and flag(pretrain, "--max-steps") == ["7"]
    assert flag(prune, "--model") == [f"{root}/pretrain"]
    assert flag(quantize, "--model") == [f"{root}/prune"]
    assert flag(evaluate, "--model") == [f"{root}/quantize"]
    assert flag(evaluate, "--compare") == [f"{root}/pretrain", f"{root}/prune",
                                           f"{root}/quantize"]
    afters = [after for _, after in jobs]
    assert afters[0] == [] and afters[1] == [BatchRef(0)] and afters[2] == [BatchRef(1)]
    assert set(afters[3]) == {BatchRef(0), BatchRef(1), BatchRef(2)}
    assert pipelines.roots(jobs) == [0]


def _write(dir_: Path, name: str, text: str) -> Path:
    path = dir_ / f"{name}.toml"
    path.write_text(text)
    return path


def test_stage_without_references_waits_for_the_previous_one(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'kind = "eval"\n[args]\nmodel = "/m"\n')
    _write(tmp_path, "say", 'kind = "command"\ncommand = ["echo", "@literal"]\n')
    path = _write(tmp_path, "p", '''kind = "pipeline"
[[stages]]
name = "one"
profile = "a"
[[stages]]
name = "two"
profile = "say"
[[stages]]
name = "three"
profile = "a"
after = []
''')
    jobs = pipelines.expand(load_pipeline_profile(str(path)), tmp_path, "s")
    assert [after for _, after in jobs] == [[], [BatchRef(0)], []]
    assert jobs[1][0].argv == ("echo", "@literal")  # command jobs are never rewritten
    assert pipelines.roots(jobs) == [0, 2]


@pytest.mark.parametrize(("stages", "fragment"), [
    ('[[stages]]\nname = "x"\nprofile = "a"\n[[stages]]\nname = "x"\nprofile = "a"\n',
     "duplicate stage name x"),
    ('[[stages]]\nname = "x"\nprofile = "a"\nafter = ["y"]\n', "y is not an earlier stage"),
    ('[[stages]]\nname = "Bad Name"\nprofile = "a"\n', "not a valid stage name"),
    ('[[stages]]\nname = "x"\nprofile = "a"\nextra = 1\n', "unknown field"),
    ('[[stages]]\nname = "x"\nprofile = "nope"\n', "stage x: "),
    ('[[stages]]\nname = "x"\nprofile = "a"\nset = { args = { model = 1.5, bogus = [] } }\n',
     "args.bogus"),
    ('', "stages: field required"),
])
def test_bad_pipelines_name_the_field(tmp_path: Path, stages: str, fragment: str) -> None:
    _write(tmp_path, "a", 'kind = "eval"\n[args]\nmodel = "/m"\n')
    path = _write(tmp_path, "p", 'kind = "pipeline"\n' + stages)
    with pytest.raises(ProfileError) as err:
        load_pipeline_profile(str(path))
    assert fragment in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ProfileError):
        validate_file(path)


def test_a_reference_to_a_later_stage_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'kind = "eval"\n[args]\nmodel = "@two"\n')
    path = _write(tmp_path, "p", 'kind = "pipeline"\n[[stages]]\nname = "one"\nprofile = "a"\n'
                  '[[stages]]\nname = "two"\nprofile = "a"\n')
    with pytest.raises(pipelines.ReferenceError, match="@two is not an earlier stage"):
        pipelines.expand(load_pipeline_profile(str(path)), tmp_path, "s")


def test_pipeline_overrides_name_a_stage(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="STAGE.key=value with STAGE one of pretrain, prune"):
        load_pipeline_profile("pipeline-tiny", ["args.max_steps=3"])
    with pytest.raises(ProfileError, match="value from --set"):
        load_pipeline_profile("pipeline-tiny", ["prune.resources.cpus=0"])


def test_a_single_job_gets_an_output_folder_and_its_references_resolved() -> None:
    spec = JobSpec(name="my run/1", kind="eval",
                   argv=("python", "-m", "engine.workloads.evaluate", "--model", "@pretrain-tiny",
                         "--note", "@@kept"))
    seen: list[str] = []

    def newest(profile: str) -> str | None:
        seen.append(profile)
        return "/outputs/pretrain-tiny-1"

    out = pipelines.single_job(spec, Path("/outputs"), "S", newest)
    assert seen == ["pretrain-tiny"]
    assert out.argv[3:] == ("--model", "/outputs/pretrain-tiny-1", "--note", "@kept",
                            "--output", "/outputs/my-run-1-S")
    with pytest.raises(pipelines.ReferenceError, match="run `llmconsole submit pretrain-tiny`"):
        pipelines.single_job(spec, Path("/o"), "S", lambda _p: None)


def test_an_explicit_output_is_kept_and_commands_are_untouched() -> None:
    spec = JobSpec(name="t", kind="train", argv=("py", "--output", "/mine"))
    assert pipelines.with_output(spec, Path("/other")) == spec
    cmd = JobSpec(name="c", kind="command", argv=("echo", "@x"))
    assert pipelines.single_job(cmd, Path("/o"), "S", lambda _p: None) == cmd


def test_every_shipped_profile_validates() -> None:
    for path in sorted(SHIPPED.glob("*.toml")):
        validate_file(path)
