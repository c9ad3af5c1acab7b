"""Profiles: shipped and fixture files, error messages (one line, naming the
file and the field), `--set` overrides, lookup order, argv building, cluster
node fields and their defaults, a job's resources.nodes_with."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import engine
from engine import model, profiles
from engine.model import KINDS, LAUNCHERS, ClusterSpec, JobSpec, NodeSpec, Resources
from engine.profiles import (
    ProfileError,
    ProfileInfo,
    build_argv,
    default_cluster,
    find_profile,
    list_profiles,
    load_cluster_profile,
    load_job_profile,
    parse_overrides,
    profile_dirs,
    validate_file,
)

DATA = Path(__file__).parent / "data" / "profiles"
GOOD = DATA / "good"
BAD = DATA / "bad"
SHIPPED = Path(engine.__file__).resolve().parent.parent / "profiles"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No profile directory from the caller's environment or cwd leaks in."""
    monkeypatch.delenv("LLMCONSOLE_PROFILES", raising=False)
    monkeypatch.chdir(tmp_path)


# --- shipped profiles ----------------------------------------------------


def test_shipped_profiles_exist_and_validate() -> None:
    files = sorted(SHIPPED.rglob("*.toml"))
    names = {f.relative_to(SHIPPED).as_posix() for f in files}
    assert {"hello.toml", "sleep.toml", "clusters/local.toml"} <= names
    for f in files:
        validate_file(f)  # raises ProfileError when invalid
    infos = list_profiles([SHIPPED])
    assert [i for i in infos if i.error] == []
    assert {(i.name, i.kind) for i in infos} >= {
        ("hello", "command"), ("sleep", "command"), ("local", "cluster")}
    assert all(i.description for i in infos)


