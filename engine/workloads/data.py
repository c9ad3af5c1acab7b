"""Corpora, tokenizers and batches: from text on disk to tensors.

A corpus is ``demo`` (docstrings of Python's standard library, read with
`ast`, so it needs no network and no import of those modules), a ``.txt``
file (documents separated by blank lines), a ``.jsonl`` file (one object per
line with a ``text`` field), or a folder of such files. Documents are split
into train and held-out parts by a hash of their text, so the split never
depends on file order or on the number of workers. Causal-LM data is the
tokenized documents, each followed by end-of-sequence, concatenated and cut
into fixed-length blocks. Classification data is JSONL with ``text`` and
``label`` (``demo``: docstrings labelled by the standard-library package they
come from).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.workloads.common import WorkloadError

DEMO = "demo"
DEMO_PACKAGES = ("asyncio", "email", "unittest", "xml")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>"}
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
              "__pycache__", "turtledemo", "ensurepip"}
_MIN_DOC_CHARS = 40


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmconsole"


# ---------------------------------------------------------------- corpora
def _stdlib_docstrings() -> list[tuple[str, str]]:
    """(top-level package or module, docstring) for the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in _SKIP_DIRS for part in rel):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        top = rel[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= _MIN_DOC_CHARS:
                    out.append((top, doc))
    return out


def _write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def demo_corpus_file() -> Path:
    """The demo corpus as JSONL (text, package), built once and cached."""
    import sys

    path = cache_dir() / f"demo-stdlib-py{sys.version_info[0]}{sys.version_info[1]}.jsonl"
    if not path.exists():
        rows = ({"text": doc, "package": pkg} for pkg, doc in _stdlib_docstrings())
        _write_jsonl_atomic(path, rows)
    return path


def _read_jsonl(path: Path, need_label: bool = False) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise WorkloadError(f"{path}: line {number}: not JSON ({exc.msg}); "
                                        'expected one object per line, e.g. {"text": "..."}'
                                        ) from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise WorkloadError(f'{path}: line {number}: no "text" string field; '
                                        'expected {"text": "..."}')
                if need_label and not isinstance(row.get("label"), str | int):
                    raise WorkloadError(f'{path}: line {number}: no "label" field; expected '
                                        '{"text": "...", "label": "name or integer"}')
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read ({exc})") from None
    return rows


def _read_text(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix in (".txt", ".jsonl", ".md"))
    return [source]


def load_texts(source: str) -> list[str]:
    """The documents of a corpus (see the module docstring)."""
    if source == DEMO:
        return [row["text"] for row in _read_jsonl(demo_corpus_file())]
    path = Path(source).expanduser()
    if not path.exists():
        raise WorkloadError(f"corpus {source}: no such file or folder; expected "
                            "'demo', a .txt or .jsonl file, or a folder of them")
    texts: list[str] = []
    for f in _files(path):
        texts += [r["text"] for r in _read_jsonl(f)] if f.suffix == ".jsonl" else _read_text(f)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise WorkloadError(f"corpus {source}: no text found; expected .txt, .md or .jsonl "
                            "files with some text in them")
    return texts


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[int]
    names: list[str]  # label index -> name


def load_labelled(source: str) -> Labelled:
    """Classification data: JSONL with ``text`` and ``label`` (``demo``: the
    package a standard-library docstring comes from)."""
    if source == DEMO:
        rows = [{"text": r["text"], "label": r["package"]}
                for r in _read_jsonl(demo_corpus_file()) if r.get("package") in DEMO_PACKAGES]
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WorkloadError(f"labelled data {source}: no such file; expected 'demo' or a "
                                '.jsonl file of {"text": ..., "label": ...}')
        rows = _read_jsonl(path, need_label=True)
    names = sorted({str(r["label"]) for r in rows})
    if len(names) < 2:
        raise WorkloadError(f"labelled data {source}: {len(names)} distinct label(s); "
                            "a classifier needs at least 2")
    index = {n: i for i, n in enumerate(names)}
    return Labelled([r["text"] for r in rows], [index[str(r["label"])] for r in rows], names)


def is_held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out part: a hash of its text,
    so the split is the same on every worker and in every run."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / float(1 << 64) < fraction


def split_indices(texts: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices); each part gets at least one item."""
    held = [i for i, t in enumerate(texts) if is_held_out(t, fraction)]
    train = [i for i, t in enumerate(texts) if not is_held_out(t, fraction)]
    if not held and len(train) > 1:
        held.append(train.pop())
    if not train:
        raise WorkloadError(f"the corpus has {len(texts)} document(s); too few to split "
                            "into train and held-out parts")
    return train, held


# ---------------------------------------------------------------- tokenizers
def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise WorkloadError(f"{folder}: no usable tokenizer ({str(exc).splitlines()[0]}); "
                            "expected tokenizer.json or the files of a saved tokenizer") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


# ---------------------------------------------------------------- tensors
def pack_blocks(tokenizer: Any, texts: Sequence[str], block_size: int) -> Any:
    """The documents, each ended by end-of-sequence, concatenated and cut
    into rows of `block_size` tokens (the tail that does not fill a row is
    dropped). A LongTensor of shape (rows, block_size)."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer itself: batches in parallel
        encoded = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for row in encoded:
        ids.extend(row)
        if eos is not None:
            ids.append(eos)
    rows = len(ids) // block_size
    if rows == 0:
        raise WorkloadError(f"the text gives {len(ids)} tokens, fewer than one block of "
                            f"{block_size}; use more text or a smaller --block-size")
    return torch.tensor(ids[: rows * block_size], dtype=torch.long).view(rows, block_size)


def encode_labelled(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), right-padded to `max_length`."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length",
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
