"""Normalisation and the Gopher-style quality rules of prepare.

Contract
========

- `normalise` is what every later stage sees (and what the exact dedup
  hashes and the held-out split hashes): Unicode NFC, ``\\r\\n`` and ``\\r`` to
  ``\\n``, every run of other whitespace inside a line to one space, lines
  stripped, runs of blank lines to one blank line (paragraphs kept), the text
  stripped. It is idempotent.
- The rules are datatrove's: `GopherQualityFilter` (word counts, mean word
  length, ``#`` and ellipsis per word, bullet and ellipsis lines, the share of
  words with a letter, stop words) and `GopherRepetitionFilter` with only its
  duplicate-line share on, both called through their ``filter`` method with
  a whitespace word tokenizer (datatrove's ``"en"`` is spaCy: an extra
  dependency and 4x slower). `Rules` names each option; 0 turns a rule off.
  A document empty after normalisation is removed as ``empty``.
- `QualityStep` applies them in that order and counts, per task, the
  documents that passed (``kept``) and those each rule removed under the
  manifest's names (`REASONS` maps datatrove's reasons to them): counter file
  ``quality`` of the filter stage.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from engine.workloads.prepare_counts import Counts

_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")

#: datatrove's filter reasons -> the manifest's "removed" keys.
REASONS = {
    "gopher_short_doc": "min_words",
    "gopher_long_doc": "max_words",
    "gopher_below_avg_threshold": "mean_word_length",
    "gopher_above_avg_threshold": "mean_word_length",
    "gopher_too_many_hashes": "symbol_ratio",
    "gopher_too_many_ellipsis": "symbol_ratio",
    "gopher_too_many_bullets": "bullet_lines",
    "gopher_too_many_end_ellipsis": "ellipsis_lines",
    "gopher_below_alpha_threshold": "alpha_ratio",
    "gopher_enough_stop_words": "stop_words",
    "dup_line_frac": "duplicate_lines",
    "empty": "empty",
}


def normalise(text: str) -> str:
    """See the module docstring."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


class Whitespace(WordTokenizer):
    """Words are what `str.split` gives; sentences are lines."""

    def __init__(self) -> None:
        super().__init__()

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.split("\n") if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError("prepare needs no sentence spans")


@dataclass(frozen=True)
class Rules:
    """The quality options (0 turns a rule off); field = option name with
    dashes (``min_words`` is ``--min-words``)."""

    min_words: int = 20
    max_words: int = 100_000
    min_mean_word_length: float = 3
    max_mean_word_length: float = 10
    max_symbol_ratio: float = 0.1
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_ratio: float = 0.6
    min_stop_words: int = 0
    max_duplicate_line_fraction: float = 0.3

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _off(value: float) -> float | None:
    return value or None


def make_filters(rules: Rules) -> tuple[GopherQualityFilter, GopherRepetitionFilter]:
    words = Whitespace()
    quality = GopherQualityFilter(
        min_doc_words=_off(rules.min_words), max_doc_words=_off(rules.max_words),
        min_avg_word_length=_off(rules.min_mean_word_length),
        max_avg_word_length=_off(rules.max_mean_word_length),
        max_symbol_word_ratio=_off(rules.max_symbol_ratio),
        max_bullet_lines_ratio=_off(rules.max_bullet_line_fraction),
        max_ellipsis_lines_ratio=_off(rules.max_ellipsis_line_fraction),
        max_non_alpha_words_ratio=_off(rules.min_alpha_ratio),
        min_stop_words=_off(rules.min_stop_words),
        language=words)
    repetition = GopherRepetitionFilter(
        dup_line_frac=_off(rules.max_duplicate_line_fraction), dup_para_frac=None,
        dup_line_char_frac=None, dup_para_char_frac=None, top_n_grams=(), dup_n_grams=(),
        language=words)
    return quality, repetition


def verdict(text: str, filters: tuple[GopherQualityFilter, GopherRepetitionFilter]
            ) -> str | None:
    """The manifest name of the first rule `text` (normalised) breaks, or
    None when it passes every one."""
    from datatrove.data import Document

    if not text.split():
        return "empty"
    doc = Document(text=text, id="")
    for rule in filters:
        result = rule.filter(doc)
        if result is not True:
            reason = result[1] if isinstance(result, tuple) else "quality"
            return REASONS.get(reason, reason)
    return None


class QualityStep(PipelineStep):
    """Normalises every document and drops those a rule removes, counting."""

    name = "llmconsole normalise + Gopher rules"
    type = "🔻 - FILTER"

    def __init__(self, rules: Rules, work: str) -> None:
        super().__init__()
        self.rules = rules
        self.work = work

    def run(self, data: DocumentsPipeline = None, rank: int = 0,
            world_size: int = 1) -> DocumentsPipeline:
        filters = make_filters(self.rules)
        counts = Counts(Path(self.work), "filter", "quality", rank)
        counts.values.update(kept=0)
        for doc in data or ():
            doc.text = normalise(doc.text)
            reason = verdict(doc.text, filters)
            if reason is None:
                counts.add("kept")
                counts.flush()
                yield doc
            else:
                counts.add(reason)
                counts.flush()
        counts.finish()
