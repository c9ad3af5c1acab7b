"""The pieces of prepare on their own, in this process: normalisation, each
quality rule, the LSH shape, the readers' bad-input accounting, the parser."""

from __future__ import annotations

import gzip
import json
import random
import string
from pathlib import Path

import pytest

from engine.workloads import options
from engine.workloads.common import WorkloadError
from engine.workloads.prepare import part_ranks
from engine.workloads.prepare_dedup import detection, lsh_shape
from engine.workloads.prepare_io import read_records, resolve_inputs, shard
from engine.workloads.quality import REASONS, Rules, make_filters, normalise, verdict


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
                    for _ in range(n))


def test_normalise_nfc_whitespace_and_idempotent() -> None:
    raw = "  Cafe\u0301\t\tau  lait \r\n\r\n\r\n\n second\u00a0 line  \rthird "
    out = normalise(raw)
    assert out == "Caf\u00e9 au lait\n\nsecond line\nthird"
    assert normalise(out) == out


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("alpha beta gamma", "min_words"),
    (" ".join(["word"] * 300), "max_words"),
    (" ".join(["ab"] * 30), "mean_word_length"),
    (" ".join(["abcdefghijklmnop"] * 30), "mean_word_length"),
    ("# heading " * 20, "symbol_ratio"),
    ("\n".join(f"- item number{i} here" for i in range(30)), "bullet_lines"),
    ("\n".join(f"wait for it{i} with many more words here ..." if i % 2
               else f"plain line{i} words" for i in range(30)), "ellipsis_lines"),
    (" ".join(["1234", "5678", "word"] * 20), "alpha_ratio"),
    ("\n".join(["the same line again"] * 10 + [f"other line{i} here" for i in range(5)]),
     "duplicate_lines"),
], ids=lambda v: v if v in REASONS.values() else "")
def test_each_rule_removes_its_document(text: str, reason: str) -> None:
    rules = Rules(min_words=20, max_words=200)
    assert verdict(normalise(text), make_filters(rules)) == reason


def test_a_good_document_passes_and_zero_turns_a_rule_off() -> None:
    rng = random.Random(3)
    good = words(rng, 60)
    assert verdict(good, make_filters(Rules())) is None
    short = "alpha beta gamma delta"
    assert verdict(short, make_filters(Rules())) == "min_words"
    assert verdict(short, make_filters(Rules(min_words=0, min_mean_word_length=0))) is None
    assert verdict(good, make_filters(Rules(min_stop_words=2))) == "stop_words"


def test_lsh_shape_follows_the_threshold() -> None:
    bands, rows = lsh_shape(0.7)
    assert bands * rows <= 128
    assert detection(0.9, bands, rows) > 0.99 and detection(0.3, bands, rows) < 0.01
    low, high = lsh_shape(0.5), lsh_shape(0.9)
    # a higher threshold finds fewer pairs at every similarity in between
    assert detection(0.7, *high) < detection(0.7, bands, rows) < detection(0.7, *low)


def test_shards_and_parts_cover_every_index_once() -> None:
    for count in (0, 1, 5, 17):
        for tasks in (1, 3, 8):
            got = [i for r in range(tasks) for i in shard(count, r, tasks)]
            assert got == list(range(count))
    for tasks in (1, 2, 8, 14):
        for parts in (1, 2, 3):
            got = [r for k in range(parts) for r in part_ranks(tasks, k, parts)]
            assert got == list(range(tasks))


def _records(path: Path, field: str = "text") -> list[tuple[int, str | None, str | None]]:
    return [(line, text, problem) for line, text, problem, _ in read_records(path, field)]


