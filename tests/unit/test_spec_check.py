"""A job spec sent over the API by a script is checked field by field; the
error names the field and what was expected."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import BadRequest
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