def test_shipped_hello_runs_and_prints_hello() -> None:
    spec = load_job_profile("hello", dirs=[SHIPPED])
    assert spec.kind == "command" and spec.profile == "hello" and spec.name == "hello"
    assert spec.argv[0] == "python3"  # kept as written, not rewritten
    out = subprocess.run([sys.executable, *spec.argv[1:]], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.startswith("hello")


def test_shipped_sleep_ticks_sixty_times() -> None:
    spec = load_job_profile("sleep", dirs=[SHIPPED])
    program = spec.argv[spec.argv.index("-c") + 1]
    assert "range(1, 61)" in program and "sleep(1)" in program
    compile(program, "sleep.toml", "exec")  # valid Python


def test_shipped_local_cluster_is_the_default_cluster() -> None:
    assert load_cluster_profile("local", dirs=[SHIPPED]) == default_cluster()
    assert load_cluster_profile(None) == ClusterSpec(name="local", nodes=(NodeSpec(name="local"),))
    assert default_cluster().nodes[0].is_local


def test_schema_literals_match_the_model() -> None:
    fields = profiles._JobModel.model_fields
    assert set(get_args(fields["kind"].annotation)) == set(KINDS)
    assert set(get_args(fields["launcher"].annotation)) == set(LAUNCHERS)
    assert set(profiles.WORKLOAD_MODULES) | {"command"} == set(KINDS)


def test_engine_profiles_imports_no_screen_library() -> None:
    code = ("import sys, engine.profiles; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=SHIPPED.parent, timeout=60).stdout
    assert out.strip() == "[]"


# --- good fixtures ----------------------------------------------------------


def test_good_fixtures_validate() -> None:
    files = sorted(GOOD.glob("*.toml"))
    assert len(files) >= 5
    for f in files:
        validate_file(f)


def test_train_full_fixture() -> None:
    spec = load_job_profile(str(GOOD / "train_full.toml"))
    assert isinstance(spec, JobSpec)
    assert spec.name == "llama-tiny sft" and spec.profile == "train_full"
    assert spec.kind == "train" and spec.launcher == "horovodrun"
    assert spec.resources == Resources(nodes=2, gpus_per_node=8, cpus=16, memory_gb=120.5)
    assert spec.env == (("A_VAR", "x"), ("NCCL_DEBUG", "INFO"))  # sorted
    assert (spec.priority, spec.retries, spec.workdir) == (-5, 2, "/data/runs")
    assert spec.argv == (
        sys.executable, "-m", "engine.workloads.train",
        "--model", "gpt2", "--lr", "0.0003", "--max-steps", "3", "--amp",
    )
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_minimal_eval_fixture_takes_defaults() -> None:
    spec = load_job_profile(str(GOOD / "eval_min.toml"))
    assert spec.name == "eval_min"  # the file stem
    assert spec.argv == (sys.executable, "-m", "engine.workloads.evaluate")
    assert spec.resources == Resources() and spec.env == () and spec.launcher == "local"
    assert (spec.priority, spec.retries, spec.workdir) == (0, 0, None)


def test_compress_may_use_torchrun_on_several_nodes() -> None:
    spec = load_job_profile(str(GOOD / "compress_torchrun.toml"))
    assert spec.launcher == "torchrun" and spec.resources.total_gpus == 4
    assert spec.argv[2:] == ("engine.workloads.compress", "--method", "distill",
                             "--model", "/models/teacher")


def test_cluster_fixture() -> None:
    spec = load_cluster_profile(str(GOOD / "cluster_lab.toml"))
    assert spec.name == "lab" and spec.admins == ("alice", "bob")
    assert [n.name for n in spec.nodes] == ["head", "gpu1", "gpu2.rack-1", "gpu3"]
    assert spec.node("head") == NodeSpec(name="head")
    # no port: ssh's own choice (the user's ~/.ssh/config for that host, else 22)
    assert spec.node("gpu1") == NodeSpec(name="gpu1", host="10.0.0.5", port=None, user="train",
                                         gpus=8, slots=32, memory_gb=512.0)
    assert spec.node("gpu2.rack-1").port == 2222
    assert spec.node("gpu3").host == "fe80::1"
    assert [n.is_local for n in spec.nodes] == [True, False, False, False]


def test_metacharacters_are_taken_verbatim_and_never_reach_a_shell(tmp_path: Path) -> None:
    spec = load_job_profile(str(GOOD / "metachars.toml"))
    assert spec.name == "; rm -rf ~ $(reboot) \"' `id` | & > x"
    assert spec.argv[3:] == ("; rm -rf ~", "$(reboot)", "\"'", "`id` && echo pwned > /tmp/x", "*")
    assert spec.env == (("WEIRD", "$(reboot); `id`"),)
    out = subprocess.run([sys.executable, *spec.argv[1:]], capture_output=True, text=True,
                         timeout=30, check=True, cwd=tmp_path).stdout
    assert out.strip() == repr(list(spec.argv[3:]))
    assert list(tmp_path.iterdir()) == []  # no redirection happened


def test_metacharacters_in_train_args_and_overrides() -> None:
    write(Path("profiles/t.toml"), 'kind = "train"\n[args]\nprompt = "$(reboot); `id` \\"x\\""\n')
    spec = load_job_profile("t", ["name=a; rm -rf ~ | b", "args.tag='q' && x"],
                            dirs=[Path("profiles")])
    assert spec.name == "a; rm -rf ~ | b"
    assert spec.argv[3:] == ("--prompt", '$(reboot); `id` "x"', "--tag", "'q' && x")


# --- bad fixtures -----------------------------------------------------------

BAD_CASES = [
    # file, field path, fragment of the problem or of the expectation
    ("unknown_top.toml", "gpus", "unknown field"),
    ("unknown_resources.toml", "resources.gpus", "unknown field"),
    ("negative_gpus.toml", "resources.gpus_per_node", "greater than or equal to 0"),
    ("command_string.toml", "command", "valid list"),
    ("missing_command.toml", "command", 'required for kind "command"'),
    ("train_with_command.toml", "command", 'not allowed for kind "train"'),
    ("multinode_local.toml", "resources.nodes", "horovodrun"),
    ("bad_env_name.toml", "env.MY-VAR", "not a valid environment variable name"),
    ("reserved_env.toml", "env.LLMCONSOLE_TOKEN", "reserved"),
    ("ld_preload.toml", "env.LD_PRELOAD", "refused"),
    ("env_int.toml", "env.SEED", "valid string"),
    ("host_metachars.toml", "nodes[0].host", "not a hostname"),
    ("host_option.toml", "nodes[0].host", "not a hostname"),
    ("duplicate_nodes.toml", "nodes[1].name", "duplicate node name gpu1"),
    ("two_local_nodes.toml", "nodes[1].host", "already the head node"),
    ("name_newline.toml", "name", "control character"),
    ("launcher_eval.toml", "launcher", 'not available for kind "eval"'),
    ("args_for_command.toml", "args", 'not used by kind "command"'),
    ("nodes_string.toml", "resources.nodes", "valid integer"),
    ("priority_bool.toml", "priority", "valid integer"),
    ("empty_command.toml", "command", "at least 1 item"),
    ("command_int.toml", "command[1]", "valid string"),
    ("missing_kind.toml", "kind", "field required"),
    ("relative_workdir.toml", "workdir", "absolute path"),
    ("nested_arg_list.toml", "args.shape", "nested"),
    ("unknown_node_field.toml", "nodes[0].gpu", "unknown field"),
    ("bad_node_name.toml", "nodes[0].name", "not a valid node name"),
    ("port_range.toml", "nodes[0].port", "less than or equal to 65535"),
    ("resources_not_table.toml", "resources", "table"),
]


def test_every_bad_fixture_has_a_case() -> None:
    covered = {case[0] for case in BAD_CASES} | {"syntax.toml"}
    assert {f.name for f in BAD.glob("*.toml")} == covered


@pytest.mark.parametrize(("filename", "field", "fragment"), BAD_CASES)
def test_bad_fixture_names_file_and_field(filename: str, field: str, fragment: str) -> None:
    path = BAD / filename
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    err = info.value
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert text.startswith(f"{path}: {field}: ")
    assert fragment in text
    assert "; expected " in text
    assert err.path == path and err.field == field
    assert err.errors[0] == text


def test_syntax_error_names_line_and_column() -> None:
    path = BAD / "syntax.toml"
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    err = info.value
    assert (err.line, err.column, err.field) == (3, 8, None)
    assert str(err) == f"{path}: line 3, column 8: {err.message}"
    assert err.message and "(at line" not in err.message


def test_syntax_error_at_end_of_document(tmp_path: Path) -> None:
    path = write(tmp_path / "eof.toml", 'kind = "command"\ncommand = ["a",')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.line == 2 and info.value.column is not None
    assert str(info.value).startswith(f"{path}: line 2, column ")


def test_error_names_the_value_that_came_from_set(tmp_path: Path) -> None:
    path = write(tmp_path / "j.toml", 'kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["resources.gpus_per_node=-2"])
    assert info.value.field == "resources.gpus_per_node"
    assert "(value from --set)" in str(info.value)


def test_a_secret_is_taken_from_the_environment_never_from_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "j.toml", 'kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["env.HF_TOKEN=hf_abcdef123"])
    text = str(info.value)
    assert text.startswith("--set env.HF_TOKEN: a secret's value on the command line is seen")
    assert "--set env.HF_TOKEN=@env" in text and "hf_abcdef123" not in text
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ProfileError, match=r"HF_TOKEN is not set in your environment"):
        load_job_profile(str(path), ["env.HF_TOKEN=@env"])
    monkeypatch.setenv("HF_TOKEN", "hf_from_env_42")
    spec = load_job_profile(str(path), ["env.HF_TOKEN=@env", "env.PLAIN=@env"])
    assert dict(spec.env) == {"HF_TOKEN": "hf_from_env_42", "PLAIN": "@env"}


def test_all_problems_are_kept_first_one_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "many.toml",
                 'kind = "command"\ncommand = ["true"]\nretries = 99\n'
                 '[resources]\ncpus = 0\nbogus = 1\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    err = info.value
    assert len(err.errors) == 3
    assert str(err) == err.errors[0]
    assert {line.split(": ")[1] for line in err.errors} == {
        "retries", "resources.cpus", "resources.bogus"}
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in err.errors)


def test_control_characters_in_keys_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "k.toml", 'kind = "command"\ncommand = ["true"]\n"a\\nb" = 1\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert "\n" not in str(info.value)
    assert '"a\\nb": unknown field' in str(info.value)


def test_unknown_field_suggests_the_right_place() -> None:
    with pytest.raises(ProfileError) as info:
        validate_file(BAD / "unknown_top.toml")
    assert "did you mean resources.gpus_per_node?" in str(info.value)
    assert "one of: kind, name" in str(info.value)


@pytest.mark.parametrize("name", ["", " ", "a\x00b", "tab\there", "x" * 129, "del\x7f",
                                  "sep\u2028x"])
def test_bad_job_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "n.toml", 'kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), [f"name={name}"])
    assert info.value.field == "name" and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["x", "x" * 128, "ünïcode 名前 🚀", "a b/c:d"])
