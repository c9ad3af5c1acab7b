"""Prepared folders read through memory maps (engine.workloads.shards): the
contract's format written and read back, rows equal to what --corpus packs,
lazy reads, the --data option, and every refusal as one line naming the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.workloads import data, shards
from engine.workloads.common import WorkloadError
from engine.workloads.options import OptionError, parse

TEXTS = [f"Document {i}: the {w} of a tiny corpus, written {i % 7} times with care."
         for i, w in enumerate(["shape", "form", "size", "sound", "light", "weight"] * 30)]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    train_i, _ = data.split_indices(TEXTS, 0.1)
    return data.train_tokenizer([TEXTS[i] for i in train_i], 300)


def _docs(n: int, seed: int, vocab: int = 300, longest: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab - 1, size=int(rng.integers(1, longest))) for _ in range(n)]


def test_written_folder_follows_the_contract_and_reads_back(tmp_path: Path) -> None:
    train, held = _docs(25, 1), _docs(4, 2)
    m = shards.write_shards(tmp_path / "d", {"train": train, "heldout": held},
                            vocab_size=300, eos_id=299, docs_per_shard=10)
    d = tmp_path / "d"
    assert json.loads((d / "manifest.json").read_text()) == m
    assert m["format"] == "llmconsole-prepare/1" and m["token_dtype"] == "uint16"
    assert [s["file"] for s in m["shards"]] == ["train/00000.ds", "train/00001.ds",
                                                "train/00002.ds", "heldout/00000.ds"]
    assert [s["documents"] for s in m["shards"]] == [10, 10, 5, 4]
    assert m["tokens"]["train"] == sum(len(x) + 1 for x in train)
    assert m["documents"] == {"train": 25, "heldout": 4}
    # the index: little-endian uint64 END offsets of the documents in the shard
    ends = np.fromfile(d / "train/00001.ds.index", dtype="<u8")
    assert ends.tolist() == np.cumsum([len(x) + 1 for x in train[10:20]]).tolist()
    ids = np.fromfile(d / "train/00001.ds", dtype="<u2")
    assert ids[ends - 1].tolist() == [299] * 10  # every document ends with eos
    (d / "tokenizer").mkdir()
    p = shards.open_prepared(d)
    assert p.train.tokens_read == 0
    got = [x.tolist() for x in p.train.iter_documents()]
    assert got == [x.tolist() + [299] for x in train]
    assert [x.tolist() for x in p.heldout.iter_documents()] == [x.tolist() + [299] for x in held]


def test_a_vocabulary_past_uint16_is_stored_as_uint32(tmp_path: Path) -> None:
    big = [np.array([70_000, 5, 65_536])]
    m = shards.write_shards(tmp_path / "d", {"train": big, "heldout": big},
                            vocab_size=80_000, eos_id=79_999)
    assert m["token_dtype"] == "uint32"
    assert (tmp_path / "d/train/00000.ds").stat().st_size == 4 * 4
    (tmp_path / "d/tokenizer").mkdir()
    stream = shards.open_prepared(tmp_path / "d").train
    assert stream.read(0, 4).tolist() == [70_000, 5, 65_536, 79_999]


def test_blocks_are_the_rows_corpus_packs(tmp_path: Path, tokenizer: Any) -> None:
    shards.write_prepared_texts(tmp_path / "d", TEXTS, tokenizer, eval_fraction=0.1,
                                docs_per_shard=7)
    p = shards.open_prepared(tmp_path / "d")
    train_i, held_i = data.split_indices(TEXTS, 0.1)
    for block in (16, 33):
        expected = data.pack_blocks(tokenizer, [TEXTS[i] for i in train_i], block)
        rows = p.blocks("train", block)
        assert len(rows) == len(expected) and len(p.train.shards) > 3
        assert torch.equal(rows[0:len(rows)], expected)  # rows span shard boundaries
        assert torch.equal(rows[[5, 0, 3]], expected[[5, 0, 3]])
        held = data.pack_blocks(tokenizer, [TEXTS[i] for i in held_i], block)
        assert torch.equal(p.blocks("heldout", block)[:len(held)], held)


def test_a_row_reads_only_its_tokens(tmp_path: Path) -> None:
    shards.write_shards(tmp_path / "d", {"train": _docs(400, 3), "heldout": _docs(5, 4)},
                        vocab_size=300, eos_id=299, docs_per_shard=50)
    (tmp_path / "d/tokenizer").mkdir()
    p = shards.open_prepared(tmp_path / "d")
    rows = p.blocks("train", 32)
    assert p.tokens_read == 0 and len(rows) > 100
    batch = rows[[7, len(rows) - 1, 40]]
    assert batch.shape == (3, 32) and batch.dtype == torch.long
    assert p.tokens_read == 3 * 32
    whole = np.concatenate([np.fromfile(s.path, dtype="<u2") for s in p.train.shards])
    assert batch[1].tolist() == whole[(len(rows) - 1) * 32:len(rows) * 32].tolist()
    with pytest.raises(IndexError):
        rows[[len(rows)]]


def test_a_missing_or_unfinished_folder_says_run_a_prepare_job_first(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="no such folder; run a prepare job first"):
        shards.open_prepared(tmp_path / "nope")
    partial = tmp_path / "partial"
    shards.write_shards(partial, {"train": _docs(3, 5), "heldout": _docs(1, 6)},
                        vocab_size=300, eos_id=299)
    (partial / "manifest.json").unlink()  # a prepare job killed before its last write
    with pytest.raises(WorkloadError) as err:
        shards.open_prepared(partial)
    assert "no manifest.json" in str(err.value) and "run a prepare job first" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_foreign_manifest_or_a_damaged_shard_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shards.write_shards(d, {"train": _docs(3, 5), "heldout": _docs(1, 6)},
                        vocab_size=300, eos_id=299)
    (d / "tokenizer").mkdir()
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(WorkloadError, match="format 'other/9'"):
        shards.open_prepared(d)
    (d / "manifest.json").write_text(json.dumps(manifest))
    with open(d / "train/00000.ds", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(WorkloadError, match="damaged: run the prepare job again"):
        shards.open_prepared(d)


def test_a_tokenizer_or_model_that_does_not_fit_the_data_is_refused(
        tmp_path: Path, tokenizer: Any) -> None:
    shards.write_prepared_texts(tmp_path / "d", TEXTS, tokenizer)
    p = shards.open_prepared(tmp_path / "d")
    shards.check_tokenizer(p, data.load_tokenizer(tmp_path / "d/tokenizer"), "--tokenizer x")
    other = data.train_tokenizer(TEXTS[::-1], 280)
    with pytest.raises(WorkloadError, match="--tokenizer x disagrees with the tokenizer"):
        shards.check_tokenizer(p, other, "--tokenizer x")
    shards.check_model_vocab(p, len(tokenizer), "model m")
    with pytest.raises(WorkloadError, match=f"vocabulary of 100 tokens.*up to {len(tokenizer)}"):
        shards.check_model_vocab(p, 100, "model m")


@pytest.mark.parametrize("module", ["train", "evaluate", "compress"])
def test_data_and_corpus_exclude_each_other(module: str) -> None:
    base = ["--output", "o"] + (["--model", "m", "--method", "int8"]
                                if module == "compress" else [])
    a = parse(module, [*base, "--data", "prepared"])
    assert a.data == Path("prepared") and a.corpus == "demo"
    assert parse(module, [*base, "--corpus", "demo"]).data is None
    with pytest.raises(OptionError) as err:
        parse(module, [*base, "--corpus", "demo", "--data", "prepared"])
    assert "not allowed with argument" in str(err.value)


def test_shards_written_by_datatrove_read_back_as_the_tokenizer_encodes(
        tmp_path: Path, tokenizer: Any) -> None:
    """The real writer (datatrove's DocumentTokenizer, what prepare runs)
    and this reader agree on the format: ids, index and eos."""
    from datatrove.data import Document
    from datatrove.pipeline.tokens import DocumentTokenizer

    d = tmp_path / "d"
    tokenizer.save_pretrained(str(d / "tokenizer"))
    texts = TEXTS[:40]
    step = DocumentTokenizer(str(d / "train"), tokenizer_name_or_path=str(
        d / "tokenizer/tokenizer.json"), eos_token="</s>", shuffle_documents=False, batch_size=8)
    for _ in step.run(iter([Document(text=t, id=str(i)) for i, t in enumerate(texts)]),
                      rank=0, world_size=1) or ():
        pass
    written = sorted((d / "train").glob("*.ds"))
    assert [p.name for p in written] == ["00000_unshuffled.ds"]
    tokens = written[0].stat().st_size // 2
    manifest = {"format": shards.FORMAT, "token_dtype": "uint16", "vocab_size": len(tokenizer),
                "eos_id": tokenizer.eos_token_id,
                "shards": [{"split": "train", "file": "train/00000_unshuffled.ds",
                            "documents": len(texts), "tokens": tokens}]}
    (d / "manifest.json").write_text(json.dumps(manifest))
    p = shards.open_prepared(d)
    expected = [e.ids + [tokenizer.eos_token_id] for e in
                tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert [x.tolist() for x in p.train.iter_documents()] == expected
    assert len(p.heldout) == 0
