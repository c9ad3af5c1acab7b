"""A large offline corpus with planted duplicates at known rates, and the score
of a prepare output against it: for tests and benchmarks, since no data set
can be downloaded.

    python -m engine.workloads.corpusgen --output DIR --documents N
        [--exact-rate 0.10] [--near-rate 0.05] [--files 8] [--seed 1234]
        [--compress none|gz|zst] [--changed-words 3-5]

Contract:

- Text comes from this machine only: /usr/share/doc (changelogs, READMEs,
  NEWS), Python's standard library (docstrings, and source cut into chunks)
  and man pages (de-roffed), taken in turn, paragraph-aligned chunks of a few
  KB. When that text runs out, further documents are mixtures of paragraphs of
  the documents already taken. The corpus therefore depends on the machine and
  the seed; on one machine the same arguments give the same bytes.
- Every document is a fixed point of `normalise` (NFC, one space between
  words, no blank-line runs), so a prepare step that normalises whitespace and
  Unicode leaves it unchanged and its tokens are the tokenizer's encoding of
  the text written here.
- N documents are written: round(N * exact_rate) exact copies,
  round(N * near_rate) near copies and the rest unique documents ("base"). A
  planted copy's original is a base document; each base document has at most
  one copy. Base documents are unique under datatrove's MinHash text
  normalisation (`simplify_text`: lower case, no punctuation, digits as 0),
  which implies every weaker one, and near-unique: no two have an estimated
  Jaccard similarity of their word 5-grams of 0.3 or more. A near copy is a
  base document of at least 400 words (`--near-min-words`) with a few
  alphabetic words (default 3 to 5) replaced by other words of the corpus.
  Why 400: a changed word changes up to 5 shingles, so 3-5 changes in 200
  words leave a Jaccard similarity of 0.79-0.87, where prepare's LSH for its
  default --near-threshold 0.8 (9 bands x 13 rows) finds 93 % of the pairs;
  in 400 words, 0.86-0.93 and 98.5 %.
- Every document (copies too) passes prepare's quality rules at their
  defaults (`engine.workloads.quality`), unless ``--keep-low-quality``: so a
  prepare with its default rules removes only the planted copies, and any
  other document missing from its output is a dedup false positive.
- DIR/data/part-00000.jsonl[.gz|.zst] ... (K files, documents shuffled)
  hold {"id", "text", "source"}: the input of a prepare (``--input
  DIR/data``); DIR/truth.json, written last and atomically, says which
  documents are unique and which are exact or near copies of which (outside
  data/, as prepare reads .json files too).
- `score` reads a prepare output folder (see engine/workloads/prepare.py and
  the shard format in docs/DESIGN.md) and counts the planted copies removed and
  the unique documents lost.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import re
import sysconfig
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import xxhash
from datatrove.utils.text import simplify_text

from engine.workloads.common import WorkloadError, run_main, write_json_atomic

FORMAT = "llmconsole-corpusgen/1"
TRUTH = "truth.json"
DATA = "data"
MIN_WORDS = 60              # a base document has at least this many words ...
MIN_CHARS = 400             # ... and characters
NEAR_MIN_WORDS = 400        # a near copy's original has at least this many words (see below)
SHINGLE = 5                 # word n-grams, as datatrove's MinhashConfig
PERMUTATIONS = 64           # MinHash signature length of the near-uniqueness check
BAND_ROWS = 2               # 32 bands of 2 rows: pairs at Jaccard 0.3 are found 95 % of the time
NEAR_UNIQUE_BELOW = 0.3     # base documents estimated this similar or more are left out
MIX_PARAGRAPHS = (4, 9)     # a mixture document draws this many paragraphs (range)
MAX_MIX_TRIES = 20          # mixtures tried per missing document before giving up
SOURCES = ("doc", "docstring", "code", "man")
COMPRESSIONS = ("none", "gz", "zst")
_WORD = re.compile(r"\b[A-Za-z]{3,}\b")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # Unicode Cc but newline
_ROFF_ESCAPES = re.compile(r"\\f[BIRP]|\\\(..|\\[-&e]|\\")


# ---------------------------------------------------------------- text
def normalise(text: str) -> str:
    """NFC; control characters other than newline become spaces; each line's
    whitespace runs become one space and the line is stripped; at most one
    blank line between paragraphs; no leading or trailing blank lines."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def dedup_words(text: str) -> list[str]:
    """The words datatrove's MinHash stage hashes: `simplify_text`, then
    whitespace split."""
    return simplify_text(text).split()


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def _chunks(text: str, rng: random.Random, lo: int, hi: int) -> Iterator[str]:
    """Paragraph-aligned chunks of about lo..hi characters of normalised text."""
    buf: list[str] = []
    size, want = 0, rng.randint(lo, hi)
    for para in paragraphs(normalise(text)):
        buf.append(para)
        size += len(para)
        if size >= want:
            yield "\n\n".join(buf)
            buf, size, want = [], 0, rng.randint(lo, hi)
    if size >= lo:
        yield "\n\n".join(buf)