def test_good_job_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "n.toml", 'kind = "command"\ncommand = ["true"]\n')
    assert load_job_profile(str(path), [f"name={name}"]).name == name


@pytest.mark.parametrize("host", ["gpu1", "gpu-1.example.org", "10.0.0.5", "::1", "my_alias",
                                  "fe80::1%eth0", "node7."])
def test_good_hosts(tmp_path: Path, host: str) -> None:
    path = write(tmp_path / "c.toml", f'kind = "cluster"\n[[nodes]]\nname = "n"\nhost = "{host}"\n')
    assert load_cluster_profile(str(path)).nodes[0].host == host


@pytest.mark.parametrize("host", ["", "-x", "a b", "a;b", "$(reboot)", "a`b`", "u@h", "a|b",
                                  "a\\nb", "x" * 254, "a..b"])
def test_bad_hosts(tmp_path: Path, host: str) -> None:
    path = write(tmp_path / "c.toml", f'kind = "cluster"\n[[nodes]]\nname = "n"\nhost = "{host}"\n')
    with pytest.raises(ProfileError) as info:
        load_cluster_profile(str(path))
    assert info.value.field == "nodes[0].host"


@pytest.mark.parametrize("user", ["-oProxyCommand=x", "a b", "a;b", ""])
def test_bad_node_users(tmp_path: Path, user: str) -> None:
    path = write(tmp_path / "c.toml",
                 f'kind = "cluster"\n[[nodes]]\nname = "n"\nhost = "h"\nuser = "{user}"\n')
    with pytest.raises(ProfileError) as info:
        load_cluster_profile(str(path))
    assert info.value.field == "nodes[0].user"


def test_cluster_without_nodes_and_job_loaded_as_cluster(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'kind = "cluster"\n')
    with pytest.raises(ProfileError) as info:
        load_cluster_profile(str(path))
    assert info.value.field == "nodes" and "field required" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_cluster_profile(str(SHIPPED / "hello.toml"))
    assert info.value.field == "kind" and "job profile" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(SHIPPED / "clusters" / "local.toml"))
    assert info.value.field == "kind" and "cluster profile" in str(info.value)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'kind = "command"\nname = "caf\xe9"\n')
    with pytest.raises(ProfileError) as info:
        validate_file(bad)
    assert "UTF-8" in str(info.value) and str(info.value).startswith(str(bad))
    with pytest.raises(ProfileError) as info:
        validate_file(tmp_path)  # a directory
    assert "cannot read" in str(info.value)