def test_jsonl_bad_lines_are_counted_with_their_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"text": "one"}\n\n{not json\n{"body": "no text"}\n{"text": 5}\n'
                  b'{"text": "bad \xff byte"}\n[1, 2]\n{"text": "two"}\n')
    assert _records(f) == [(1, "one", None), (3, None, "bad_json"), (4, None, "missing_field"),
                           (5, None, "missing_field"), (6, None, "not_utf8"),
                           (7, None, "missing_field"), (8, "two", None)]
    assert _records(f, "body") == [(1, None, "missing_field"), (3, None, "bad_json"),
                                   (4, "no text", None), (5, None, "missing_field"),
                                   (6, None, "not_utf8"), (7, None, "missing_field"),
                                   (8, None, "missing_field")]


def test_txt_documents_and_compressed_files(tmp_path: Path) -> None:
    import zstandard

    body = b"first doc\nline two\n\n\nsecond \xfe doc\n\nthird doc\n"
    (tmp_path / "a.txt").write_bytes(body)
    expected = [(1, "first doc\nline two\n", None), (5, None, "not_utf8"),
                (7, "third doc\n", None)]
    assert _records(tmp_path / "a.txt") == expected
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(body))
    assert _records(tmp_path / "b.txt.gz") == expected
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        b'{"text": "z1"}\n{"text": "z2"}\n'))
    assert _records(tmp_path / "c.jsonl.zst") == [(1, "z1", None), (2, "z2", None)]


def test_a_corrupt_gzip_keeps_what_came_before_and_counts_once(tmp_path: Path) -> None:
    rows = b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(400))
    data = gzip.compress(rows)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    got = _records(tmp_path / "cut.jsonl.gz")
    assert got[-1][2] == "corrupt_file" and got[-1][1] is None
    good = [r for r in got if r[2] is None]
    assert 0 < len(good) < 400 and got[-1][0] == good[-1][0] + 1
    (tmp_path / "junk.jsonl.gz").write_bytes(b"this is not gzip at all")
    assert _records(tmp_path / "junk.jsonl.gz") == [(1, None, "corrupt_file")]


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "t.parquet")
    assert _records(tmp_path / "t.parquet") == [(1, "a", None), (2, None, "missing_field"),
                                                (3, "c", None)]
    assert _records(tmp_path / "t.parquet", "body") == [(1, None, "missing_field")]


def test_resolve_inputs_folders_globs_order_and_errors(tmp_path: Path) -> None:
    for name in ("b/2.jsonl", "b/1.txt.gz", "a.parquet", "b/skip.csv", "b/.hidden.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    got = resolve_inputs([str(tmp_path / "b"), str(tmp_path / "*.parquet"),
                          str(tmp_path / "b" / "2.jsonl")])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["b/1.txt.gz", "b/2.jsonl",
                                                                 "a.parquet"]
    with pytest.raises(WorkloadError, match="no such file"):
        resolve_inputs([str(tmp_path / "nope")])
    with pytest.raises(WorkloadError, match="not a file prepare reads"):
        resolve_inputs([str(tmp_path / "b" / "skip.csv")])
    (tmp_path / "z.parquet.gz").write_text("x")
    with pytest.raises(WorkloadError, match="compressed parquet"):
        resolve_inputs([str(tmp_path / "z.parquet.gz")])


def test_demo_is_the_demo_corpus_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.workloads import data

    demo = tmp_path / "demo.jsonl"
    demo.write_text('{"text": "x"}\n')
    monkeypatch.setattr(data, "demo_corpus_file", lambda: demo)
    assert resolve_inputs(["demo"]) == [demo.resolve()]


def test_the_parser_is_registered_and_checks_ranges() -> None:
    assert "prepare" in options.PARSERS and "--near-threshold" in options.options("prepare")
    ns = options.parse("prepare", ["--input", "a", "--input", "b", "--output", "o",
                                   "--part", "1/2"])
    assert ns.input == ["a", "b"] and ns.part == (1, 2) and ns.tasks == 8
    for bad in (["--part", "2/2"], ["--part", "x"], ["--near-threshold", "1.5"],
                ["--max-bad-fraction", "-1"], ["--dedup", "fuzzy"], ["--tasks", "0"]):
        with pytest.raises(options.OptionError):
            options.parse("prepare", ["--input", "a", "--output", "o", *bad])