# ---------------------------------------------------------------- sources
def _read_maybe_gz(path: Path) -> str | None:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return data.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, ValueError):
        return None


def _doc_files(rng: random.Random) -> Iterator[str]:
    """Changelogs, READMEs and NEWS of /usr/share/doc (no licences)."""
    root = Path("/usr/share/doc")
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if (not path.is_file() or path.is_symlink() or path.name.startswith("copyright")
                or path.suffix not in ("", ".gz", ".txt", ".md", ".rst")):
            continue
        text = _read_maybe_gz(path)
        if text:
            yield from _chunks(text, rng, 800, 6000)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
            "__pycache__", "turtledemo", "ensurepip"}
    return [p for p in sorted(root.rglob("*.py"))
            if not skip.intersection(p.relative_to(root).parts)]


def _docstrings(rng: random.Random) -> Iterator[str]:
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_CHARS:
                    yield normalise(doc)


def _code(rng: random.Random) -> Iterator[str]:
    for path in _stdlib_files():
        try:
            source = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield from _chunks(source, rng, 1500, 5000)


def _deroff(text: str) -> str:
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith((".\\\"", "'\\\"")):
            continue
        if line.startswith("."):
            line = re.sub(r"^\.\S+\s*", "", line).replace('"', "")
            if not line:
                lines.append("")
                continue
        lines.append(_ROFF_ESCAPES.sub("", line))
    return "\n".join(lines)


def _man_pages(rng: random.Random) -> Iterator[str]:
    """English man pages first, then the translated ones."""
    root = Path("/usr/share/man")
    english = sorted(root.glob("man*/*.gz"))
    others = sorted(p for p in root.glob("*/man*/*.gz"))
    for path in itertools.chain(english, others):
        text = _read_maybe_gz(path)
        if text:
            yield from _chunks(_deroff(text), rng, 800, 6000)


def raw_documents(rng: random.Random) -> Iterator[tuple[str, str]]:
    """(source, normalised text) from every source in turn, until all run out."""
    streams: list[tuple[str, Iterator[str]]] = [
        ("doc", _doc_files(rng)), ("docstring", _docstrings(rng)),
        ("code", _code(rng)), ("man", _man_pages(rng))]
    while streams:
        for item in list(streams):
            name, stream = item
            text = next(stream, None)
            if text is None:
                streams.remove(item)
            else:
                yield name, text


