"""A prepare job's ``manifest.json`` (``format`` "llmconsole-prepare/1") as a
summary a user reads: documents in and out and the share kept, what each
quality rule and each dedup removed, bad input with its first file:line
entries, tokens of the train and held-out splits, shards, the token dtype
and the tokenizer.

Pure: a manifest dict in, (label, value) rows or text lines out, with the
standard library only; `read_manifest` alone touches the disk (one file).
Keys a manifest lacks are left out, never guessed; values of the wrong type
show as they are, so a damaged manifest still reads.

Used by `llmconsole show ID` (lines) and the console's Results tab (rows).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_PREFIX = "llmconsole-prepare/"
#: How many bad-input entries the summary lists (the manifest keeps 20).
BAD_SHOWN = 5
#: Where `summary_lines` wraps a list of words (a terminal's 100 columns).
LINE_WIDTH = 100

Row = tuple[str, str]


def is_manifest(data: Mapping[str, Any]) -> bool:
    """True for a prepare job's manifest (by its ``format``)."""
    return str(data.get("format", "")).startswith(FORMAT_PREFIX)


def read_manifest(folder: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(the manifest of an output folder, or None; a line saying why not).
    Its absence is not an error: the prepare job writes it last."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no manifest yet: {path} appears when the prepare job finishes"
    except (OSError, ValueError) as exc:
        return None, f"{path}: not readable ({exc}); run the prepare job again"
    if not isinstance(data, dict) or not is_manifest(data):
        return None, (f"{path}: not a prepare manifest (no format {FORMAT_PREFIX}N); "
                      "run the prepare job again")
    return data, str(path)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _count(value: Any) -> str:
    n = _int(value)
    return "-" if n is None else f"{n:,}"


def _share(part: Any, whole: Any) -> str:
    p, w = _int(part), _int(whole)
    if p is None or not w:
        return ""
    share = 100 * p / w
    return " (<0.1%)" if 0 < share < 0.05 else f" ({share:.1f}%)"


def _label(name: str) -> str:
    """A rule's or a problem's name in words: "min_words" -> "min words";
    a problem written as a sentence stays as it is."""
    return name if " " in name else name.replace("_", " ").replace("-", " ")


def headline(manifest: Mapping[str, Any]) -> str:
    """One line: "kept 45,000 of 50,000 documents (90.0%), 12,345,678 tokens, in 12.3 s"."""
    docs_in, docs_out = manifest.get("documents_in"), manifest.get("documents_out")
    tokens = _mapping(manifest.get("tokens"))
    total = sum(v for v in tokens.values() if _int(v) is not None) if tokens else None
    parts = [f"kept {_count(docs_out)} of {_count(docs_in)} documents{_share(docs_out, docs_in)}"]
    if total is not None:
        parts.append(f"{total:,} tokens")
    seconds = manifest.get("seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        parts.append(f"in {seconds:.1f} s")
    return "prepared data: " + ", ".join(parts)


def summary_rows(manifest: Mapping[str, Any]) -> list[Row]:
    """(label, value) rows, in reading order: documents, removed by each
    rule (largest first; those that removed nothing named on one row), bad
    input and its first entries (problem, file:line), tokens, shards, dtype,
    vocabulary, tokenizer, inputs."""
    rows: list[Row] = []
    docs_in, docs_out = manifest.get("documents_in"), manifest.get("documents_out")
    if "documents_in" in manifest:
        rows.append(("documents in", _count(docs_in)))
    if "documents_out" in manifest:
        rows.append(("documents kept", _count(docs_out) + _share(docs_out, docs_in)))
    removed = manifest.get("removed")
    if isinstance(removed, Mapping):
        total = sum(v for v in removed.values() if _int(v) is not None)
        rows.append(("removed", f"{total:,}{_share(total, docs_in)}"))
        ordered = sorted(removed.items(), key=lambda kv: (-(_int(kv[1]) or 0), str(kv[0])))
        rows += [(f"  {_label(str(rule))}", _count(n) + _share(n, docs_in))
                 for rule, n in ordered if _int(n) != 0]
        idle = [_label(str(rule)) for rule, n in ordered if _int(n) == 0]
        if idle:  # the rules that ran and removed nothing, on one row
            rows.append(("  nothing by", ", ".join(idle)))
    bad_total = manifest.get("bad_total")
    bad: list[Any] = _list(manifest.get("bad"))
    if bad_total is not None or bad:
        rows.append(("bad input", _count(bad_total if bad_total is not None else len(bad))))
        for entry in bad[:BAD_SHOWN]:
            if isinstance(entry, Mapping):  # the path last: it may be long
                rows.append((f"  {_label(str(entry.get('problem', '?')))}",
                             f"{entry.get('file', '?')}:{entry.get('line', '?')}"))
        more = (_int(bad_total) or len(bad)) - min(len(bad), BAD_SHOWN)
        if more > 0:
            rows.append(("  ...", f"{more:,} more (manifest.json lists the first {len(bad)})"))
    documents: Mapping[str, Any] = _mapping(manifest.get("documents"))
    tokens = manifest.get("tokens")
    if isinstance(tokens, Mapping):
        for split, label in (("train", "train"), ("heldout", "held-out")):
            if split in tokens:
                docs = f" in {_count(documents[split])} documents" if split in documents else ""
                rows.append((f"tokens {label}", _count(tokens[split]) + docs))
    shards = manifest.get("shards")
    if isinstance(shards, list):
        by_split: dict[str, int] = {}
        for s in shards:
            if isinstance(s, Mapping):
                by_split[str(s.get("split", "?"))] = by_split.get(str(s.get("split", "?")), 0) + 1
        order = {"train": 0, "heldout": 1}
        split_text = ", ".join(f"{n} {'held-out' if split == 'heldout' else split}"
                               for split, n in sorted(by_split.items(),
                                                      key=lambda kv: (order.get(kv[0], 2), kv[0])))
        rows.append(("shards", f"{len(shards)}" + (f" ({split_text})" if split_text else "")))
    if "token_dtype" in manifest:
        rows.append(("token dtype", str(manifest["token_dtype"])))
    if "vocab_size" in manifest:
        eos = f", eos id {manifest['eos_id']}" if "eos_id" in manifest else ""
        rows.append(("vocabulary", _count(manifest["vocab_size"]) + eos))
    tok = manifest.get("tokenizer")
    if isinstance(tok, Mapping):
        sha = str(tok.get("sha256") or "")
        rows.append(("tokenizer", str(tok.get("source", "-"))
                     + (f" (sha256 {sha[:12]})" if sha else "")))
    inputs = manifest.get("inputs")
    if isinstance(inputs, list):
        size = sum(_int(i.get("bytes")) or 0 for i in inputs if isinstance(i, Mapping))
        rows.append(("inputs", f"{len(inputs)} file(s), {size / 1e6:,.1f} MB"))
    return rows


def summary_lines(manifest: Mapping[str, Any], indent: str = "  ",
                  width: int = LINE_WIDTH) -> list[str]:
    """The headline, then the rows aligned in two columns; a list of words
    (the rules that removed nothing) wrapped at `width`, under its column."""
    rows = summary_rows(manifest)
    labels = max((len(label) for label, _ in rows), default=0)
    column = len(indent) + labels + 2
    lines = [headline(manifest)]
    for label, value in rows:
        parts = _wrap_list(value, max(20, width - column)) if ", " in value else [value]
        lines.append(f"{indent}{label:<{labels}}  {parts[0]}".rstrip())
        lines += [" " * column + part for part in parts[1:]]
    return lines


def _wrap_list(value: str, width: int) -> list[str]:
    """"a, b, c" in lines of at most `width` (an item is never cut)."""
    lines: list[str] = []
    for item in value.split(", "):
        if lines and len(lines[-1]) + 2 + len(item) < width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines
