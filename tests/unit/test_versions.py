"""What makes a node incompatible with the head: its software versions."""

from __future__ import annotations

from engine.versions import incompatibilities, incompatible_reason, software_versions

HEAD = {"llmconsole": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "horovod": "0.28.1"}


def test_the_same_software_is_compatible_and_a_python_patch_release_too() -> None:
    assert incompatibilities(HEAD, dict(HEAD), "gpu1") == []
    assert incompatible_reason(HEAD, {**HEAD, "python": "3.11.9"}, "gpu1") is None


def test_each_difference_is_named_with_both_sides_and_the_fix() -> None:
    node = {**HEAD, "torch": "2.9.1", "horovod": "not installed"}
    assert incompatibilities(HEAD, node, "gpu1") == [
        "torch 2.13.0 here, 2.9.1 on gpu1", "horovod 0.28.1 here, not installed on gpu1"]
    reason = incompatible_reason(HEAD, node, "gpu1")
    assert reason is not None and reason.startswith("incompatible: torch 2.13.0 here")
    assert "same path on every node" in reason


def test_an_agent_that_reports_nothing_is_incompatible() -> None:
    assert incompatibilities(HEAD, {}, "old")[0] == "llmconsole 0.1.0 here, unknown on old"


def test_this_machine_reports_its_versions_without_importing_torch() -> None:
    import sys

    versions = software_versions()
    assert set(versions) == {"llmconsole", "python", "torch", "horovod"}
    assert versions["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert versions["torch"] != "not installed"  # make setup installs it
