"""The shipped prepare-demo profile through the real engine and CLI: a bad
prepare option is refused at submit naming the field (and by `profiles
validate`), nothing queued; the demo corpus is prepared, as shipped, into
an output folder with its manifest, its progress reaching the engine's
metrics; a later job reads it by ``@prepare-demo``."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.engine_handle import EngineHandle
from tests.integration.test_submit_checks import refused

BAD = [
    # CLI arguments after `submit prepare-demo`, the field named, a fragment
    (["--set", "args.min_words=-3"], "args.min_words", "out of range"),
    (["--set", "args.dedup=fuzzy"], "args.dedup", "invalid choice: 'fuzzy'"),
    (["--set", "args.dedupe=exact"], "args.dedupe", "did you mean dedup?"),
    (["--set", "args.part=1/2"], "args.part", "--part is set by the engine"),
    (["--set", "launcher=torchrun"], "launcher", 'not available for kind "prepare"'),
]


def test_bad_prepare_options_are_refused_at_submit_naming_the_field(
        engine: EngineHandle, tmp_path: Path) -> None:
    for extra, field, fragment in BAD:
        line = refused(engine, "submit", "prepare-demo", *extra)
        assert line.startswith("llmconsole: error: ") and f"{field}: " in line, (extra, line)
        assert fragment in line, (extra, line)
    bad = tmp_path / "bad-prepare.toml"
    bad.write_text('kind = "prepare"\n[args]\ninput = "demo"\nnear_threshold = 1.5\n')
    line = refused(engine, "profiles", "validate", str(bad))
    assert f"{bad}: args.near_threshold: " in line, line
    assert engine.json("jobs", "--all") == []


def test_prepare_demo_prepares_the_demo_corpus_and_a_job_reads_it_by_reference(
        engine: EngineHandle) -> None:
    job_id = engine.submit("prepare-demo")
    job = engine.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
    assert job["state"] == "succeeded", engine.cli("logs", str(job_id)).stdout[-3000:]
    out = Path(job["output"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "llmconsole-prepare/1"
    assert 0 < manifest["documents_out"] < manifest["documents_in"]
    assert manifest["tokens"]["train"] > 0 and manifest["tokens"]["heldout"] > 0
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    metrics = engine.json("metrics", str(job_id))
    assert metrics, "the prepare job's progress reached the engine"

    # a later job gets the folder by reference (held behind a sleeper, never run)
    sleeper = engine.submit("sleep")
    pretrain = engine.submit("pretrain-tiny", "--set", "args.data=@prepare-demo",
                             "--after", str(sleeper))
    argv = engine.job(pretrain)["spec"]["argv"]
    assert argv[argv.index("--data") + 1] == str(out)
    for held in (pretrain, sleeper):
        engine.cli("cancel", str(held))
