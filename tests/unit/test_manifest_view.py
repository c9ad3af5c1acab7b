"""A prepare job's manifest.json as the summary `llmconsole show` and the
Results tab print: counts and shares, each rule's removals, bad input by
file and line, tokens per split, shards, tokenizer; damaged or partial
manifests still read, and a folder without one says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.workloads import manifest_view as mv


def manifest(**changes: Any) -> dict[str, Any]:
    """A manifest as the contract's prepare job writes it."""
    data: dict[str, Any] = {
        "format": "llmconsole-prepare/1", "documents_in": 50_000, "documents_out": 44_120,
        "removed": {"min_words": 2_100, "symbol_ratio": 380, "exact_duplicate": 2_500,
                    "near_duplicate": 890, "bad_json": 10},
        "bad": [{"file": f"data/part-{i}.jsonl", "line": 10 + i, "problem": "invalid JSON"}
                for i in range(8)],
        "bad_total": 10,
        "tokens": {"train": 11_900_000, "heldout": 610_000},
        "documents": {"train": 41_900, "heldout": 2_220},
        "shards": [{"split": "train", "file": "train/00000.ds", "documents": 20_000,
                    "tokens": 6_000_000},
                   {"split": "train", "file": "train/00001.ds", "documents": 21_900,
                    "tokens": 5_900_000},
                   {"split": "heldout", "file": "heldout/00000.ds", "documents": 2_220,
                    "tokens": 610_000}],
        "token_dtype": "uint16", "vocab_size": 8_192, "eos_id": 0,
        "tokenizer": {"source": "trained", "sha256": "ab12cd34ef56" + "0" * 52},
        "inputs": [{"path": "data/a.jsonl", "bytes": 40_000_000, "sha256": "x"},
                   {"path": "data/b.jsonl.gz", "bytes": 2_500_000, "sha256": "y"}],
        "config": {"dedup": "both"}, "seconds": 61.23,
    }
    data.update(changes)
    return data


def test_rows_say_kept_removed_by_each_rule_tokens_and_shards() -> None:
    m = manifest()
    rows = dict(mv.summary_rows(m))
    assert rows["documents in"] == "50,000"
    assert rows["documents kept"] == "44,120 (88.2%)"
    removed = sum(m["removed"].values())
    assert rows["removed"] == f"{removed:,} ({100 * removed / 50_000:.1f}%)"
    assert rows["  exact duplicate"] == "2,500 (5.0%)"
    assert rows["  near duplicate"] == "890 (1.8%)"
    assert rows["  min words"] == "2,100 (4.2%)"
    assert rows["  bad json"] == "10 (<0.1%)"  # a share too small to round to 0.0%
    assert rows["tokens train"] == "11,900,000 in 41,900 documents"
    assert rows["tokens held-out"] == "610,000 in 2,220 documents"
    assert rows["shards"] == "3 (2 train, 1 held-out)"
    assert rows["token dtype"] == "uint16"
    assert rows["vocabulary"] == "8,192, eos id 0"
    assert rows["tokenizer"] == "trained (sha256 ab12cd34ef56)"
    assert rows["inputs"] == "2 file(s), 42.5 MB"


def test_rules_are_listed_largest_first_under_removed_and_idle_ones_on_one_row() -> None:
    m = manifest()
    m["removed"].update({"stop_words": 0, "alpha_ratio": 0})
    rows = mv.summary_rows(m)
    labels = [label for label, _ in rows]
    start = labels.index("removed") + 1
    assert labels[start:start + 6] == ["  exact duplicate", "  min words", "  near duplicate",
                                       "  symbol ratio", "  bad json", "  nothing by"]
    assert rows[start + 5][1] == "alpha ratio, stop words"
    assert dict(rows)["removed"] == "5,880 (11.8%)"  # the idle rules add nothing


