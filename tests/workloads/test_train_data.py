"""Training, evaluation and compression on prepared data (--data DIR) as
users run them: the same losses as --corpus on the same documents, resume
step for step, start-up that does not grow with the dataset, and bad
folders refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.workloads import data, shards
from engine.workloads.train import epoch_order
from tests.workloads.conftest import results, run_workload
from tests.workloads.test_train import losses, start, wait_for

DOCS = 200
SMALL = ["--model", "micro", "--block-size", "64", "--batch-size", "8", "--log-every", "1",
         "--eval-batches", "4"]


@pytest.fixture(scope="module")
def demo_texts(wl_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = wl_env["XDG_CACHE_HOME"]  # the session's demo cache
    try:
        return data.load_texts("demo")[:DOCS]
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def prepared(demo_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first DOCS demo documents as a prepared folder, with a tokenizer
    trained on their training split (what train does for --corpus)."""
    train_i, _ = data.split_indices(demo_texts, 0.05)
    tok = data.train_tokenizer([demo_texts[i] for i in train_i], 512)
    folder = tmp_path_factory.mktemp("prepared") / "demo"
    shards.write_prepared_texts(folder, demo_texts, tok, docs_per_shard=40)
    return folder


def test_data_gives_the_losses_corpus_gives_on_the_same_documents(
        tmp_path: Path, prepared: Path, wl_env: dict[str, str]) -> None:
    steps = ["--max-steps", "4", "--eval-every", "4", "--checkpoint-every", "4"]
    run_workload("train", ["--output", str(tmp_path / "data"), "--data", str(prepared),
                           *SMALL, *steps], wl_env)
    run_workload("train", ["--output", str(tmp_path / "corpus"), "--corpus", "demo",
                           "--max-docs", str(DOCS), "--tokenizer", str(prepared / "tokenizer"),
                           *SMALL, *steps], wl_env)
    got, expected = losses(tmp_path / "data"), losses(tmp_path / "corpus")
    assert len(got) == 4 and got == expected
    assert results(tmp_path / "data")["eval_loss"] == results(tmp_path / "corpus")["eval_loss"]

    # evaluate --data scores the held-out rows training scored
    run_workload("evaluate", ["--model", str(tmp_path / "data"), "--output",
                              str(tmp_path / "eval"), "--data", str(prepared),
                              "--block-size", "64", "--batch-size", "8", "--eval-batches", "4"],
                 wl_env)
    ev = results(tmp_path / "eval")
    assert ev["data"] == str(prepared.resolve()) and "corpus" not in ev
    assert ev["eval_loss"] == pytest.approx(results(tmp_path / "data")["eval_loss"], rel=1e-5)


def _resume_args(out: Path, folder: Path) -> list[str]:
    return ["--output", str(out), "--data", str(folder), *SMALL, "--max-steps", "12",
            "--checkpoint-every", "4", "--eval-every", "12", "--dropout", "0.1", "--lr", "3e-3",
            "--resume"]


def test_resume_on_data_sees_the_batches_an_uninterrupted_run_sees(
        tmp_path: Path, prepared: Path, wl_env: dict[str, str]) -> None:
    whole = tmp_path / "whole"
    run_workload("train", _resume_args(whole, prepared), wl_env)

    broken = tmp_path / "broken"
    proc = start(_resume_args(broken, prepared), wl_env)
    wait_for(lambda: (broken / "checkpoints" / "step-000004").is_dir())
    proc.kill()  # a crash: nothing more saved
    proc.wait(timeout=30)
    assert not (broken / "results.json").exists()
    newest = sorted((broken / "checkpoints").glob("step-*"))[-1]
    at = int(newest.name.removeprefix("step-"))
    assert at < 12
    resumed = run_workload("train", _resume_args(broken, prepared), wl_env)
    assert f"resumed from {newest} at step {at}" in resumed.stdout

    def by_step(folder: Path) -> dict[int, float]:
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return {x["step"]: x["loss"] for x in lines if "loss" in x}

    uninterrupted, after = by_step(whole), by_step(broken)
    # every step after the resume had the batch (and dropout) of the same step
    for step in range(at + 1, 13):
        assert after[step] == pytest.approx(uninterrupted[step], rel=1e-5), step
    assert len({round(uninterrupted[s], 4) for s in range(at + 1, 13)}) > 1
    assert results(broken)["eval_loss"] == pytest.approx(results(whole)["eval_loss"], rel=1e-5)


