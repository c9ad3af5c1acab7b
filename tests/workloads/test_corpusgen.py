"""The offline corpus generator: planted copies at the asked rates, near
copies with a few words changed, unique documents unique under the dedup's
normalisation, reproducible bytes, one clear line for bad arguments."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine.workloads import corpusgen
from engine.workloads.corpusgen import Document, Plan, normalise, read_documents, score
from engine.workloads.quality import normalise as prepare_normalise


def _generate(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "engine.workloads.corpusgen", "--output",
                           str(out), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "truth.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, Document]]:
    out = tmp_path_factory.mktemp("corpus") / "c"
    truth = _generate(out, "--documents", "400", "--files", "3", "--seed", "7",
                      "--compress", "gz")
    return out, truth, {d.id: d for d in read_documents(out)}


def _shingles(text: str) -> set[str]:
    words = corpusgen.dedup_words(text)
    return {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}


def test_rates_files_and_truth(corpus: tuple[Path, dict, dict[str, Document]]) -> None:
    out, truth, docs = corpus
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "part-00000.jsonl.gz", "part-00001.jsonl.gz", "part-00002.jsonl.gz"]
    assert len(docs) == truth["documents"] == 400
    assert len(truth["exact"]) == 40 and len(truth["near"]) == 20
    originals = list(truth["exact"].values()) + list(truth["near"].values())
    assert len(set(originals)) == 60  # one copy per original
    assert len(truth["unique"]) == 400 - 60 - 60
    every = set(truth["unique"]) | set(originals) | set(truth["exact"]) | set(truth["near"])
    assert every == set(docs)
    assert set(truth["sources"]) <= {*corpusgen.SOURCES, "mix"}
    assert {"docstring", "code"} <= set(truth["sources"])
    # shuffled: copies are not all at the end
    ids = sorted(docs)
    assert any(i in truth["exact"] for i in ids[:200])


def test_exact_and_near_copies(corpus: tuple[Path, dict, dict[str, Document]]) -> None:
    _, truth, docs = corpus
    for copy, orig in truth["exact"].items():
        assert docs[copy].text == docs[orig].text
    for copy, orig in truth["near"].items():
        a, b = docs[orig].text, docs[copy].text
        assert len(a.split()) >= corpusgen.NEAR_MIN_WORDS
        old, new = corpusgen._WORD.findall(a), corpusgen._WORD.findall(b)
        assert len(old) == len(new)
        changed = sum(x.lower() != y.lower() for x, y in zip(old, new, strict=True))
        assert 3 <= changed <= 5, (copy, changed)
        assert corpusgen.dedup_words(a) != corpusgen.dedup_words(b)
        jaccard = len(_shingles(a) & _shingles(b)) / len(_shingles(a) | _shingles(b))
        assert jaccard >= 0.75


def test_base_documents_unique_under_the_dedup_normalisation(
        corpus: tuple[Path, dict, dict[str, Document]]) -> None:
    _, truth, docs = corpus
    base = [*truth["unique"], *truth["exact"].values(), *truth["near"].values()]
    passes = corpusgen.passes_prepare_rules()
    for doc in docs.values():
        assert normalise(doc.text) == doc.text
        assert prepare_normalise(doc.text) == doc.text  # prepare leaves it as it is
        assert len(doc.text.split()) >= corpusgen.MIN_WORDS
        assert passes(doc.text)
    simplified = [" ".join(corpusgen.dedup_words(docs[i].text)) for i in base]
    assert len(set(simplified)) == len(base)
    shingles = [_shingles(docs[i].text) for i in base]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(shingles, 2))
    assert worst < 0.5


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path: Path) -> None:
    a = _generate(tmp_path / "a", "--documents", "120", "--files", "2", "--seed", "3")
    b = _generate(tmp_path / "b", "--documents", "120", "--files", "2", "--seed", "3",
                  "--compress", "zst")
    c = _generate(tmp_path / "c", "--documents", "120", "--files", "2", "--seed", "4")
    assert a["exact"] == b["exact"] and a["near"] == b["near"]
    assert ([(d.id, d.text) for d in read_documents(tmp_path / "a")]
            == [(d.id, d.text) for d in read_documents(tmp_path / "b")])
    assert (tmp_path / "b" / "data" / "part-00001.jsonl.zst").is_file()
    assert ({d.text for d in read_documents(tmp_path / "a")}
            != {d.text for d in read_documents(tmp_path / "c")})
    assert a["exact"] != c["exact"] or a["near"] != c["near"]


@pytest.mark.parametrize("args, named", [
    (["--documents", "100", "--exact-rate", "0.4", "--near-rate", "0.2"], "--exact-rate 0.4"),
    (["--documents", "0"], "--documents 0"),
    (["--documents", "10", "--files", "0"], "--files 0"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], named: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine.workloads.corpusgen", "--output",
                           str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]
    assert not (tmp_path / "x" / "truth.json").exists()


def test_mixtures_fill_in_when_the_machine_text_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [d for _, d in itertools.islice(corpusgen.raw_documents(random.Random(1)), 300)
               if len(d.split()) >= corpusgen.MIN_WORDS][:60]
    monkeypatch.setattr(corpusgen, "raw_documents", lambda rng: iter(("doc", t) for t in sources))
    docs = corpusgen.unique_documents(90, random.Random(2), 2)
    assert len(docs) == 90
    assert sum(1 for s, _ in docs if s == "mix") >= 30
    shingles = [_shingles(t) for _, t in docs]
    assert max(len(a & b) / len(a | b) for a, b in itertools.combinations(shingles, 2)) < 0.5
    with pytest.raises(corpusgen.WorkloadError, match="lower --documents"):
        monkeypatch.setattr(corpusgen, "raw_documents",
                            lambda rng: iter(("doc", t) for t in sources[:5]))
        corpusgen.unique_documents(20, random.Random(2), 2)


def test_score_counts_pairs_and_losses() -> None:
    truth = {"unique": ["u1", "u2"], "exact": {"e1": "o1", "e2": "o2"},
             "near": {"n1": "p1", "n2": "p2", "n3": "p3"}}
    survivors = {"u1": 1, "u2": 0,          # u2 lost
                 "o1": 1, "o2": 2,          # e1 removed, e2 kept (text twice)
                 "p1": 1, "n1": 0,          # n1 removed
                 "p2": 1, "n2": 1,          # n2 kept
                 "p3": 0, "n3": 0}          # both lost: one unique document lost
    s = score(truth, survivors)
    assert (s.exact_planted, s.exact_removed, s.near_planted, s.near_removed) == (2, 1, 3, 1)
    assert s.unique_documents == 7 and s.unique_removed == 2
    assert s.recall == pytest.approx(2 / 5)


def test_plan_rounds_rates_of_the_documents_written() -> None:
    plan = Plan(1001, 0.10, 0.05)
    assert (plan.exact, plan.near, plan.base) == (100, 50, 851)
