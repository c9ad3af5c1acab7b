"""The CLI's calls to a running engine start fast: a fresh interpreter that
imports engine.cli and parses `jobs` or `cancel` loads no heavy library, and
a submit whose profile was validated before (engine.spec_cache) does not
load pydantic, while giving exactly what the full loader gives."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli, cli_cluster, hostlists, pipelines, spec_cache
from engine.profiles import ProfileError

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic", "textual", "rich", "torch", "aiohttp")


def _python(code: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> list[str]:
    """The last line of stdout of `code` in a fresh interpreter, split on tabs."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=cwd, env=env).stdout
    return out.strip().splitlines()[-1].split("\t")


def test_parsing_jobs_and_cancel_loads_no_heavy_library() -> None:
    code = (
        "import sys, json\n"
        "import engine.cli as cli\n"
        "a = cli.build_parser(cli.command_of(['jobs', '--all'])).parse_args(['jobs', '--all'])\n"
        "b = cli.build_parser(cli.command_of(['cancel', '3', '4', '--wait']))"
        ".parse_args(['cancel', '3', '4', '--wait'])\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "print(json.dumps([a.func.__name__, a.all, b.func.__name__, b.ids, b.wait,"
        " sorted(top), 'http.client' in sys.modules]))\n"
    )
    jobs, all_, cancel, ids, wait, loaded, http = json.loads(_python(code)[0])
    assert (jobs, all_, cancel, ids, wait) == ("cmd_jobs", True, "cmd_cancel", [3, 4], True)
    assert "engine" in loaded and not set(HEAVY) & set(loaded), set(HEAVY) & set(loaded)
    assert not http  # JSON calls go over a plain socket; http.client is for streams


def test_one_command_parser_is_the_full_parsers_part() -> None:
    # the parser main builds for one command parses as the full one does
    for argv in (["jobs", "--state", "running", "--limit", "5"], ["cancel", "7", "--wait"],
                 ["submit", "hello", "--set", "retries=2", "--after", "3"],
                 ["cluster", "import", "h1:4", "--format", "horovod"], ["--json", "nodes"]):
        assert cli.command_of(argv) is not None
        assert vars(cli.build_parser(cli.command_of(argv)).parse_args(argv)) == \
            vars(cli.build_parser().parse_args(argv))
    assert cli.command_of(["-h", "jobs"]) is None and cli.command_of(["nosuch"]) is None
    # cluster import's --format choices are written without importing hostlists
    assert tuple(cli_cluster.FORMAT_TEXT) == hostlists.FORMATS
    assert "--wait" in cli.build_parser("cancel")._subparsers._group_actions[0] \
        .choices["cancel"].format_help()  # type: ignore[union-attr]


def _load_in_fresh(path: str, env: dict[str, str], cwd: Path) -> tuple[dict[str, object], bool]:
    code = (
        "import sys, json\nfrom engine import spec_cache\n"
        f"s = spec_cache.load({path!r}, ['retries=2'])\n"
        "print(json.dumps(s.to_dict()) + '\\t' + str('pydantic' in sys.modules))\n"
    )
    spec, pydantic = _python(code, env=env, cwd=cwd)
    return json.loads(spec), pydantic == "True"


def test_spec_cache_gives_what_the_loader_gives(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache, work, shelf = tmp_path / "cache", tmp_path / "work", tmp_path / "shelf"
    work.mkdir()
    shelf.mkdir()
    profile = shelf / "job.toml"
    profile.write_text('kind = "command"\ncommand = ["echo", "one"]\n')
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "LLMCONSOLE_PROFILES": str(shelf)}
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(shelf))
    expected = pipelines.load_profile("job", ["retries=2"])

    # a miss validates (pydantic) and stores; the next call, a fresh process, does not
    got = spec_cache.load("job", ["retries=2"])
    assert got == expected and got.retries == 2
    entries = list((cache / "llmconsole" / "specs").glob("*.json"))
    assert len(entries) == 1
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(entries[0].parent.stat().st_mode) == 0o700
    spec, pydantic = _load_in_fresh("job", env, work)
    assert spec == expected.to_dict() and not pydantic

    # the file changes in place: a miss, and the new text
    profile.write_text('kind = "command"\ncommand = ["echo", "two"]\n')
    spec, pydantic = _load_in_fresh("job", env, work)
    assert spec["argv"] == ["echo", "two"] and pydantic

    # a file that shadows it appears (a file named job in the working folder): a miss
    (work / "job").write_text('kind = "command"\ncommand = ["echo", "3"]\n')
    spec, pydantic = _load_in_fresh("job", env, work)
    assert spec == pipelines.load_profile("job", ["retries=2"]).to_dict() and pydantic
    assert spec["argv"] == ["echo", "3"]

    # an entry others may write, or a corrupt one, is ignored, never trusted
    entry = max((cache / "llmconsole" / "specs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    forged = json.loads(entry.read_text())
    forged["spec"]["job"]["argv"] = ["rm", "-rf", "/"]
    entry.write_text(json.dumps(forged))
    entry.chmod(0o664)
    assert spec_cache.load("job", ["retries=2"]).argv == ("echo", "3")
    for entry in (cache / "llmconsole" / "specs").glob("*.json"):
        entry.write_text('{"format": 1, "spec": {"job": {"argv": ["rm", "-rf", "/"]}}}')
    assert spec_cache.load("job", ["retries=2"]).argv == ("echo", "3")
    assert spec_cache.load("job", ["retries=2"]).argv == ("echo", "3")  # its new entry

    # an invalid profile: the loader's own error, and nothing stored for it
    before = sorted((cache / "llmconsole" / "specs").iterdir())
    (work / "job").write_text('kind = "command"\ncommand = []\nretries = 99\n')
    with pytest.raises(ProfileError) as direct:
        pipelines.load_profile("job", [])
    with pytest.raises(ProfileError) as cached:
        spec_cache.load("job", [])
    assert str(cached.value) == str(direct.value)
    assert sorted((cache / "llmconsole" / "specs").iterdir()) == before

    # a profile with a secret in its env, or one from --set env.X=@env: never stored
    (work / "job").write_text('kind = "command"\ncommand = ["true"]\n[env]\nHF_TOKEN = "hf_x"\n')
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-1")
    assert dict(spec_cache.load("job", []).env) == {"HF_TOKEN": "hf_x"}
    (work / "job").write_text('kind = "command"\ncommand = ["true"]\n')
    assert spec_cache.load("job", ["env.WANDB_API_KEY=@env"]).env == (
        ("WANDB_API_KEY", "wandb-secret-1"),)
    assert sorted((cache / "llmconsole" / "specs").iterdir()) == before
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-2")  # a later submit gets the new one
    assert dict(spec_cache.load("job", ["env.WANDB_API_KEY=@env"]).env) == {
        "WANDB_API_KEY": "wandb-secret-2"}

    # a pipeline (the shipped one, every stage's file read) round-trips
    monkeypatch.chdir(REPO)
    pipeline = spec_cache.load("pipeline-tiny", [])
    assert pipeline == pipelines.load_profile("pipeline-tiny", [])
    assert spec_cache.load("pipeline-tiny", []) == pipeline


def test_a_command_jobs_payload_is_kept_and_a_workloads_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LLMCONSOLE_PROFILES", raising=False)
    for profile, kept in (("hello", True), ("pretrain-tiny", False)):
        args = argparse.Namespace(profile=profile, set=["priority=3"], name="renamed")
        spec_cache.load(profile, args.set)
        spec_cache.store_payload(profile, args.set, args.name,
                                 lambda stamp, out, a=args: cli._payloads(a, stamp, out))
        code = (
            "import sys, json\nfrom engine import spec_cache\n"
            f"p = spec_cache.load_payload({profile!r}, ['priority=3'], 'renamed')\n"
            "print(json.dumps(p) + '\\t' + json.dumps(sorted(m for m in sys.modules"
            " if m.startswith(('pydantic', 'engine.')))))\n"
        )
        payload, modules = (json.loads(x) for x in _python(
            code, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}))
        if kept:  # what the full path sends, and nothing but the CLI's few modules loaded
            sub = pipelines.prepare(profile, args.set, tmp_path, "s", lambda _p: None,
                                    name="renamed")
            assert payload == sub.items[0][0] and payload["priority"] == 3
            assert set(modules) <= {"engine.spec_cache"}, modules
        else:  # its output folder is made at each submit
            assert payload is None
        # another --name is another submission
        assert spec_cache.load_payload(profile, args.set, "other") is None

