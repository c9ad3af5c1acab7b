"""The shipped pipeline through the real engine: `llmconsole submit
pipeline-tiny` queues prepare -> pretrain (two horovod workers, on the
prepared data: --data) -> prune -> quantize -> evaluate as dependent jobs,
each reading the folder of the one before, and the last one writes the
comparison table."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.engine_handle import EngineHandle

MEASURE = ["block_size=64", "eval_batches=4"]  # the prepared held-out split: no max_docs
FAST = [
    *(f"pretrain.args.{a}" for a in ["block_size=64", "eval_batches=4", "model=micro",
                                     "max_steps=8", "eval_every=8", "checkpoint_every=8"]),
    *(f"prune.args.{a}" for a in [*MEASURE, "recover_steps=2"]),
    *(f"quantize.args.{a}" for a in MEASURE),
    *(f"evaluate.args.{a}" for a in MEASURE),
    "prepare.args.vocab_size=512",
]


def test_pipeline_tiny_runs_end_to_end_and_compares(engine: EngineHandle) -> None:
    sets = [x for item in FAST for x in ("--set", item)]
    jobs = engine.json("submit", "pipeline-tiny", *sets)
    assert [j["name"] for j in jobs] == ["pipeline-tiny/prepare", "pipeline-tiny/pretrain",
                                         "pipeline-tiny/prune", "pipeline-tiny/quantize",
                                         "pipeline-tiny/evaluate"]
    assert [j["state"] for j in jobs] == ["queued", "held", "held", "held", "held"]
    ids = [j["id"] for j in jobs]
    # every stage after prepare reads its data (pretrain trains on it, the others measure on
    # its held-out split), so each waits for it too
    assert jobs[1]["after"] == [ids[0]] and sorted(jobs[2]["after"]) == [ids[0], ids[1]]
    assert sorted(jobs[3]["after"]) == [ids[0], ids[2]] and sorted(jobs[4]["after"]) == ids[0:4]
    prepared, jobs, ids = Path(jobs[0]["output"]), jobs[1:], ids[1:]
    for job_id in ids:
        argv = engine.job(job_id)["spec"]["argv"]
        assert argv[argv.index("--data") + 1] == str(prepared) and "--corpus" not in argv

    last = engine.wait_state(ids[-1], ["succeeded", "failed", "cancelled"], timeout=420)
    states = {i: engine.job(i)["state"] for i in ids}
    assert last["state"] == "succeeded", (states, engine.cli("logs", str(ids[-1])).stdout[-2000:])

    outputs = [Path(j["output"]) for j in jobs]
    assert all(o.parent == prepared.parent for o in outputs)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert 0 < manifest["documents_out"] < manifest["documents_in"]
    pretrain = json.loads((outputs[0] / "results.json").read_text())
    assert pretrain["dist"] == "horovod" and pretrain["world_size"] == 2
    prune = json.loads((outputs[1] / "results.json").read_text())
    assert abs(prune["pruned_layers_sparsity"] - 0.5) <= 0.01
    quantize = json.loads((outputs[2] / "results.json").read_text())
    assert quantize["linear_size_ratio"] >= 3
    table = (outputs[3] / "comparison.md").read_text()
    for folder in outputs[:3]:
        assert folder.name in table
    logged = engine.cli("logs", str(ids[-1])).stdout
    for stage in ("pretrain", "prune", "quantize", "evaluate"):
        assert f"| {stage} " in logged  # the table, printed by the last job

    metrics = engine.json("metrics", str(ids[0]))
    assert metrics, "the pretrain job's metrics reached the engine"
