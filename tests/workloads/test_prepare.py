"""The prepare workload run as the program it is (real datatrove, real files,
real subprocesses) on small corpora written here: what it keeps and
removes, what it counts, the shards against the tokenizer, the same output
for 1 and 2 workers, for 1 and 2 parts run at once on one folder, and for a
run killed with SIGKILL and retried; bad input past the threshold; uint32
ids for a large vocabulary."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.workloads.data import is_held_out
from engine.workloads.quality import normalise
from tests.workloads.conftest import run_workload, workload_env

EVAL = 0.15
BASE = ["--tasks", "4", "--vocab-size", "600", "--eval-fraction", str(EVAL),
        "--max-bad-fraction", "0.05"]


def pseudo_words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
            for _ in range(n)]


def jsonl(rows: Sequence[Any]) -> bytes:
    return b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in rows)


def write_corpus(folder: Path) -> dict[str, Any]:
    """Five files of four kinds: 50 unique documents, planted exact copies
    (whitespace changed) and near copies (2 of 200 words changed), one
    document for each of five rules, 3 bad records. Every planted copy comes
    after its original in the canonical order (files by name, lines)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rng = random.Random(12)
    unique = [" ".join(pseudo_words(rng, 200)) for _ in range(50)]
    exact = [unique[i].replace(" ", "  ", 3) for i in (1, 7, 22, 30)] + \
        ["\r\n" + unique[i] + "   " for i in (2, 40)]
    near = []
    for i in (3, 11, 25, 33, 41):
        w = unique[i].split()
        w[50], w[150] = "changed", "altered"
        near.append(" ".join(w))
    junk = {"min_words": "far too short to keep",
            "symbol_ratio": " ".join(["#tag word"] * 40),
            "alpha_ratio": " ".join(["12345 67890 word"] * 20),
            "duplicate_lines": "\n".join(["this line repeats itself"] * 8 + pseudo_words(rng, 6)),
            "mean_word_length": " ".join(["ab"] * 40)}
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_bytes(jsonl(
        [{"text": t} for t in unique[:20]] + [b"{oops not json\n", {"body": "no text field"},
                                              {"text": junk["min_words"]}]))
    (folder / "b.txt").write_bytes(
        "\n\n".join(unique[20:30] + [junk["symbol_ratio"], junk["duplicate_lines"]]).encode()
        + b"\n\nbroken \xff bytes here\n")
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(
        [{"text": t} for t in unique[30:42] + exact[:3] + [junk["alpha_ratio"]]])))
    (folder / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(
        [{"text": t} for t in unique[42:] + near + [junk["mean_word_length"]]])))
    pq.write_table(pa.table({"text": exact[3:]}), folder / "e.parquet")
    return {"unique": [normalise(t) for t in unique], "exact": len(exact), "near": len(near),
            "junk": list(junk), "bad": 3,
            "records": len(unique) + len(exact) + len(near) + len(junk) + 3}