# ---------------------------------------------------------------- uniqueness
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass
class NearIndex:
    """MinHash LSH over word 5-grams of `dedup_words`: `add` refuses a text
    equal to one added before under that normalisation, or estimated at
    `NEAR_UNIQUE_BELOW` Jaccard or more from one."""

    seed: int
    _exact: set[bytes] = field(default_factory=set)
    _buckets: dict[tuple[int, int, int], list[int]] = field(default_factory=dict)
    _signatures: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        gen = np.random.default_rng(self.seed)
        self._a = gen.integers(1, 2**63, PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
        self._b = gen.integers(0, 2**63, PERMUTATIONS, dtype=np.uint64)

    def signature(self, words: Sequence[str]) -> np.ndarray:
        grams = {" ".join(words[i:i + SHINGLE])
                 for i in range(max(1, len(words) - SHINGLE + 1))}
        hashes = np.fromiter((xxhash.xxh64_intdigest(g) for g in grams), dtype=np.uint64,
                             count=len(grams))
        with np.errstate(over="ignore"):
            mixed = (hashes[:, None] * self._a[None, :] + self._b[None, :]) >> np.uint64(32)
        return (mixed & _MASK32).min(axis=0).astype(np.uint32)

    def _bands(self, sig: np.ndarray) -> Iterator[tuple[int, int, int]]:
        for band in range(PERMUTATIONS // BAND_ROWS):
            row = band * BAND_ROWS
            yield band, int(sig[row]), int(sig[row + 1])

    def add(self, text: str) -> bool:
        words = dedup_words(text)
        key = hashlib.blake2b(" ".join(words).encode(), digest_size=16).digest()
        if not words or key in self._exact:
            return False
        sig = self.signature(words)
        candidates = {j for band in self._bands(sig) for j in self._buckets.get(band, ())}
        if candidates:
            others = np.stack([self._signatures[j] for j in candidates])
            if float((others == sig[None, :]).mean(axis=1).max()) >= NEAR_UNIQUE_BELOW:
                return False
        index = len(self._signatures)
        self._exact.add(key)
        self._signatures.append(sig)
        for band in self._bands(sig):
            self._buckets.setdefault(band, []).append(index)
        return True


def _mixtures(pool: Sequence[str], rng: random.Random) -> Iterator[tuple[str, str]]:
    """Documents made of paragraphs drawn from the pool's documents."""
    paras = [p for text in pool for p in paragraphs(text) if len(p) >= 80]
    if len(paras) < MIX_PARAGRAPHS[1] * 4:
        return
    while True:
        picked = rng.sample(paras, rng.randint(*MIX_PARAGRAPHS))
        yield "mix", "\n\n".join(picked)


def passes_prepare_rules() -> Callable[[str], bool]:
    """Whether a text passes prepare's quality rules at their defaults."""
    from engine.workloads.quality import Rules, make_filters, verdict

    filters = make_filters(Rules())
    return lambda text: verdict(text, filters) is None


def _anything(text: str) -> bool:
    return True


def unique_documents(count: int, rng: random.Random, seed: int,
                     keep: Callable[[str], bool] = _anything) -> list[tuple[str, str]]:
    """`count` (source, text) base documents, near-unique among themselves,
    each one `keep` accepts."""
    index = NearIndex(seed)
    out: list[tuple[str, str]] = []
    for source, text in raw_documents(rng):
        if len(out) >= count:
            return out
        if (len(text) >= MIN_CHARS and len(text.split()) >= MIN_WORDS and keep(text)
                and index.add(text)):
            out.append((source, text))
    pool = [text for _, text in out]
    tries = 0
    for source, text in _mixtures(pool, rng):
        if len(out) >= count or tries > MAX_MIX_TRIES * (count - len(pool)):
            break
        tries += 1
        if keep(text) and index.add(text):
            out.append((source, text))
    if len(out) < count:
        raise WorkloadError(f"only {len(out)} unique documents can be made from the text on "
                            f"this machine, {count} asked; lower --documents or the rates")
    return out


# ---------------------------------------------------------------- planting
def near_copy(text: str, changes: int, vocabulary: Sequence[str], rng: random.Random) -> str:
    """`text` with `changes` distinct alphabetic words replaced by words of
    `vocabulary` that differ from them in lower case."""
    spans = [m.span() for m in _WORD.finditer(text)]
    if len(spans) < changes:
        raise ValueError("too few words to change")
    chosen = sorted(rng.sample(spans, changes), reverse=True)
    for start, end in chosen:
        old = text[start:end].lower()
        new = rng.choice(vocabulary)
        while new.lower() == old:
            new = rng.choice(vocabulary)
        text = text[:start] + new + text[end:]
    return text


@dataclass(frozen=True)
class Plan:
    """What to generate. Rates are shares of the `documents` written."""

    documents: int
    exact_rate: float = 0.10
    near_rate: float = 0.05
    files: int = 8
    seed: int = 1234
    compress: str = "none"
    changed_words: tuple[int, int] = (3, 5)
    near_min_words: int = NEAR_MIN_WORDS
    quality_check: bool = True

    @property
    def exact(self) -> int:
        return round(self.documents * self.exact_rate)

    @property
    def near(self) -> int:
        return round(self.documents * self.near_rate)

    @property
    def base(self) -> int:
        return self.documents - self.exact - self.near

    def check(self) -> None:
        if self.documents < 1:
            raise WorkloadError(f"--documents {self.documents}: give at least 1")
        if not (0 <= self.exact_rate and 0 <= self.near_rate
                and self.exact_rate + self.near_rate <= 0.5):
            raise WorkloadError(f"--exact-rate {self.exact_rate} --near-rate {self.near_rate}: "
                                "each copy needs its own original, so the rates must be >= 0 "
                                "and add up to at most 0.5")
        if self.files < 1:
            raise WorkloadError(f"--files {self.files}: give at least 1")
        if self.compress not in COMPRESSIONS:
            raise WorkloadError(f"--compress {self.compress}: choose {', '.join(COMPRESSIONS)}")
        lo, hi = self.changed_words
        if not 1 <= lo <= hi:
            raise WorkloadError(f"--changed-words {lo}-{hi}: give MIN-MAX with 1 <= MIN <= MAX")
        if self.near_min_words < hi:
            raise WorkloadError(f"--near-min-words {self.near_min_words}: give at least the "
                                f"words changed ({hi})")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str


def plant(plan: Plan) -> tuple[list[Document], dict[str, Any]]:
    """The shuffled documents and the truth about them."""
    plan.check()
    rng = random.Random(plan.seed)
    keep = passes_prepare_rules() if plan.quality_check else _anything
    base = unique_documents(plan.base, rng, plan.seed, keep)
    order = list(range(len(base)))
    rng.shuffle(order)
    eligible = [i for i in order if len(base[i][1].split()) >= plan.near_min_words
                and len(_WORD.findall(base[i][1])) >= plan.changed_words[1]]
    vocabulary = sorted({w for _, t in base[:2000] for w in _WORD.findall(t)})
    near_of: list[tuple[int, str]] = []
    for i in eligible:
        if len(near_of) == plan.near:
            break
        copy = near_copy(base[i][1], rng.randint(*plan.changed_words), vocabulary, rng)
        if keep(copy):
            near_of.append((i, copy))
    if len(near_of) < plan.near:
        raise WorkloadError(f"{plan.near} near copies asked, only {len(near_of)} documents "
                            f"have {plan.near_min_words} words or more; lower --near-rate "
                            "or --near-min-words")
    taken = {i for i, _ in near_of}
    exact_of = [i for i in order if i not in taken][:plan.exact]
    rows: list[tuple[str, str, str, int]] = []   # (kind, text, source, original)
    for i, (source, text) in enumerate(base):
        rows.append(("base", text, source, i))
    for i in exact_of:
        rows.append(("exact", base[i][1], base[i][0], i))
    for i, copy in near_of:
        rows.append(("near", copy, base[i][0], i))
    rng.shuffle(rows)
    width = len(str(len(rows) - 1))
    docs: list[Document] = []
    base_id: dict[int, str] = {}
    for n, (kind, text, source, orig) in enumerate(rows):
        doc_id = f"doc-{n:0{width}d}"
        docs.append(Document(doc_id, text, source))
        if kind == "base":
            base_id[orig] = doc_id
    exact: dict[str, str] = {}
    near: dict[str, str] = {}
    for doc, (kind, _, _, orig) in zip(docs, rows, strict=True):
        if kind == "exact":
            exact[doc.id] = base_id[orig]
        elif kind == "near":
            near[doc.id] = base_id[orig]
    originals = set(exact.values()) | set(near.values())
    truth: dict[str, Any] = {
        "format": FORMAT, "plan": {**asdict(plan), "changed_words": list(plan.changed_words)},
        "documents": len(docs), "exact": exact, "near": near,
        "unique": sorted(base_id[i] for i in range(len(base)) if base_id[i] not in originals),
        "sources": dict(Counter(d.source for d in docs)),
        "words": sum(len(d.text.split()) for d in docs),
    }
    return docs, truth


# ---------------------------------------------------------------- files
def _suffix(compress: str) -> str:
    return {"none": ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compress]


def _open_compressed(path: Path, compress: str) -> IO[bytes]:
    raw = open(path, "wb")  # noqa: SIM115 (closed by the wrapper)
    if compress == "gz":
        return cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
    if compress == "zst":
        import zstandard

        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
    return raw


def write(plan: Plan, output: Path) -> dict[str, Any]:
    """Generate the corpus into `output` (files first, truth.json last)."""
    docs, truth = plant(plan)
    output.mkdir(parents=True, exist_ok=True)
    (output / TRUTH).unlink(missing_ok=True)
    data = output / DATA
    if data.is_dir():
        for old in data.glob("part-*"):
            old.unlink()
    data.mkdir(exist_ok=True)
    per = -(-len(docs) // plan.files)
    files: list[dict[str, Any]] = []
    for k in range(plan.files):
        name = f"{DATA}/part-{k:05d}{_suffix(plan.compress)}"
        tmp = data / f".part-{k:05d}.tmp-{os.getpid()}"
        with _open_compressed(tmp, plan.compress) as fh:
            for doc in docs[k * per:(k + 1) * per]:
                fh.write(json.dumps({"id": doc.id, "text": doc.text, "source": doc.source},
                                    ensure_ascii=False).encode() + b"\n")
        os.replace(tmp, output / name)
        files.append({"file": name, "bytes": (output / name).stat().st_size})
    truth["files"] = files
    truth["bytes"] = sum(f["bytes"] for f in files)
    truth["text_bytes"] = sum(len(d.text.encode()) for d in docs)
    write_json_atomic(output / TRUTH, truth)
    return truth


def read_truth(corpus: Path) -> dict[str, Any]:
    path = corpus / TRUTH
    try:
        truth = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WorkloadError(f"{path}: no generated corpus there ({exc}); run python -m "
                            "engine.workloads.corpusgen --output DIR first") from None
    if truth.get("format") != FORMAT:
        raise WorkloadError(f"{path}: format {truth.get('format')!r}, expected {FORMAT}")
    return truth


def read_documents(corpus: Path) -> Iterator[Document]:
    """The documents of a generated corpus, file by file."""
    for entry in read_truth(corpus)["files"]:
        path = corpus / entry["file"]
        raw: IO[bytes]
        if path.name.endswith(".gz"):
            raw = gzip.open(path, "rb")
        elif path.name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        else:
            raw = open(path, "rb")  # noqa: SIM115
        with raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                yield Document(row["id"], row["text"], row["source"])


# ---------------------------------------------------------------- scoring
@dataclass(frozen=True)
class DedupScore:
    """Planted copies removed (their pair left with one document) and unique
    documents lost (a unique document, or both of a pair, gone)."""

    exact_planted: int
    exact_removed: int
    near_planted: int
    near_removed: int
    unique_documents: int
    unique_removed: int

    @property
    def exact_recall(self) -> float:
        return self.exact_removed / self.exact_planted if self.exact_planted else 1.0

    @property
    def near_recall(self) -> float:
        return self.near_removed / self.near_planted if self.near_planted else 1.0

    @property
    def recall(self) -> float:
        planted = self.exact_planted + self.near_planted
        return (self.exact_removed + self.near_removed) / planted if planted else 1.0


def score(truth: dict[str, Any], survivors: dict[str, int]) -> DedupScore:
    """Score a dedup from `survivors`: how many times each document's text
    is in the output (an exact copy and its original share one count)."""
    lost = sum(1 for d in truth["unique"] if survivors.get(d, 0) == 0)
    removed = {"exact": 0, "near": 0}
    for kind in ("exact", "near"):
        for copy, orig in truth[kind].items():
            left = survivors.get(orig, 0) + (survivors.get(copy, 0) if kind == "near" else 0)
            removed[kind] += left == 1
            lost += left == 0
    originals = len(truth["exact"]) + len(truth["near"])
    return DedupScore(len(truth["exact"]), removed["exact"], len(truth["near"]), removed["near"],
                      len(truth["unique"]) + originals, lost)


def shard_documents(prepared: Path) -> Iterator[np.ndarray]:
    """Every document's token ids (end-of-sequence included) in a prepare
    output folder, train and held-out, from manifest.json's shard list."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    dtype = np.dtype(manifest["token_dtype"])
    for shard in manifest["shards"]:
        path = prepared / shard["file"]
        if path.stat().st_size == 0:
            continue
        tokens = np.memmap(path, dtype=dtype, mode="r")
        ends = np.fromfile(f"{path}.index", dtype="<u8")
        start = 0
        for end in ends.tolist():
            yield np.asarray(tokens[start:end])
            start = end


def survivors_in(prepared: Path, corpus: Path) -> dict[str, int]:
    """How many times each generated document is in a prepare output, found
    by its tokens: the output tokenizer's encoding of the text (a fixed point
    of the normalisation) plus end-of-sequence."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(prepared / "tokenizer" / "tokenizer.json"))
    kept = Counter(hashlib.blake2b(doc.tobytes(), digest_size=16).digest()
                   for doc in (d.astype(np.uint32) for d in shard_documents(prepared)))
    eos = json.loads((prepared / "manifest.json").read_text())["eos_id"]
    docs = list(read_documents(corpus))
    counts: dict[str, int] = {}
    for start in range(0, len(docs), 1000):
        batch = docs[start:start + 1000]
        for doc, enc in zip(batch, tokenizer.encode_batch([d.text for d in batch]), strict=True):
            ids = np.asarray([*enc.ids, eos], dtype=np.uint32)
            counts[doc.id] = kept[hashlib.blake2b(ids.tobytes(), digest_size=16).digest()]
    return counts


# ---------------------------------------------------------------- CLI
def _changed_words(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give MIN-MAX, e.g. 3-5") from None


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.workloads.corpusgen",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--documents", type=int, required=True,
                   help="documents written, copies included")
    p.add_argument("--exact-rate", type=float, default=0.10, help="share of exact copies")
    p.add_argument("--near-rate", type=float, default=0.05, help="share of near copies")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--compress", choices=COMPRESSIONS, default="none")
    p.add_argument("--changed-words", type=_changed_words, default=(3, 5),
                   help="words replaced in a near copy, MIN-MAX (default 3-5)")
    p.add_argument("--near-min-words", type=int, default=NEAR_MIN_WORDS,
                   help="words a near copy's original has at least")
    p.add_argument("--keep-low-quality", action="store_true",
                   help="keep documents that prepare's default quality rules remove")
    return p.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.documents, args.exact_rate, args.near_rate, args.files, args.seed,
                args.compress, args.changed_words, args.near_min_words,
                not args.keep_low_quality)
    truth = write(plan, args.output)
    print(json.dumps({"output": str(args.output), "documents": truth["documents"],
                      "exact": len(truth["exact"]), "near": len(truth["near"]),
                      "unique": len(truth["unique"]), "bytes": truth["bytes"],
                      "sources": truth["sources"]}))
    return 0


if __name__ == "__main__":
    run_main(main)
