"""The engine side of kind "prepare": its profiles (a part per node with
launcher "local", ``--part`` left to the engine), the API's check, the
launch of one part per node with ``--part K/N``, its output folder and the
``data = "@prepare"`` reference of a later pipeline stage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine import pipelines, spec_check
from engine.errors import BadRequest
from engine.launch import launch_parts, runs_in_parts
from engine.model import BatchRef, JobSpec, NodeSpec, Placement, Resources, output_dir
from engine.profiles import ProfileError, load_job_profile, load_pipeline_profile
from engine.spec_rules import stage_reference_problems
from engine.workloads import options as workload_options

ARGV = ("/venv/bin/python", "-m", "engine.workloads.prepare", "--input", "/data/a.jsonl",
        "--output", "/shared/prep")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLMCONSOLE_PROFILES", raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def prepare_spec(nodes: int = 1, launcher: str = "local") -> JobSpec:
    return JobSpec(name="p", kind="prepare", argv=ARGV, launcher=launcher,
                   resources=Resources(nodes=nodes, cpus=2))


def nodes_of(*names: str) -> dict[str, NodeSpec]:
    """The first name is the head node (no host), the others remote."""
    return {n: NodeSpec(n, host=None if i == 0 else f"10.0.0.{i}") for i, n in enumerate(names)}


def test_a_prepare_job_on_three_nodes_starts_a_part_on_each_with_its_number() -> None:
    spec = prepare_spec(nodes=3)
    placements = [Placement("b", (), 2), Placement("head", (), 2), Placement("c", (), 2)]
    parts = launch_parts(spec, placements, nodes_of("head", "b", "c"))
    assert [p.node for p in parts] == ["head", "b", "c"]  # the head node's part first
    assert [p.argv for p in parts] == [(*ARGV, "--part", f"{k}/3") for k in (0, 1, 2)]
    assert runs_in_parts(spec)


def test_a_prepare_job_on_one_node_runs_its_argv_as_is() -> None:
    [part] = launch_parts(prepare_spec(), [Placement("head", (), 2)], nodes_of("head"))
    assert part.argv == ARGV and "--part" not in part.argv
    assert not runs_in_parts(prepare_spec())


def test_other_kinds_on_several_nodes_are_not_split_into_parts() -> None:
    train = JobSpec(name="t", kind="train", argv=ARGV, launcher="horovodrun",
                    resources=Resources(nodes=2, cpus=1))
    parts = launch_parts(train, [Placement("head", (), 1), Placement("b", (), 1)],
                         nodes_of("head", "b"))
    assert len(parts) == 1 and "--part" not in parts[0].argv
    assert not runs_in_parts(train)


def test_the_output_folder_of_a_prepare_job_is_its_output_option() -> None:
    assert output_dir(prepare_spec()) == "/shared/prep"
    assert output_dir(JobSpec(name="p", kind="prepare",
                              argv=("py", "--output=/x", "--input", "y"))) == "/x"


def test_a_prepare_profile_on_two_nodes_needs_no_distributed_launcher(tmp_path: Path) -> None:
    path = write(tmp_path / "prep.toml", 'kind = "prepare"\n[resources]\nnodes = 2\ncpus = 2\n'
                 '[args]\ninput = "/data/*.jsonl"\ntasks = 8\n')
    spec = load_job_profile(str(path))
    assert spec.kind == "prepare" and spec.launcher == "local" and spec.resources.nodes == 2
    assert spec.argv == (sys.executable, "-m", "engine.workloads.prepare", "--input",
                         "/data/*.jsonl", "--tasks", "8")


def test_a_train_profile_on_two_nodes_still_needs_one(tmp_path: Path) -> None:
    path = write(tmp_path / "t.toml", 'kind = "train"\n[resources]\nnodes = 2\n')
    with pytest.raises(ProfileError) as err:
        load_job_profile(str(path))
    assert err.value.field == "resources.nodes"
    assert 'kind "prepare" runs a part per node' in str(err.value)


@pytest.mark.parametrize(("text", "field", "fragment"), [
    ('[args]\npart = "0/2"\n', "args.part", "--part is set by the engine"),
    ('launcher = "horovodrun"\n', "launcher", '"horovodrun" is not available for kind '
                                              '"prepare"'),
    ('command = ["echo"]\n', "command", 'not allowed for kind "prepare"'),
])
def test_bad_prepare_profiles_name_the_field(tmp_path: Path, text: str, field: str,
                                              fragment: str) -> None:
    path = write(tmp_path / "bad.toml", 'kind = "prepare"\n' + text)
    with pytest.raises(ProfileError) as err:
        load_job_profile(str(path))
    assert err.value.field == field and fragment in str(err.value)
    assert str(err.value).startswith(f"{path}: {field}: ")


def test_the_api_takes_a_prepare_job_on_several_nodes_and_refuses_a_train_one() -> None:
    payload = prepare_spec(nodes=2).to_dict()
    assert spec_check.spec_from_payload(payload) == prepare_spec(nodes=2)
    payload["kind"] = "train"
    with pytest.raises(BadRequest, match="spec.launcher: a job on several nodes needs"):
        spec_check.spec_from_payload(payload)


def test_a_stage_reads_the_prepared_data_of_an_earlier_prepare_stage(tmp_path: Path) -> None:
    write(tmp_path / "prep.toml", 'kind = "prepare"\n[args]\ninput = "/data/a.jsonl"\n')
    write(tmp_path / "ev.toml", 'kind = "eval"\n[args]\nmodel = "/m"\n')
    path = write(tmp_path / "p.toml", 'kind = "pipeline"\n'
                 '[[stages]]\nname = "prepare"\nprofile = "prep"\n'
                 '[[stages]]\nname = "score"\nprofile = "ev"\n'
                 'set = { args = { corpus = "@prepare" } }\n')
    pipeline = load_pipeline_profile(str(path))
    assert stage_reference_problems(pipeline.stages) == []
    jobs = pipelines.expand(pipeline, Path("/out"), "S")
    (prep, prep_after), (score, score_after) = jobs
    assert output_dir(prep) == "/out/p-S/prepare" and prep_after == []
    argv = list(score.argv)
    assert argv[argv.index("--corpus") + 1] == "/out/p-S/prepare"
    assert score_after == [BatchRef(0)]


def test_every_parts_argv_is_one_the_prepare_parser_reads_as_that_part() -> None:
    spec = prepare_spec(nodes=2)
    parts = launch_parts(spec, [Placement("head", (), 2), Placement("b", (), 2)],
                         nodes_of("head", "b"))
    parsed = [workload_options.parse("prepare", list(p.argv[3:])) for p in parts]
    assert [a.part for a in parsed] == [(0, 2), (1, 2)]
    assert {str(a.output) for a in parsed} == {"/shared/prep"}  # one folder for all parts