def test_profile_error_pickles() -> None:
    err = ProfileError("boom", path="p.toml", field="a.b", expected="c", errors=["x", "y"])
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "p.toml: a.b: boom; expected c"
    assert back.errors == ["x", "y"] and back.field == "a.b"


# --- overrides ----------------------------------------------------------------


def test_parse_overrides_types_and_nesting() -> None:
    got = parse_overrides([
        "resources.gpus_per_node=2", "args.lr=1e-3", "args.amp=true", "args.layers=[1, 2]",
        'description="quoted"', "name=foo", "name2=my run; rm -rf ~", "x.y.z=-3",
        "empty=", "date=2024-01-01", "two=1\nthree = 3", "neg=-0.5", "inline={a = 1}",
    ])
    assert got == {
        "resources": {"gpus_per_node": 2},
        "args": {"lr": 0.001, "amp": True, "layers": [1, 2]},
        "description": "quoted",
        "name": "foo",
        "name2": "my run; rm -rf ~",
        "x": {"y": {"z": -3}},
        "empty": "",
        "date": "2024-01-01",  # TOML dates are kept as text
        "two": "1\nthree = 3",  # not one TOML value: raw text, nothing injected
        "neg": -0.5,
        "inline": {"a": 1},
    }
    assert type(got["resources"]["gpus_per_node"]) is int  # type: ignore[index]


def test_parse_overrides_later_wins_and_value_may_contain_equals() -> None:
    assert parse_overrides(["a=1", "a=2"]) == {"a": 2}
    assert parse_overrides(["a=1", "a.b=2"]) == {"a": {"b": 2}}
    assert parse_overrides(["cmd=x=y"]) == {"cmd": "x=y"}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["foo", "", "resources.gpus"])
def test_parse_overrides_without_equals(item: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_overrides([item])
    assert str(info.value) == f"--set {item}: expected key=value"


@pytest.mark.parametrize("item", ["=1", "a..b=1", ".a=1", "a.=1"])
def test_parse_overrides_empty_key_part(item: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_overrides([item])
    assert str(info.value).startswith(f"--set {item}: empty key")


def test_overrides_merge_deeply_before_validation(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml",
                 'kind = "train"\n[resources]\ncpus = 4\ngpus_per_node = 1\n'
                 '[args]\nlr = 0.1\nepochs = 2\n')
    spec = load_job_profile(str(path), [
        "resources.gpus_per_node=2", "args.lr=1e-3", "args.new_flag=true", "priority=7",
        "env.SEED=42", "name=123", "launcher=torchrun", "resources.nodes=2",
    ])
    assert spec.resources == Resources(nodes=2, gpus_per_node=2, cpus=4, memory_gb=0.0)
    assert spec.argv[3:] == ("--lr", "0.001", "--epochs", "2", "--new-flag")
    assert spec.priority == 7 and spec.launcher == "torchrun"
    assert spec.env == (("SEED", "42"),)  # string fields keep the raw text
    assert spec.name == "123"
    assert spec.profile == "p"


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", 'kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["resources.gpu=1"])
    assert info.value.field == "resources.gpu" and "unknown field" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["priority=high"])
    assert info.value.field == "priority" and "valid integer" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["env.LLMCONSOLE_X=1"])
    assert info.value.field == "env.LLMCONSOLE_X"
    spec = load_job_profile(str(path), ['command=["echo", "hi there"]'])
    assert spec.argv == ("echo", "hi there")
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), ["command=echo hi"])
    assert info.value.field == "command" and "valid list" in str(info.value)


# --- argv -----------------------------------------------------------------------


def test_build_argv_for_workload_kinds() -> None:
    args = {"learning_rate": 3e-4, "model": "gpt2", "steps": 10, "amp": True, "compile": False,
            "sizes": [1, 2.5, "x", True], "neg": -1}
    assert build_argv("train", None, args) == (
        sys.executable, "-m", "engine.workloads.train",
        "--learning-rate", "0.0003", "--model", "gpt2", "--steps", "10", "--amp",
        "--sizes", "1", "2.5", "x", "true", "--neg", "-1",
    )
    assert build_argv("eval", None, {})[2] == "engine.workloads.evaluate"
    assert build_argv("compress", None, {"a": 1})[2:] == ("engine.workloads.compress", "--a", "1")


def test_build_argv_for_command_kind_is_the_command() -> None:
    assert build_argv("command", ["python", "x.py", "--y"], {}) == ("python", "x.py", "--y")
    assert build_argv("command", ("python3",), {}) == ("python3",)


def test_args_keep_file_order(tmp_path: Path) -> None:
    path = write(tmp_path / "o.toml", 'kind = "train"\n[args]\nz = 1\na = 2\nm_n = "v"\n')
    assert load_job_profile(str(path)).argv[3:] == ("--z", "1", "--a", "2", "--m-n", "v")


