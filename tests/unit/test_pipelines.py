"""Pipeline profiles, their expansion into dependent jobs, output folders
and @references."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine import pipelines
from engine.model import BatchRef, JobSpec, PipelineSpec, StageSpec, output_dir
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


def test_pipeline_tiny_expands_into_five_dependent_jobs() -> None:
    pipeline = load_pipeline_profile("pipeline-tiny", ["pretrain.args.max_steps=7"])
    jobs = pipelines.expand(pipeline, Path("/out"), "STAMP")
    names = [spec.name for spec, _ in jobs]
    assert names == ["pipeline-tiny/prepare", "pipeline-tiny/pretrain", "pipeline-tiny/prune",
                     "pipeline-tiny/quantize", "pipeline-tiny/evaluate"]
    root = "/out/pipeline-tiny-STAMP"
    assert [output_dir(spec) for spec, _ in jobs] == [f"{root}/{n}" for n in
                                                      ("prepare", "pretrain", "prune",
                                                       "quantize", "evaluate")]
    prepare, pretrain, prune, quantize, evaluate = (spec for spec, _ in jobs)
    assert prepare.kind == "prepare" and flag(prepare, "--input") == ["demo"]
    assert pretrain.launcher == "horovodrun" and flag(pretrain, "--max-steps") == ["7"]
    assert flag(pretrain, "--data") == [f"{root}/prepare"] and "--corpus" not in pretrain.argv
    assert flag(prune, "--model") == [f"{root}/pretrain"]
    assert flag(quantize, "--model") == [f"{root}/prune"]
    assert flag(evaluate, "--model") == [f"{root}/quantize"]
    assert flag(evaluate, "--compare") == [f"{root}/pretrain", f"{root}/prune",
                                           f"{root}/quantize"]
    afters = [after for _, after in jobs]
    # every stage after prepare measures on its held-out split: each waits for it too
    assert afters[0] == [] and afters[1] == [BatchRef(0)]
    assert set(afters[2]) == {BatchRef(0), BatchRef(1)}
    assert set(afters[3]) == {BatchRef(0), BatchRef(2)}
    assert set(afters[4]) == {BatchRef(0), BatchRef(1), BatchRef(2), BatchRef(3)}
    for spec in (prune, quantize, evaluate):
        assert flag(spec, "--data") == [f"{root}/prepare"] and "--corpus" not in spec.argv
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
    with pytest.raises(ProfileError,
                       match="STAGE.key=value with STAGE one of prepare, pretrain, prune"):
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


def _stages(tmp_path: Path, *stages: tuple[str, str]) -> Path:
    """A pipeline of stages (name, model argument) that run eval profile 'a'
    (a model "command": the command profile 'say'; a model ending in '!':
    ``after = []``)."""
    _write(tmp_path, "a", 'kind = "eval"\n[args]\nmodel = "/m"\n')
    _write(tmp_path, "say", 'kind = "command"\ncommand = ["echo", "hi"]\n')
    text = 'kind = "pipeline"\n'
    for name, model in stages:
        profile = "say" if model == "command" else "a"
        extra = "after = []\n" if model.endswith("!") else ""
        model = model.removesuffix("!")
        if model.startswith("@"):
            extra += f'set = {{ args = {{ model = "{model}" }} }}\n'
        text += f'[[stages]]\nname = "{name}"\nprofile = "{profile}"\n{extra}'
    return _write(tmp_path, "p", text)


@pytest.mark.parametrize(("stages", "field", "fragment"), [
    ((("one", "@two"), ("two", "@one")), "stages[0]",
     "stage one: @two is not an earlier stage (stage two comes later and waits for one: "
     "a cycle)"),
    ((("one", "/m"), ("two", "@three"), ("three", "@two")), "stages[1]", "a cycle"),
    ((("one", "@three"), ("two", "/m"), ("three", "/m")), "stages[0]", "a cycle"),
    ((("one", "/m"), ("two", "@nosuch")), "stages[1]",
     "stage two: @nosuch is not an earlier stage (no stage has that name)"),
    ((("pretrain", "/m"), ("prune", "@pretrian")), "stages[1]", "did you mean @pretrain?"),
    ((("one", "@one"),), "stages[0]", "it is this stage itself"),
    ((("one", "/m"), ("two", "@three"), ("three", "/m!")), "stages[1]",
     "stage three comes later; stages run in file order, so move it above two"),
    ((("talk", "command"), ("two", "@talk")), "stages[1]",
     "@talk has no output folder (it is a command job)"),
])
def test_validate_refuses_cycles_and_dangling_references(
        tmp_path: Path, stages: tuple[tuple[str, str], ...], field: str, fragment: str) -> None:
    path = _stages(tmp_path, *stages)
    with pytest.raises(pipelines.ReferenceError) as err:
        validate_file(path)
    assert isinstance(err.value, ProfileError) and err.value.field == field
    assert str(err.value).startswith(f"{path}: {field}: ") and fragment in str(err.value)
    with pytest.raises(pipelines.ReferenceError):
        pipelines.prepare(str(path), [], tmp_path, "s", lambda _p: None)


def test_expand_refuses_a_cycle_in_a_spec_built_by_hand() -> None:
    def stage(name: str, ref: str) -> StageSpec:
        return StageSpec(name, JobSpec(name=name, kind="eval",
                                       argv=("py", "-m", "engine.workloads.evaluate",
                                             "--model", ref)))

    cycle = PipelineSpec("loop", (stage("a", "@b"), stage("b", "@a")))
    with pytest.raises(pipelines.ReferenceError,
                       match="pipeline loop: stage a: @b is not an earlier stage .*a cycle"):
        pipelines.expand(cycle, Path("/o"), "s")


def test_a_stage_argument_is_checked_against_its_workload(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'kind = "eval"\n[args]\nmodel = "/m"\n')
    path = _write(tmp_path, "p", 'kind = "pipeline"\n[[stages]]\nname = "x"\nprofile = "a"\n'
                  'set = { args = { eval_batches = 0 } }\n')
    with pytest.raises(ProfileError) as err:
        validate_file(path)
    assert err.value.field == "stages[0]" and "stage x: " in str(err.value)
    assert "args.eval_batches: 0 is out of range; expected an integer >= 1" in str(err.value)
    with pytest.raises(ProfileError, match="args.eval_batches"):
        pipelines.prepare(str(path), [], tmp_path, "s", lambda _p: None)
    load_pipeline_profile(str(path))  # the schema alone is fine


def test_prepare_refuses_bad_overrides_and_names_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="args.max_steps: -5 is out of range"):
        pipelines.prepare("pretrain-tiny", ["args.max_steps=-5"], tmp_path, "s",
                          lambda _p: None)
    with pytest.raises(ProfileError, match=r"stage prune: .*args\.sparsity: 2 is out of range"):
        pipelines.prepare("pipeline-tiny", ["prune.args.sparsity=2"], tmp_path, "s",
                          lambda _p: None)
    for name in (" ", "\udcff", "a\nb", "x" * 129):
        with pytest.raises(ProfileError) as err:
            pipelines.prepare("hello", [], tmp_path, "s", lambda _p: None, name=name)
        assert str(err.value).startswith("--name: ")
    sub = pipelines.prepare("pretrain-tiny", ["args.model=--help"], tmp_path, "s",
                            lambda _p: None, name="mine")
    [(spec, _after)] = sub.items
    assert spec["name"] == "mine" and "--model=--help" in spec["argv"]
    assert output_dir(JobSpec.from_dict(spec)) == str(tmp_path / "mine-s")


def test_a_reference_to_a_profile_that_does_not_exist_suggests_close_names() -> None:
    spec = JobSpec(name="e", kind="eval",
                   argv=("py", "-m", "engine.workloads.evaluate", "--model", "@pretrain-tiy"))
    names = lambda: ["pretrain-tiny", "prune-50", "hello"]  # noqa: E731
    with pytest.raises(pipelines.ReferenceError) as err:
        pipelines.single_job(spec, Path("/o"), "S", lambda _p: None, names)
    text = str(err.value)
    assert "there is no profile pretrain-tiy (did you mean @pretrain-tiny?)" in text
    assert "llmconsole submit" not in text and "llmconsole profiles list" in text
    real = replace(spec, argv=(*spec.argv[:4], "@pretrain-tiny"))
    with pytest.raises(pipelines.ReferenceError, match="run `llmconsole submit pretrain-tiny`"):
        pipelines.single_job(real, Path("/o"), "S", lambda _p: None, names)
    with pytest.raises(pipelines.ReferenceError, match="there is no profile nosuch;"):
        pipelines.prepare("eval-tiny", ["args.model=@nosuch"], Path("/o"), "S", lambda _p: None)


def test_submissions_of_one_process_within_a_second_get_their_own_folders() -> None:
    now = 1_800_000_000.0
    stamps = {pipelines.make_stamp(now, pipelines.submission_salt()) for _ in range(50)}
    assert len(stamps) == 50
