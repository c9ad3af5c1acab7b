"""A job spec sent over the API by a script is checked field by field; the
error names the field and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.errors import BadRequest
from engine.profiles import ProfileError, load_job_profile
from engine.spec_check import spec_from_payload

GOOD: dict[str, Any] = {"name": "; rm -rf ~ $(reboot) \"'", "kind": "command",
                        "argv": ["echo", "$(reboot)"], "resources": {"cpus": 2},
                        "env": {"SEED": "1"}}


def test_a_good_spec_round_trips_with_its_bytes() -> None:
    spec = spec_from_payload(GOOD)
    assert spec.name == GOOD["name"] and spec.argv == ("echo", "$(reboot)")
    assert spec.resources.cpus == 2 and spec.env == (("SEED", "1"),)
    assert spec_from_payload(spec.to_dict()) == spec


@pytest.mark.parametrize(("change", "field"), [
    ({"bogus": 1}, "unknown field(s) bogus"),
    ({"name": "a\nb"}, "spec.name"),
    ({"name": ""}, "spec.name"),
    ({"kind": "sleep"}, "spec.kind"),
    ({"launcher": "mpirun"}, "spec.launcher"),
    ({"argv": "echo hi"}, "spec.argv"),
    ({"argv": []}, "spec.argv"),
    ({"argv": ["a\x00b"]}, "spec.argv"),
    ({"resources": {"gpus_per_node": -1}}, "spec.resources.gpus_per_node"),
    ({"resources": {"nodes": True}}, "spec.resources.nodes"),
    ({"resources": {"cores": 2}}, "spec.resources"),
    ({"resources": {"nodes": 2}}, "spec.launcher"),
    ({"env": {"LD_PRELOAD": "x"}}, "spec.env.LD_PRELOAD"),
    ({"env": {"LLMCONSOLE_ATTEMPT": "x"}}, "spec.env.LLMCONSOLE_ATTEMPT"),
    ({"env": {"A B": "x"}}, "spec.env.A B"),
    ({"workdir": "relative/dir"}, "spec.workdir"),
    ({"priority": 10_000}, "spec.priority"),
])
def test_each_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, **change})
    assert field in err.value.message
    assert err.value.status == 400


def test_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest, match="expected a JSON object"):
        spec_from_payload(["echo"])


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "   "}, "spec.name: is blank"),
    ({"name": "\u3000\u200b"}, "spec.name: is blank"),
    ({"name": "a\u2028b"}, "spec.name: contains a control character"),
    ({"name": "\udcff"}, "spec.name: is not UTF-8 text (byte 0xff"),
    ({"argv": ["echo", "\udcff"]}, "spec.argv[1]: is not UTF-8 text"),
    ({"env": {"SEED": "\ud800"}}, "spec.env.SEED: is not UTF-8 text (\\ud800"),
    ({"env": {"A\udcff": "1"}}, "spec.env.A\\udcff: is not UTF-8 text"),
    ({"env": {"SEED": 1}}, "spec.env.SEED: expected a string"),
    ({"workdir": "/data/\udcff"}, "spec.workdir: is not UTF-8 text"),
    ({"profile": "p\udcff"}, "spec.profile: is not UTF-8 text"),
    ({"resources": {"memory_gb": float("inf")}}, "spec.resources.memory_gb: expected a finite"),
    ({"resources": {"memory_gb": float("nan")}}, "spec.resources.memory_gb"),
    ({"resources": {"memory_gb": 1e400}}, "spec.resources.memory_gb"),
    ({"resources": {"memory_gb": 1 << 40}}, "spec.resources.memory_gb"),
    ({"resources": {"memory_gb": -0.5}}, "spec.resources.memory_gb"),
])
def test_text_that_is_not_utf8_and_numbers_that_are_not_finite_are_named(
        change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, **change})
    assert err.value.message.startswith(field), err.value.message
    assert "\n" not in err.value.message
    err.value.message.encode("utf-8")  # the error itself can be sent as JSON


def test_argv_and_env_within_what_execve_takes() -> None:
    from engine.spec_rules import MAX_ARG_BYTES, exec_size, exec_size_limit

    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "argv": ["echo", "x" * (MAX_ARG_BYTES + 1)]})
    assert err.value.message.startswith("spec.argv[1]: is 131072 bytes long")
    assert f"limit of {MAX_ARG_BYTES} bytes" in err.value.message
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "env": {"BIG": "v" * MAX_ARG_BYTES}})
    assert err.value.message.startswith("spec.env.BIG: is")
    limit = exec_size_limit()
    argv = ["echo", *["y" * 100_000] * (limit // 100_000 + 1)]
    assert exec_size(argv, {}) > limit
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "argv": argv})
    assert err.value.message.startswith("spec.argv: the argv and environment take")
    assert f"over the limit of {limit} bytes" in err.value.message
    fits = ["echo", *["y" * 100_000] * (limit // 100_000 - 1)]
    assert spec_from_payload({**GOOD, "argv": fits}).argv == tuple(fits)


@pytest.mark.parametrize("name", ["x", "x" * 128, "ünïcode 名前 🚀", "a b/c:d", " padded "])
def test_a_name_a_profile_takes_the_api_takes(tmp_path: Path, name: str) -> None:
    path = tmp_path / "n.toml"
    path.write_text('kind = "command"\ncommand = ["true"]\n')
    assert load_job_profile(str(path), [f"name={name}"]).name == name
    assert spec_from_payload({**GOOD, "name": name}).name == name


@pytest.mark.parametrize("name", ["", " ", "a\x00b", "tab\there", "x" * 129, "del\x7f",
                                  "c1\x85", "sep\u2028x", "\udcff"])
def test_a_name_a_profile_refuses_the_api_refuses(tmp_path: Path, name: str) -> None:
    path = tmp_path / "n.toml"
    path.write_text('kind = "command"\ncommand = ["true"]\n')
    with pytest.raises(ProfileError):
        load_job_profile(str(path), [f"name={name}"])
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "name": name})
    assert err.value.message.startswith("spec.name: ")


@pytest.mark.parametrize("env", ["LD_PRELOAD", "LLMCONSOLE_X", "1A", "A-B", ""])
def test_an_env_name_a_profile_refuses_the_api_refuses(tmp_path: Path, env: str) -> None:
    path = tmp_path / "e.toml"
    path.write_text(f'kind = "command"\ncommand = ["true"]\n[env]\n"{env}" = "1"\n')
    with pytest.raises(ProfileError) as info:
        load_job_profile(str(path))
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "env": {env: "1"}})
    assert info.value.message.split(";")[0] in err.value.message


def test_nodes_with_over_the_api_is_checked_and_deduplicated() -> None:
    spec = spec_from_payload({**GOOD, "resources": {"nodes_with": ["a100", "gpu3", "a100"]}})
    assert spec.resources.nodes_with == ("a100", "gpu3")
    assert spec_from_payload(spec.to_dict()) == spec
    assert spec_from_payload(GOOD).resources.nodes_with == ()  # absent: any node


@pytest.mark.parametrize(("nodes_with", "field"), [
    ("a100", "spec.resources.nodes_with: expected a list"),
    ([1], "spec.resources.nodes_with[0]: expected a string"),
    (["-x"], "spec.resources.nodes_with[0]: is not a node label or node name"),
    (["a\udcffb"], "spec.resources.nodes_with[0]: is not UTF-8 text"),
    ([f"l{i}" for i in range(33)], "at most 32"),
])
def test_bad_nodes_with_over_the_api_names_the_entry(nodes_with: Any, field: str) -> None:
    with pytest.raises(BadRequest) as err:
        spec_from_payload({**GOOD, "resources": {"nodes_with": nodes_with}})
    assert field in err.value.message and "\n" not in err.value.message
