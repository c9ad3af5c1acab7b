"""A prepare job across the two sshd test hosts, through a real engine and
the real CLI: `llmconsole submit prepare-demo --set resources.nodes=2` runs
one part on each host (each under its own run root, with its own --part K/2),
both parts write into the one output folder on this machine's disk (the
shared storage of the test hosts), the attempt ends when both have, and the
result is the same as a 1-node run's: the same shards, byte for byte, the
same tokenizer and the same counts in the manifest."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from chaos.engine_handle import EngineHandle
from chaos.hosts import SshHosts
from tests.cluster.test_cluster_engine import kill_naming, wait_nodes

JOB_TIMEOUT_S = 240.0  # datatrove's stages on a loaded 2-core machine, two hosts at once

WORDS = ("river stone window garden lantern copper meadow harbor silver thunder pocket "
         "marble canyon violet saddle engine orchard blanket falcon pepper timber ribbon "
         "glacier compass velvet meteor parrot basket cobalt prairie walnut anchor "
         "summit lemon quiver trumpet island mosaic feather candle willow").split()


def small_corpus(folder: Path, files: int = 4, per_file: int = 60) -> None:
    """JSONL files of unique 40-word documents, plus an exact copy of one
    document in every file (so dedup works across files, hence parts)."""
    rng = random.Random(12)
    folder.mkdir(parents=True)
    copied = " ".join(rng.choice(WORDS) for _ in range(40)) + "."
    for f in range(files):
        rows = [" ".join(rng.choice(WORDS) for _ in range(40)) + f" doc {f}-{i}."
                for i in range(per_file)]
        rows.append(copied)
        path = folder / f"part-{f}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))


def output_digest(out: Path) -> dict[str, Any]:
    """What must not depend on the number of nodes: every shard and index
    file by name and sha256, the tokenizer, and the manifest's counts (not
    datatrove's .ds.metadata, which names the tokenizer by its path)."""
    manifest = json.loads((out / "manifest.json").read_text())
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for split in ("train", "heldout") for p in sorted((out / split).iterdir())
             if p.name.endswith((".ds", ".ds.index"))}
    assert files, f"no shards in {out}"
    return {"files": files,
            "tokenizer": hashlib.sha256((out / "tokenizer" / "tokenizer.json").read_bytes()
                                        ).hexdigest(),
            **{k: manifest[k] for k in ("documents_in", "documents_out", "removed", "tokens",
                                        "documents", "shards", "vocab_size", "token_dtype")}}


def test_a_prepare_on_two_test_hosts_equals_one_on_one_host(
        engine: EngineHandle, ssh_hosts: SshHosts, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", roots=roots, head=None)
    engine.env.update(ssh_hosts.env())
    engine.serve("--cluster", str(profile))
    try:
        wait_nodes(engine, {"node1": "up", "node2": "up"})
        small_corpus(tmp_path / "corpus")
        sets = ["--set", f"args.input={tmp_path / 'corpus'}", "--set", "args.tasks=4",
                "--set", "args.vocab_size=512", "--set", "args.min_words=5",
                "--set", "resources.cpus=1"]
        two = engine.submit("prepare-demo", *sets, "--set", "resources.nodes=2")
        job = engine.wait_state(two, {"succeeded", "failed", "lost"}, timeout=JOB_TIMEOUT_S)
        log = engine.cli("logs", str(two)).stdout
        assert job["state"] == "succeeded", (job, log[-3000:])
        [attempt] = job["attempts"]
        assert sorted(p["node"] for p in attempt["placements"]) == ["node1", "node2"]
        for node in ("node1", "node2"):  # each host ran its own part, under its own root
            exit_file = roots / node / "runs" / f"{two}.1" / "exit.json"
            assert json.loads(exit_file.read_text()).get("code") == 0, node

        one = engine.submit("prepare-demo", *sets)
        single = engine.wait_state(one, {"succeeded", "failed", "lost"}, timeout=JOB_TIMEOUT_S)
        assert single["state"] == "succeeded", engine.cli("logs", str(one)).stdout[-3000:]

        both, alone = Path(job["output"]), Path(single["output"])
        assert both != alone
        assert output_digest(both) == output_digest(alone)
        manifest = json.loads((both / "manifest.json").read_text())
        assert manifest["documents_in"] == 4 * 61
        assert manifest["removed"].get("exact_duplicate") == 3  # the copy in 3 of the 4 files
    finally:
        engine.close()
        kill_naming(roots)