def test_args_that_map_to_the_same_flag_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.toml", 'kind = "train"\n[args]\nmy_flag = 1\nmy-flag = 2\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.my-flag" and "--my-flag" in str(info.value)


@pytest.mark.parametrize(("value", "fragment"), [
    ("[]", "empty list"), ('"a\\u0000b"', "NUL"), ("{x = 1}", "a table cannot"),
    ("1979-05-27", "date/time"),
])
def test_bad_arg_values(tmp_path: Path, value: str, fragment: str) -> None:
    path = write(tmp_path / "a.toml", f'kind = "train"\n[args]\nk = {value}\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.k" and fragment in str(info.value)


def test_bad_arg_key(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", 'kind = "train"\n[args]\n"-rf" = 1\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.-rf" and "option name" in str(info.value)


# --- lookup ---------------------------------------------------------------------


def test_profile_dirs_order_and_dedup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "profiles").mkdir()  # ./profiles (cwd is tmp_path)
    entries = [str(a), str(tmp_path / "missing"), "", str(b), str(a)]
    monkeypatch.setenv("LLMCONSOLE_PROFILES", os.pathsep.join(entries))
    assert profile_dirs() == [a, b, tmp_path / "profiles", SHIPPED]
    monkeypatch.delenv("LLMCONSOLE_PROFILES")
    monkeypatch.chdir(SHIPPED.parent)  # ./profiles is the shipped directory
    assert profile_dirs() == [SHIPPED]


def test_find_profile_first_hit_wins_and_paths_are_used_as_is(tmp_path: Path) -> None:
    one = write(tmp_path / "one" / "job.toml", 'kind = "eval"\n')
    two = write(tmp_path / "two" / "job.toml", 'kind = "train"\n')
    write(tmp_path / "two" / "other.toml", 'kind = "train"\n')
    dirs = [tmp_path / "one", tmp_path / "two"]
    assert find_profile("job", dirs) == one
    assert find_profile("job.toml", dirs) == one
    assert find_profile("other", dirs) == tmp_path / "two" / "other.toml"
    assert find_profile(str(two), dirs) == two
    assert load_job_profile("job", dirs=dirs).kind == "eval"


def test_find_profile_missing_lists_dirs_and_suggests_list(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        find_profile("nope", [tmp_path])
    text = str(info.value)
    assert text.startswith("nope: ") and str(tmp_path) in text
    assert "llmconsole profiles list" in text
    with pytest.raises(ProfileError) as info:
        find_profile(str(tmp_path / "sub" / "x.toml"), [tmp_path])
    assert "llmconsole profiles list" in str(info.value)


def test_env_var_directory_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    write(mine / "hello.toml", 'kind = "command"\ncommand = ["echo", "mine"]\n')
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(mine))
    assert load_job_profile("hello").argv == ("echo", "mine")  # shadows the shipped one


def test_cluster_lookup_prefers_clusters_subdir(tmp_path: Path) -> None:
    write(tmp_path / "d" / "lab.toml", 'kind = "cluster"\nname = "root"\n[[nodes]]\nname = "a"\n')
    write(tmp_path / "d" / "clusters" / "lab.toml",
          'kind = "cluster"\nname = "sub"\n[[nodes]]\nname = "a"\n')
    write(tmp_path / "d" / "flat.toml", 'kind = "cluster"\n[[nodes]]\nname = "a"\n')
    dirs = [tmp_path / "d"]
    assert load_cluster_profile("lab", dirs).name == "sub"
    assert load_cluster_profile("flat", dirs).name == "flat"  # default: file stem
    with pytest.raises(ProfileError) as info:
        load_cluster_profile("nope", dirs)
    assert "llmconsole profiles list" in str(info.value)


def test_list_profiles_first_wins_and_invalid_files_are_listed(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "a.toml", 'kind = "command"\ndescription = "first a"\ncommand = ["true"]\n')
    write(second / "a.toml", 'kind = "command"\ndescription = "second a"\ncommand = ["true"]\n')
    write(second / "broken.toml", 'kind = "command"\ndescription = "oops"\n')
    write(second / "syntax.toml", "this is not toml\n")
    write(second / "clusters" / "a.toml", 'kind = "cluster"\n[[nodes]]\nname = "x"\n')
    infos = list_profiles([first, second])
    assert all(isinstance(i, ProfileInfo) for i in infos)
    by_key = {(i.name, i.kind == "cluster"): i for i in infos}
    assert len(by_key) == len(infos) == 4
    assert by_key[("a", False)].description == "first a"
    assert by_key[("a", False)].path == first / "a.toml"
    assert by_key[("a", True)].kind == "cluster" and by_key[("a", True)].error is None
    broken = by_key[("broken", False)]
    assert broken.kind == "command" and broken.description == "oops"
    assert broken.error is not None and "command: required" in broken.error
    syntax = by_key[("syntax", False)]
    assert syntax.kind == "unknown" and syntax.error and "line 1, column" in syntax.error
    assert [i.kind == "cluster" for i in infos] == [False, False, False, True]


def test_list_profiles_never_raises_on_missing_dirs(tmp_path: Path) -> None:
    assert list_profiles([tmp_path / "missing"]) == []


# --- workload arguments, checked against the workload's own parser -----------------

BAD_OVERRIDES = [
    # --set item, field named, fragment of the line
    ("args.max_steps=-5", "args.max_steps", "expected an integer >= 1"),
    ("args.max_steps=abc", "args.max_steps", "'abc' is not an integer"),
    ("args.nosuch=1", "args.nosuch", "no option --nosuch"),
    ("args.max_stepz=5", "args.max_stepz", "did you mean max_steps?"),
    ("args.lr=nan", "args.lr", "nan is not a finite number"),
    ("args.lr=-1.0", "args.lr", "expected a finite number > 0"),
    ("args.lr=inf", "args.lr", "not a finite number"),
    ("args.eval_fraction=0.5", "args.eval_fraction", "in (0, 0.5)"),
    ("args.task=poetry", "args.task", "one of: causal-lm, classification"),
    ("args.resume=1", "args.resume", "on/off option"),
    ("args.lr=true", "args.lr", "takes a value, not true/false"),
    ("args.lr=[1, 2]", "args.lr", "takes one value, not a list"),
]


@pytest.mark.parametrize(("item", "field", "fragment"), BAD_OVERRIDES)
def test_bad_workload_overrides_are_refused_naming_the_override(
        item: str, field: str, fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_job_profile("pretrain-tiny", [item], check_args=True)
    text = str(info.value)
    assert info.value.field == field and fragment in text
    assert "(value from --set)" in text and "\n" not in text
    assert text.startswith(f"{SHIPPED / 'pretrain-tiny.toml'}: {field}: ")
    load_job_profile("pretrain-tiny", [item])  # without check_args: only the schema


@pytest.mark.parametrize(("args", "field", "fragment"), [
    ("max_stepz = 5", "args.max_stepz", "did you mean max_steps?"),
    ("lr = -1.0", "args.lr", "expected a finite number > 0"),
    ("max_steps = 0", "args.max_steps", "expected an integer >= 1"),
    ("dropout = 1.0", "args.dropout", "in [0, 1)"),
])
def test_bad_workload_args_in_a_file_fail_validation(tmp_path: Path, args: str, field: str,
                                                     fragment: str) -> None:
    path = write(tmp_path / "p.toml", f'kind = "train"\n[args]\nmodel = "tiny"\n{args}\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == field and fragment in str(info.value)
    assert str(info.value).startswith(f"{path}: {field}: ")
    assert "(value from --set)" not in str(info.value)
    [listed] = [i for i in list_profiles([tmp_path]) if i.name == "p"]
    assert listed.error == str(info.value)


def test_a_required_workload_option_is_asked_for(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'kind = "compress"\n[args]\nmodel = "/m"\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.method" and "prune, int8" in str(info.value)
    path = write(tmp_path / "c.toml", 'kind = "compress"\n[args]\nmethod = "int8"\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.model" and "needs --model" in str(info.value)


def test_the_engine_checks_with_the_parser_the_workload_runs() -> None:
    from engine.workloads import compress, evaluate, options, train

    for module, workload in (("train", train), ("compress", compress), ("evaluate", evaluate)):
        theirs = {a.dest: (a.option_strings, a.type, a.choices, a.nargs, a.required)
                  for a in workload.parser()._actions}
        ours = {a.dest: (a.option_strings, a.type, a.choices, a.nargs, a.required)
                for a in options.PARSERS[module]()._actions}
        assert set(theirs) == set(ours) and len(ours) > 5
        for dest, (flags, _type, choices, nargs, required) in ours.items():
            assert theirs[dest][0] == flags and theirs[dest][2:] == (choices, nargs, required)


def test_a_bad_option_by_hand_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine.workloads.train", "--output",
                           str(tmp_path / "o"), "--max-steps", "-5"], capture_output=True,
                          text=True, timeout=60, cwd=SHIPPED.parent)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: argument --max-steps: -5 is out of range; expected an integer >= 1 "
        "(see python -m engine.workloads.train --help)"]
    assert not (tmp_path / "o").exists()


def test_a_value_starting_with_a_dash_reaches_the_workload_as_a_value() -> None:
    from engine.workloads import train

    spec = load_job_profile("pretrain-tiny", ["args.model=--help", "args.corpus=-x",
                                              "args.seed=-3", "args.lr=1e-5"],
                            check_args=True)
    assert "--model=--help" in spec.argv and "--corpus=-x" in spec.argv
    assert spec.argv[spec.argv.index("--seed") + 1] == "-3"  # a negative number stays apart
    parsed = train.parser().parse_args([*spec.argv[3:], "--output", "/o"])
    assert (parsed.model, parsed.corpus, parsed.seed, parsed.lr) == ("--help", "-x", -3, 1e-5)


def test_a_list_item_starting_with_a_dash_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "e.toml", 'kind = "eval"\n[args]\ncompare = ["/a", "-b"]\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "args.compare" and "starting with '-'" in str(info.value)


def test_checking_arguments_loads_neither_torch_nor_transformers() -> None:
    code = ("import sys\nfrom pathlib import Path\nfrom engine import pipelines, profiles\n"
            "for name in ('pretrain-tiny', 'pipeline-tiny', 'prune-50', 'eval-tiny'):\n"
            "    profiles.validate_file(profiles.find_profile(name))\n"
            "pipelines.prepare('pretrain-tiny', ['args.max_steps=3'], Path('/o'), 's', "
            "lambda n: None)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'numpy', 'horovod'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=SHIPPED.parent, timeout=60).stdout
    assert out.strip() == "[]"


# --- names, text, numbers and sizes: the rules the API applies too ------------------


@pytest.mark.parametrize("name", [" ", "\u3000\u200b", "\udcff", "x\udcffy"])
def test_blank_and_non_utf8_names_are_refused_by_profile_and_api(tmp_path: Path,
                                                                 name: str) -> None:
    from engine.errors import BadRequest
    from engine.spec_check import spec_from_payload

    path = write(tmp_path / "n.toml", 'kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path), [f"name={name}"])
    assert info.value.field in ("name", "--set name") and "\n" not in str(info.value)
    str(info.value).encode("utf-8")  # printable as it is
    with pytest.raises(BadRequest) as api:
        spec_from_payload({"name": name, "kind": "command", "argv": ["true"]})
    assert api.value.message.startswith("spec.name: ")


def test_a_non_utf8_override_names_the_override() -> None:
    with pytest.raises(ProfileError) as info:
        load_job_profile("hello", ["name=\udcff"])
    assert str(info.value).startswith("--set name: the value is not UTF-8 text (byte 0xff")
    with pytest.raises(ProfileError) as info:
        load_job_profile("hello", ["env.\udcff=1"])
    assert "the key is not UTF-8 text" in str(info.value)


def test_a_file_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / os.fsdecode(b"caf\xe9.toml")
    path.write_text('kind = "command"\nname = "ok"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert "the file name is not UTF-8 text (byte 0xe9" in str(info.value)
    assert "rename the file" in str(info.value)


@pytest.mark.parametrize("value", ["1e400", "-1e400", "nan", "1e9", "-1"])
def test_memory_must_be_finite_and_within_the_limit(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "m.toml",
                 f'kind = "command"\ncommand = ["true"]\n[resources]\nmemory_gb = {value}\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "resources.memory_gb"
    assert f"to {profiles.LIMITS['memory_gb'][1]}" in str(info.value)


def test_an_argument_over_the_kernel_limit_is_refused(tmp_path: Path) -> None:
    from engine.spec_rules import MAX_ARG_BYTES, exec_size_limit

    long = "x" * (MAX_ARG_BYTES + 1)
    path = write(tmp_path / "a.toml", f'kind = "command"\ncommand = ["echo", "{long}"]\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "command[1]"
    assert f"{MAX_ARG_BYTES + 1} bytes long" in str(info.value)
    assert f"limit of {MAX_ARG_BYTES} bytes" in str(info.value)
    path = write(tmp_path / "e.toml", f'kind = "command"\ncommand = ["true"]\n'
                 f'[env]\nBIG = "{long}"\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "env.BIG"
    many = ", ".join(['"' + "y" * 100_000 + '"'] * (exec_size_limit() // 100_000 + 1))
    path = write(tmp_path / "t.toml", f'kind = "command"\ncommand = ["echo", {many}]\n')
    with pytest.raises(ProfileError) as info:
        validate_file(path)
    assert info.value.field == "command"
    assert f"over the limit of {exec_size_limit()} bytes" in str(info.value)
    near = "z" * MAX_ARG_BYTES  # the largest argument that execve takes
    spec = load_job_profile(str(write(tmp_path / "n.toml", f'kind = "command"\n'
                                      f'command = ["{sys.executable}", "-c", "pass", '
                                      f'"{near}"]\n')))
    subprocess.run(spec.argv, check=True, timeout=60)


# --- clusters: node fields, defaults, labels; jobs: resources.nodes_with -----


def test_every_node_field_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '''kind = "cluster"
known_hosts = "~/.ssh/known_hosts_lab"
[[nodes]]
name = "head"
labels = ["cpu", "cpu"]
[[nodes]]
name = "gpu1"
host = "gpu1.lab"
port = 2222
user = "train"
identity = "~/.ssh/id_lab"
python = "/opt/venv/bin/python"
root = "/scratch/llmc"
gpus = 4
slots = 16
memory_gb = 128
labels = ["a100", "ib", "zone:b"]
''')
    spec = load_cluster_profile(str(path))
    assert spec.known_hosts == "~/.ssh/known_hosts_lab"
    assert spec.node("head") == NodeSpec(name="head", labels=("cpu",))  # repeats dropped
    assert spec.node("gpu1") == NodeSpec(
        name="gpu1", host="gpu1.lab", port=2222, user="train", identity="~/.ssh/id_lab",
        python="/opt/venv/bin/python", root="/scratch/llmc", gpus=4, slots=16,
        memory_gb=128.0, labels=("a100", "ib", "zone:b"))


@pytest.mark.parametrize(("line", "field", "fragment"), [
    ('identity = "id_lab"', "nodes[0].identity", "neither absolute nor under ~"),
    ('python = "venv/bin/python"', "nodes[0].python", "neither absolute nor under ~"),
    ('root = "~user/x"', "nodes[0].root", "neither absolute nor under ~"),
    ('labels = ["-a100"]', "nodes[0].labels[0]", "not a valid label"),
    ('labels = ["a b"]', "nodes[0].labels[0]", "not a valid label"),
    ('labels = "a100"', "nodes[0].labels", "valid list"),
])
def test_bad_node_fields_name_the_field(tmp_path: Path, line: str, field: str,
                                        fragment: str) -> None:
    path = write(tmp_path / "c.toml", f'kind = "cluster"\n[[nodes]]\nname = "n"\n{line}\n')
    with pytest.raises(ProfileError) as info:
        load_cluster_profile(str(path))
    assert info.value.field == field and fragment in str(info.value)
    assert "; expected " in str(info.value)


def test_node_defaults_root_and_python() -> None:
    home = "/home/ann/.local/share/llmconsole"
    head, remote = NodeSpec(name="head"), NodeSpec(name="gpu1", host="10.0.0.5")
    assert model.node_root(head, home) == home  # runs/ under the home, as before
    assert model.node_root(remote, Path(home)) == f"{home}/nodes/gpu1"
    assert model.node_root(NodeSpec(name="gpu2", host="h"), home + "/") == f"{home}/nodes/gpu2"
    assert model.node_root(NodeSpec(name="g", host="h", root="~/runs"), home) == "~/runs"
    assert model.node_python(remote) == sys.executable
    assert model.node_python(NodeSpec(name="g", python="/opt/py")) == "/opt/py"
    # nodes that share a home (the test hosts, an NFS home) never share a root
    roots = {model.node_root(NodeSpec(name=f"n{i}", host="h"), home) for i in range(3)}
    assert len(roots) == 3 and home not in roots


def test_shipped_lab_example_has_labels_and_every_field() -> None:
    spec = load_cluster_profile("lab-example", dirs=[SHIPPED])
    assert [n.name for n in spec.nodes] == ["head", "gpu1", "gpu2", "gpu3"]
    assert spec.node("gpu1").labels == ("a100", "ib") and spec.node("head").is_local
    assert {field for n in spec.nodes for field in ("port", "identity", "python", "root")
            if getattr(n, field) is not None} == {"port", "identity", "python", "root"}


def test_nodes_with_in_a_job_profile_and_from_set(tmp_path: Path) -> None:
    path = write(tmp_path / "j.toml", 'kind = "command"\ncommand = ["true"]\n'
                 '[resources]\nnodes_with = ["a100", "gpu3", "a100"]\n')
    spec = load_job_profile(str(path))
    assert spec.resources.nodes_with == ("a100", "gpu3")  # repeats dropped, order kept
    assert JobSpec.from_dict(spec.to_dict()) == spec
    over = load_job_profile(str(path), ['resources.nodes_with=["zone:b"]'])
    assert over.resources.nodes_with == ("zone:b",)
    assert load_job_profile(str(path), ["resources.nodes_with=[]"]).resources.nodes_with == ()
    assert load_job_profile(str(SHIPPED / "hello.toml")).resources.nodes_with == ()


@pytest.mark.parametrize(("value", "field", "fragment"), [
    ("a100", "resources.nodes_with", "'resources.nodes_with=[\"a100\"]'"),
    ('["-x"]', "resources.nodes_with[0]", "not a node label or node name"),
    ('["a b"]', "resources.nodes_with[0]", "not a node label or node name"),
    ("[3]", "resources.nodes_with[0]", "valid string"),
    ("[" + ", ".join(f'"l{i}"' for i in range(33)) + "]", "resources.nodes_with",
     "at most 32"),
])
def test_bad_nodes_with_is_refused_naming_the_override(value: str, field: str,
                                                       fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(SHIPPED / "hello.toml"), [f"resources.nodes_with={value}"])
    text = str(info.value)
    assert info.value.field == field and fragment in text and "(value from --set)" in text


def test_a_spec_stored_before_nodes_with_loads_as_any_node() -> None:
    old = {"name": "x", "kind": "command", "argv": ["true"],
           "resources": {"nodes": 1, "gpus_per_node": 0, "cpus": 1, "memory_gb": 0.0}}
    assert JobSpec.from_dict(old).resources.nodes_with == ()
    assert JobSpec.from_dict(old).to_dict()["resources"]["nodes_with"] == []


def test_cluster_text_is_checked_as_the_file_it_will_become(tmp_path: Path) -> None:
    text = 'kind = "cluster"\n[[nodes]]\nname = "a"\n[[nodes]]\nname = "b"\n'
    with pytest.raises(ProfileError) as info:
        profiles.parse_cluster_text(text, tmp_path / "lab.toml")
    assert str(info.value).startswith(f"{tmp_path / 'lab.toml'}: nodes[1].host: ")
    assert profiles.parse_cluster_text(text.replace('"b"\n', '"b"\nhost = "h"\n'),
                                       "lab.toml").name == "lab"
    with pytest.raises(ProfileError, match="not valid TOML"):
        profiles.parse_cluster_text("kind = ", "lab.toml")