def output_hash(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for split in ("train", "heldout") for p in (out / split).iterdir()):
        if path.name.endswith((".ds", ".ds.index")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update((out / "tokenizer" / "tokenizer.json").read_bytes())
    return h.hexdigest()


def decoded_docs(out: Path, split: str) -> list[list[int]]:
    """Every document of a split as token ids, shards in name order."""
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for shard in [s for s in manifest["shards"] if s["split"] == split]:
        ids = np.fromfile(out / shard["file"], dtype=manifest["token_dtype"])
        ends = np.fromfile(out / (shard["file"] + ".index"), dtype="<u8")
        assert len(ends) == shard["documents"] and ids.size == shard["tokens"] == ends[-1]
        starts = [0, *ends[:-1].tolist()]
        docs += [ids[a:b].tolist() for a, b in zip(starts, ends.tolist(), strict=True)]
    return docs


def prepare(inp: Path, out: Path, env: dict[str, str], *extra: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_workload("prepare", ["--input", str(inp), "--output", str(out), *BASE, *extra],
                        env, check=check)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = workload_env(tmp_path_factory.mktemp("prepare-env"))
    e["RAYON_NUM_THREADS"] = "1"
    return e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("prepare-corpus") / "in"
    return folder, write_corpus(folder)


@pytest.fixture(scope="module")
def baseline(corpus: tuple[Path, dict[str, Any]], env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    inp, _ = corpus
    out = tmp_path_factory.mktemp("prepare-base") / "out"
    proc = prepare(inp, out, env, "--workers", "1")
    return out, proc.stderr


def test_keeps_the_first_of_each_copy_counts_every_removal_and_decodes(
        corpus: tuple[Path, dict[str, Any]], baseline: tuple[Path, str]) -> None:
    from tokenizers import Tokenizer

    inp, truth = corpus
    out, stderr = baseline
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "llmconsole-prepare/1"
    assert m["documents_in"] == truth["records"]
    removed = m["removed"]
    assert removed["exact_duplicate"] == truth["exact"]
    assert removed["near_duplicate"] == truth["near"]
    for rule in truth["junk"]:
        assert removed[rule] == 1, rule
    assert (removed["bad_json"], removed["missing_field"], removed["not_utf8"]) == (1, 1, 1)
    assert m["documents_out"] == len(truth["unique"])
    assert m["documents_in"] == m["documents_out"] + sum(removed.values())
    assert m["bad_total"] == 3
    assert [(Path(b["file"]).name, b["line"], b["problem"]) for b in m["bad"]] == [
        ("a.jsonl", 21, "bad_json"), ("a.jsonl", 22, "missing_field"), ("b.txt", 38, "not_utf8")]
    assert f"bad input: {inp.resolve() / 'a.jsonl'} line 21: bad_json" in stderr
    assert [Path(i["path"]).name for i in m["inputs"]] == ["a.jsonl", "b.txt", "c.jsonl.gz",
                                                           "d.jsonl.zst", "e.parquet"]
    assert m["token_dtype"] == "uint16" and m["tokenizer"]["source"] == "trained"
    assert not (out / "work").exists()

    # the shards hold exactly the unique documents, in canonical order, each
    # the tokenizer's encoding followed by eos
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    assert tok.token_to_id("</s>") == m["eos_id"]
    for split in ("train", "heldout"):
        texts = [t for t in truth["unique"] if is_held_out(t, EVAL) == (split == "heldout")]
        want = [e.ids + [m["eos_id"]] for e in tok.encode_batch(texts, add_special_tokens=False)]
        assert decoded_docs(out, split) == want
        assert m["documents"][split] == len(texts) > 0
        assert m["tokens"][split] == sum(map(len, want))


def test_progress_records_every_two_seconds_and_a_last_one(
        baseline: tuple[Path, str]) -> None:
    out, _ = baseline
    m = json.loads((out / "manifest.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {"step", "total_steps", "documents_per_s", "tokens_per_s", "removed", "kept", "phase"}
    assert len(records) >= 3 and all(keys <= set(r) for r in records)
    times = [r["time"] for r in records]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 2.0
    assert [r["phase"] for r in records][0] == "filter" and records[-1]["phase"] == "tokenize"
    assert {r["phase"] for r in records} == {"filter", "dedup", "tokenize"}
    last = records[-1]
    assert (last["step"], last["total_steps"]) == (m["documents_in"], m["documents_in"])
    assert last["kept"] == m["documents_out"] and last["removed"] == sum(m["removed"].values())
    assert any(r["tokens_per_s"] > 0 for r in records)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)


def test_same_output_for_two_workers_and_for_two_parts_at_once(
        corpus: tuple[Path, dict[str, Any]], baseline: tuple[Path, str], env: dict[str, str],
        tmp_path: Path) -> None:
    inp, _ = corpus
    base = output_hash(baseline[0])
    prepare(inp, tmp_path / "w2", env, "--workers", "2")
    assert output_hash(tmp_path / "w2") == base

    shared = tmp_path / "parts"
    args = ["--input", str(inp), "--output", str(shared), *BASE, "--workers", "1"]
    procs = [subprocess.Popen([sys.executable, "-m", "engine.workloads.prepare", *args,
                               "--part", f"{k}/2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    assert output_hash(shared) == base
    m = json.loads((shared / "manifest.json").read_text())
    assert m["documents_out"] == json.loads(
        (baseline[0] / "manifest.json").read_text())["documents_out"]


def test_a_run_killed_mid_way_skips_finished_stages_on_retry(
        corpus: tuple[Path, dict[str, Any]], baseline: tuple[Path, str], env: dict[str, str],
        tmp_path: Path) -> None:
    inp, _ = corpus
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "engine.workloads.prepare", "--input", str(inp),
            "--output", str(out), *BASE, "--workers", "1", "--keep-work"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "work" / "logs" / "minhash-sigs" / "completions"
    deadline = time.monotonic() + 180
    while not (marker.is_dir() and any(marker.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "never reached minhash"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    filtered = sorted((out / "work" / "filtered").iterdir())
    before = {p: p.stat().st_mtime_ns for p in filtered}
    retry = run_workload("prepare", argv[3:], env)
    assert "Not doing anything as all 4 tasks have already been completed" in retry.stderr
    assert output_hash(out) == output_hash(baseline[0])
    # the filter stage was not run again: its files are the killed run's
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_retry_with_other_options_is_refused(corpus: tuple[Path, dict[str, Any]],
                                             env: dict[str, str], tmp_path: Path) -> None:
    inp, _ = corpus
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "work" / "config.json").write_text(json.dumps({"tasks": 3}))
    proc = prepare(inp, out, env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: --output {out}: holds an unfinished prepare run with other options")


def test_past_the_bad_fraction_the_job_fails_with_one_line(env: dict[str, str],
                                                           tmp_path: Path) -> None:
    rng = random.Random(5)
    rows: list[Any] = [{"text": " ".join(pseudo_words(rng, 30))} for _ in range(18)]
    rows[4:4] = [b"{bad\n"]
    rows[9:9] = [{"title": "no text"}]
    (tmp_path / "in.jsonl").write_bytes(jsonl(rows))
    proc = run_workload("prepare", ["--input", str(tmp_path / "in.jsonl"), "--output",
                                    str(tmp_path / "out"), "--dedup", "none", "--tasks", "2",
                                    "--workers", "1"], env, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: 2 of 20 input records are bad (10.00%, more than "
                    f"--max-bad-fraction 0.01; first: {tmp_path.resolve() / 'in.jsonl'} "
                    "line 5: bad_json); fix the input or raise --max-bad-fraction")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_vocabulary_over_65536_gives_uint32_shards(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(9)
    vocab = {"<unk>": 0, "</s>": 1}
    for w in pseudo_words(rng, 90000):
        vocab.setdefault(w, len(vocab))
    assert len(vocab) > 65536
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                            eos_token="</s>").save_pretrained(str(tmp_path / "tok"))
    words = list(vocab)[2:]
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(12)]
    texts[0] += " " + words[-1]  # an id above 65535
    (tmp_path / "in.jsonl").write_bytes(jsonl([{"text": t} for t in texts]))
    run_workload("prepare", ["--input", str(tmp_path / "in.jsonl"), "--output",
                             str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok"),
                             "--dedup", "none", "--tasks", "2", "--workers", "1",
                             "--eval-fraction", "0.2"], env)
    out = tmp_path / "out"
    m = json.loads((out / "manifest.json").read_text())
    assert m["token_dtype"] == "uint32" and m["vocab_size"] == len(vocab)
    assert m["tokenizer"]["source"] == str(tmp_path / "tok")
    got = decoded_docs(out, "train") + decoded_docs(out, "heldout")
    want = {tuple(tok.encode(normalise(t)).ids + [1]) for t in texts}
    assert {tuple(d) for d in got} == want and len(got) == len(texts)
    assert max(max(d) for d in got) == len(vocab) - 1


def test_a_finished_folder_is_left_alone_unless_the_options_differ(
        corpus: tuple[Path, dict[str, Any]], baseline: tuple[Path, str],
        env: dict[str, str]) -> None:
    inp, _ = corpus
    out = baseline[0]
    before = output_hash(out)
    again = prepare(inp, out, env, "--workers", "2")
    assert again.stderr.strip().endswith("already complete; nothing to do")
    other = prepare(inp, out, env, "--workers", "1", "--near-threshold", "0.5", check=False)
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1] == (
        f"error: --output {out}: holds a finished prepare run with other options; use a new "
        "--output or remove that folder")
    assert output_hash(out) == before


def test_nothing_left_after_the_rules_is_one_error_line(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("too short\n\nalso short\n")
    proc = run_workload("prepare", ["--input", str(tmp_path / "in.txt"), "--output",
                                    str(tmp_path / "out"), "--dedup", "none", "--tasks", "2",
                                    "--workers", "1"], env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: no documents are left after the quality rules and dedup")


def test_a_part_alone_times_out_naming_the_missing_parts(
        corpus: tuple[Path, dict[str, Any]], env: dict[str, str], tmp_path: Path) -> None:
    inp, _ = corpus
    out = tmp_path / "out"
    proc = prepare(inp, out, env, "--workers", "1", "--part", "0/2", "--barrier-timeout", "1",
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: stage filter: waited 1 s for task 2 (part 1), task 3 (part 1); check those "
        f"parts' logs and that every part sees the same {out} (shared storage), or raise "
        "--barrier-timeout")
    assert (out / "work" / "failed" / "part-0").read_text().startswith("stage filter: waited")