def test_bad_input_shows_its_first_entries_by_file_and_line_and_how_many_more() -> None:
    rows = mv.summary_rows(manifest())
    labels = [label for label, _ in rows]
    at = labels.index("bad input")
    assert rows[at] == ("bad input", "10")
    shown = rows[at + 1:at + 1 + mv.BAD_SHOWN]
    assert shown == [("  invalid JSON", f"data/part-{i}.jsonl:{10 + i}")
                     for i in range(mv.BAD_SHOWN)]
    assert rows[at + 1 + mv.BAD_SHOWN] == (
        "  ...", f"{10 - mv.BAD_SHOWN} more (manifest.json lists the first 8)")


def test_no_bad_input_means_no_entries_and_none_more() -> None:
    rows = mv.summary_rows(manifest(bad=[], bad_total=0))
    labels = [label for label, _ in rows]
    assert ("bad input", "0") in rows
    assert "  ..." not in labels and labels[labels.index("bad input") + 1] == "tokens train"
    named = mv.summary_rows(manifest(bad=[{"file": "x.txt", "line": 3, "problem": "not_utf8"}],
                                     bad_total=1))
    assert ("  not utf8", "x.txt:3") in named  # a problem's name in words


def test_headline_and_lines_are_aligned_for_the_cli() -> None:
    m = manifest()
    lines = mv.summary_lines(m)
    assert lines[0] == ("prepared data: kept 44,120 of 50,000 documents (88.2%), "
                        "12,510,000 tokens, in 61.2 s")
    rows = mv.summary_rows(m)
    column = 2 + max(len(label) for label, _ in rows) + 2  # the values start in one column
    assert len(lines) == 1 + len(rows)
    for line, (label, value) in zip(lines[1:], rows, strict=True):
        assert line[:column].rstrip() == "  " + label and line[column:] == value


def test_a_long_list_of_idle_rules_wraps_under_its_column_whole() -> None:
    idle = [f"rule_number_{i}" for i in range(12)]
    m = manifest(removed={"exact_duplicate": 5, **{name: 0 for name in idle}})
    lines = mv.summary_lines(m, width=60)
    at = next(i for i, line in enumerate(lines) if "nothing by" in line)
    column = lines[at].index("rule number 0")
    wrapped = [lines[at][column:]]
    for line in lines[at + 1:]:
        if line[:column].strip():
            break
        wrapped.append(line[column:])
    assert len(wrapped) > 1 and all(len(" " * column + w) <= 60 for w in wrapped)
    assert " ".join(wrapped) == ", ".join(sorted(n.replace("_", " ") for n in idle))


def test_a_partial_or_damaged_manifest_still_reads() -> None:
    partial = {"format": "llmconsole-prepare/1", "documents_in": 3, "documents_out": "x",
               "removed": {"min_words": None}, "bad": ["not an entry"], "tokens": []}
    rows = dict(mv.summary_rows(partial))
    assert rows["documents in"] == "3"
    assert rows["documents kept"] == "-"
    assert rows["removed"] == "0 (0.0%)" and rows["  min words"] == "-"
    assert "shards" not in rows and "tokenizer" not in rows and "tokens train" not in rows
    assert mv.headline(partial) == "prepared data: kept - of 3 documents"


def test_read_manifest_says_why_a_folder_has_none(tmp_path: Path) -> None:
    data, why = mv.read_manifest(tmp_path)
    assert data is None and why == (f"no manifest yet: {tmp_path / 'manifest.json'} appears "
                                    "when the prepare job finishes")
    (tmp_path / "manifest.json").write_text("{not json")
    data, why = mv.read_manifest(tmp_path)
    assert data is None and "not readable" in why and "run the prepare job again" in why
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "train"}))
    data, why = mv.read_manifest(tmp_path)
    assert data is None and "not a prepare manifest" in why
    (tmp_path / "manifest.json").write_text(json.dumps(manifest()))
    data, where = mv.read_manifest(tmp_path)
    assert data == manifest() and where == str(tmp_path / "manifest.json")
    assert mv.is_manifest(data) and not mv.is_manifest({"format": "other/1"})