def _random_folder(folder: Path, tokenizer_folder: Path, tokens: int) -> None:
    """`tokens` training tokens of random ids, in documents of 500."""
    tok = data.load_tokenizer(tokenizer_folder)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(tok) - 1, size=tokens, dtype=np.int64)
    train = (ids[i:i + 499] for i in range(0, tokens, 500))
    held = [rng.integers(0, len(tok) - 1, size=499) for _ in range(20)]
    shards.write_shards(folder, {"train": train, "heldout": held}, vocab_size=len(tok),
                        eos_id=tok.eos_token_id, tokenizer=tok, docs_per_shard=4000)


def test_start_up_does_not_grow_with_the_dataset(
        tmp_path: Path, prepared: Path, wl_env: dict[str, str]) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    _random_folder(small, prepared / "tokenizer", 1_000_000)
    _random_folder(large, prepared / "tokenizer", 10_000_000)  # 20 MB of uint16, 80 as int64
    # rows of 8 tokens: 1.25 M rows in the large folder, so a list of every
    # row (an epoch order in Python ints) would cost some 70 MB too
    args = ["--model", "micro", "--block-size", "8", "--batch-size", "8",
            "--eval-batches", "4"]
    one = shards.measure_first_step(small, args, env=wl_env)
    ten = shards.measure_first_step(large, args, env=wl_env)
    # before step 1: the 4 x 8 held-out rows scored, and one batch of 8 rows
    assert one["tokens_read_first_step"] == ten["tokens_read_first_step"] == (32 + 8) * 8
    # 9 M more tokens, none of them resident: loaded as a tensor they were 72 MB
    assert ten["rss_first_step_bytes"] - one["rss_first_step_bytes"] < 16 << 20, (one, ten)
    assert ten["child_peak_rss_bytes"] - one["child_peak_rss_bytes"] < 16 << 20, (one, ten)
    assert 0 < one["first_step_s"] and 0 < ten["first_step_s"]


def test_bad_data_folders_are_one_line_naming_the_fix(
        tmp_path: Path, prepared: Path, trained: Path, wl_env: dict[str, str]) -> None:
    missing = run_workload("train", ["--output", str(tmp_path / "o"), "--data",
                                     str(tmp_path / "nope"), *SMALL], wl_env, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: --data {tmp_path / 'nope'}: no such folder; run a prepare job first "
        f"(python -m engine.workloads.prepare --input ... --output {tmp_path / 'nope'}) and "
        "pass its output folder"]
    # the session's trained model knows 512 ids of another tokenizer
    other = tmp_path / "other"
    tok: Any = data.train_tokenizer([f"word{i} other{i * 7}" for i in range(3000)], 1024)
    shards.write_shards(other, {"train": [[5, 6, 7] * 100], "heldout": [[8, 9] * 100]},
                        vocab_size=len(tok), eos_id=tok.eos_token_id, tokenizer=tok)
    small = run_workload("evaluate", ["--model", str(trained), "--output", str(tmp_path / "e"),
                                      "--data", str(other)], wl_env, check=False)
    assert small.returncode == 2
    lines = small.stderr.strip().splitlines()
    assert len(lines) == 1 and "has a vocabulary of 512 tokens" in lines[0], small.stderr
    assert f"go up to {len(tok)}" in lines[0]


def _listed_order(rows: int, epoch: int, seed: int, rank: int, size: int,
                  batch_size: int) -> list[list[int]]:
    """epoch_order as it was written with lists (every row a Python int)."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(rows, generator=g).tolist()
    usable = rows - rows % (size * batch_size)
    mine = perm[rank:usable:size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


@pytest.mark.parametrize(("rows", "size", "batch"), [(100, 1, 8), (101, 2, 8), (1000, 3, 5),
                                                     (17, 2, 8), (15, 2, 8)])
def test_the_lazy_epoch_order_deals_the_batches_the_listed_one_dealt(
        rows: int, size: int, batch: int) -> None:
    for epoch in (0, 3):
        dealt = []
        for rank in range(size):
            order = epoch_order(rows, epoch, 42, rank, size, batch)
            assert list(order) == _listed_order(rows, epoch, 42, rank, size, batch)
            dealt += [r for b in order for r in b]
        assert len(dealt) == len(set(dealt)) == rows - rows % (size * batch)
