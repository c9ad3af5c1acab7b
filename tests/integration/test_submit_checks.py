"""Bad input is refused before anything is queued, through the real CLI and
daemon: each bad ``--set`` and each bad profile gets exit code 1 and one
line on stderr naming the field (or the override), `profiles validate`
refuses the same files, the API refuses the same specs with a 400 naming the
field, and `jobs --all` stays empty. A value that starts with '-' reaches the
job's argv as a value (``--model=--help``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.engine_handle import EngineHandle
from engine.client import EngineClient
from engine.errors import BadRequest
from engine.spec_rules import MAX_ARG_BYTES

ALL_STATES = ("held", "queued", "starting", "running", "succeeded", "failed", "cancelled",
              "lost")

BAD_SETS = [
    # profile, CLI arguments after it, the field (or override) named, a fragment
    ("pretrain-tiny", ["--set", "args.max_steps=-5"], "args.max_steps", "-5 is out of range"),
    ("pretrain-tiny", ["--set", "args.max_steps=abc"], "args.max_steps",
     "'abc' is not an integer"),
    ("pretrain-tiny", ["--set", "args.nosuch=1"], "args.nosuch", "has no option --nosuch"),
    ("pretrain-tiny", ["--set", "args.lr=nan"], "args.lr", "nan is not a finite number"),
    ("pretrain-tiny", ["--set", "name= "], "name", "is blank"),
    ("hello", ["--set", "name=\udcff"], "--set name", "not UTF-8 text (byte 0xff"),
    ("hello", ["--name", "  "], "--name", "is blank"),
    ("hello", ["--set", "resources.memory_gb=1e400"], "resources.memory_gb",
     "input should be a finite number"),
    ("eval-tiny", ["--set", "args.model=@nosuchprofile"], "@nosuchprofile",
     "there is no profile nosuchprofile"),
    ("pipeline-tiny", ["--set", "prune.args.sparsity=2"], "args.sparsity",
     "stage prune: "),
]


def refused(engine: EngineHandle, *args: str) -> str:
    """The one stderr line of a refused CLI command."""
    proc = engine.cli(*args, check=False)
    assert proc.returncode == 1, (args, proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
    return lines[0]


def test_every_bad_override_is_refused_with_one_line_and_nothing_queued(
        engine: EngineHandle) -> None:
    for profile, extra, field, fragment in BAD_SETS:
        line = refused(engine, "submit", profile, *extra)
        assert line.startswith("llmconsole: error: "), line
        assert f"{field}: " in line and fragment in line, (extra, line)
    assert engine.json("jobs", "--all") == []
    assert engine.json("engine", "status")["running"] is True  # the daemon stayed up


BAD_FILES = {
    # profile name: (file text, field the line names, fragment)
    "typo": ('kind = "train"\n[args]\nmax_stepz = 5\n', "args.max_stepz",
             "did you mean max_steps?"),
    "negative-lr": ('kind = "train"\n[args]\nlr = -1.0\n', "args.lr",
                    "expected a finite number > 0"),
    "no-method": ('kind = "compress"\n[args]\nmodel = "/m"\n', "args.method",
                  "needs --method"),
    "flag-value": ('kind = "train"\n[args]\nresume = "yes"\n', "args.resume",
                   "on/off option"),
    "infinite-memory": ('kind = "command"\ncommand = ["true"]\n[resources]\n'
                        'memory_gb = 1e400\n', "resources.memory_gb", "finite"),
    "blank": ('kind = "command"\nname = "   "\ncommand = ["true"]\n', "name", "is blank"),
    "long-arg": (f'kind = "command"\ncommand = ["echo", "{"x" * (MAX_ARG_BYTES + 1)}"]\n',
                 "command[1]", f"over the kernel's limit of {MAX_ARG_BYTES} bytes"),
    "cycle": ('kind = "pipeline"\n[[stages]]\nname = "a"\nprofile = "eval-tiny"\n'
              'set = { args = { model = "@b" } }\n[[stages]]\nname = "b"\n'
              'profile = "eval-tiny"\nset = { args = { model = "@a" } }\n', "stages[0]",
              "stage a: @b is not an earlier stage (stage b comes later and waits for a: "
              "a cycle)"),
    "dangling": ('kind = "pipeline"\n[[stages]]\nname = "a"\nprofile = "pretrain-tiny"\n'
                 '[[stages]]\nname = "b"\nprofile = "eval-tiny"\n'
                 'set = { args = { model = "@nosuch" } }\n', "stages[1]",
                 "stage b: @nosuch is not an earlier stage (no stage has that name)"),
}


def test_bad_profiles_are_refused_by_submit_and_by_validate(engine: EngineHandle) -> None:
    for name, (text, _field, _fragment) in BAD_FILES.items():
        engine.write_profile(name, text)
    engine.write_profile("fine", 'kind = "train"\n[args]\nmax_steps = 5\nlr = 1e-3\n')
    lines: dict[Path, str] = {}
    for name, (_text, field, fragment) in BAD_FILES.items():
        path = engine.profiles / f"{name}.toml"
        line = refused(engine, "submit", name)
        assert line.startswith(f"llmconsole: error: {path}: {field}: "), line
        assert fragment in line, line
        lines[path] = line.removeprefix("llmconsole: error: ")
    every = engine.cli("profiles", "validate", check=False)
    assert every.returncode == 1
    validated = {ln.removeprefix("invalid  ").split(": ")[0]: ln.removeprefix("invalid  ")
                 for ln in every.stderr.splitlines()}
    assert validated == {str(path): line for path, line in lines.items()}
    assert f"ok       {engine.profiles / 'fine.toml'}" in every.stdout
    listed = {p["name"]: p["error"] for p in engine.json("profiles", "list")}
    assert all(listed[name] and BAD_FILES[name][1] in listed[name] for name in BAD_FILES)
    assert listed["fine"] is None
    assert engine.json("jobs", "--all") == []


def test_a_value_starting_with_a_dash_reaches_the_job_as_a_value(engine: EngineHandle) -> None:
    gate = engine.submit("sleep")
    job = engine.json("submit", "pretrain-tiny", "--set", "args.model=--help",
                      "--set", "args.corpus=-", "--after", str(gate))
    argv = engine.job(job["id"])["spec"]["argv"]
    assert "--model=--help" in argv and "--corpus=-" in argv
    assert "--help" not in argv and job["state"] == "held"
    engine.cli("cancel", str(gate))
    engine.wait_state(job["id"], {"failed", "cancelled"})


BAD_SPECS = [
    # a change to a good spec sent to the API, the start of the error
    ({"argv": ["echo", "\udcff"]}, "spec.argv[1]: is not UTF-8 text"),
    ({"env": {"SEED": "\udcff"}}, "spec.env.SEED: is not UTF-8 text"),
    ({"name": "  "}, "spec.name: is blank"),
    ({"resources": {"memory_gb": float("inf")}}, "spec.resources.memory_gb: expected a finite"),
    ({"resources": {"memory_gb": float("nan")}}, "spec.resources.memory_gb: expected a finite"),
    ({"argv": ["echo", "x" * (MAX_ARG_BYTES + 1)]}, "spec.argv[1]: is 131072 bytes long"),
]


def test_the_api_refuses_the_same_specs_and_stays_up(engine: EngineHandle) -> None:
    engine.cli("engine", "start")
    client = EngineClient(engine.home / "engine.sock")
    for change, start in BAD_SPECS:
        with pytest.raises(BadRequest) as err:
            client.submit({"name": "x", "kind": "command", "argv": ["true"], **change})
        assert err.value.status == 400 and err.value.message.startswith(start), err.value
        with pytest.raises(BadRequest) as err:
            client.submit_many([({"name": "ok", "kind": "command", "argv": ["true"]}, []),
                                ({"name": "x", "kind": "command", "argv": ["true"], **change},
                                 [])])
        assert err.value.status == 400
    assert client.jobs(states=list(ALL_STATES)) == []
    assert client.health()["pid"] > 0
