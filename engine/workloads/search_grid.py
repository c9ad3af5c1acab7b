"""What `compress --search` tries and which result it keeps: the ``--grid``
and ``--pick`` syntax, parsed into candidates and a rule. Pure: the standard
library only (no torch), so the engine checks a profile's grid at submit
with the very parser the workload runs (`engine.workloads.options`).

The grid
========

``--grid "layers=0,1 heads=1,0.5 channels=1,0.5 int8=off,on"``: space-separated
``KEY=V1,V2,...`` items; every combination of the values is a candidate
(the cartesian product). Keys, each at most once in a grid:

- ``layers``: decoder layers dropped (integers >= 0; which ones is measured,
  `engine.workloads.structured`);
- ``heads``: the share of key/value head groups kept (numbers in (0, 1]);
- ``channels``: the share of MLP intermediate channels kept (in (0, 1]);
- ``int8``: ``off`` and/or ``on`` (int8 quantization after any pruning).

A key left out stays at the unpruned value (0 layers, 1, 1, off). Grids
joined by ``;`` are tried together, each its own product (``"layers=0,1
int8=off,on; heads=0.5 channels=0.5"`` is 4 + 1 candidates), the same
candidate once. The unpruned fp32 model is always the first row (the
reference) and is measured like the others. At most MAX_CANDIDATES.

The pick
========

``--pick RULE``: which frontier row's model is saved in ``<output>/model``.

- ``fastest-within:F`` (the default, F = 0.05): the lowest latency among the
  frontier rows whose perplexity is at most (1 + F) x the reference's;
- ``smallest-within:F``: the smallest weight files among those rows;
- ``fastest``, ``smallest``: the same with no bound on perplexity;
- ``best``: the lowest perplexity (ties: the lowest latency).

Ties go to the faster (``smallest``, ``best``) or the smaller (``fastest``)
row, then the earlier one. Some
frontier row always qualifies: the reference is on the frontier or
dominated by one whose perplexity is no higher.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KEYS = ("layers", "heads", "channels", "int8")
DEFAULT_GRID = "layers=0,1 heads=1,0.5 channels=1,0.5 int8=off,on"
DEFAULT_PICK = "fastest-within:0.05"
MAX_CANDIDATES = 64
RULES = ("fastest-within", "smallest-within", "fastest", "smallest", "best")
EXAMPLE = f'"{DEFAULT_GRID}"'
#: What a grid item is, said in every error.
SYNTAX = (f"KEY=V1,V2 items separated by spaces, KEY one of {', '.join(KEYS)} "
          f"(e.g. {EXAMPLE})")


class GridError(ValueError):
    """A --grid or --pick text that does not parse; the message is one line
    naming the item, the key and what it takes."""


@dataclass(frozen=True)
class Candidate:
    """One point of the grid."""

    layers: int = 0          # decoder layers dropped
    heads: float = 1.0       # share of key/value head groups kept
    channels: float = 1.0    # share of MLP intermediate channels kept
    int8: bool = False

    @property
    def structured(self) -> bool:
        """True when layers, heads or channels are pruned."""
        return bool(self.layers) or self.heads < 1 or self.channels < 1

    @property
    def is_reference(self) -> bool:
        return not self.structured and not self.int8

    @property
    def label(self) -> str:
        """'fp32' for the reference, else e.g. 'L-1 H0.5 C0.5 int8'."""
        if self.is_reference:
            return "fp32"
        parts = ([f"L-{self.layers}"] if self.layers else []) + \
            ([f"H{self.heads:g}"] if self.heads < 1 else []) + \
            ([f"C{self.channels:g}"] if self.channels < 1 else []) + \
            (["int8"] if self.int8 else [])
        return " ".join(parts)

    def settings(self) -> dict[str, Any]:
        return {"layers": self.layers, "heads": self.heads, "channels": self.channels,
                "int8": self.int8}


@dataclass(frozen=True)
class Grid:
    """A parsed --grid: its text and its candidates, the reference first."""

    text: str
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "candidates": len(self.candidates),
                **{k: sorted({getattr(c, k) for c in self.candidates}) for k in KEYS}}

    def __str__(self) -> str:  # argparse's --help shows the default so
        return self.text


def _values(item: str, key: str, text: str) -> list[Any]:
    raw = [v.strip() for v in text.split(",")]
    if not text or any(not v for v in raw):
        example = {"layers": "0,1", "int8": "off,on"}.get(key, "1,0.5")
        raise GridError(f"--grid {item!r}: {key} needs values, V1,V2 with no empty one; "
                        f"e.g. {key}={example}")
    out: list[Any] = []
    for v in raw:
        if key == "layers":
            if not v.isdigit():
                raise GridError(f"--grid {item!r}: layers takes whole numbers of decoder layers "
                                f"to drop (0, 1, 2, ...), not {v!r}")
            out.append(int(v))
        elif key == "int8":
            if v not in ("off", "on"):
                raise GridError(f"--grid {item!r}: int8 takes off and/or on, not {v!r}")
            out.append(v == "on")
        else:
            try:
                share = float(v)
            except ValueError:
                share = math.nan
            if not 0 < share <= 1:
                raise GridError(f"--grid {item!r}: {key} takes shares kept in (0, 1] "
                                f"(1 keeps all, 0.5 half), not {v!r}")
            out.append(share)
    return list(dict.fromkeys(out))


def _product(part: str) -> list[Candidate]:
    chosen: dict[str, list[Any]] = {}
    for item in part.split():
        key, sep, values = item.partition("=")
        if not sep:
            raise GridError(f"--grid {item!r}: not KEY=V1,V2; expected {SYNTAX}")
        if key not in KEYS:
            raise GridError(f"--grid {item!r}: unknown key {key!r}; expected {SYNTAX}")
        if key in chosen:
            raise GridError(f"--grid {item!r}: {key} is given twice; list every value once, "
                            f"{key}=V1,V2")
        chosen[key] = _values(item, key, values)
    axes = [chosen.get(k, [getattr(Candidate(), k)]) for k in KEYS]
    return [Candidate(*combo) for combo in itertools.product(*axes)]


def parse_grid(text: str) -> Grid:
    """The candidates of a --grid text (see the module's doc); raises
    `GridError` with one line naming the problem."""
    parts = text.split(";")
    if not text.strip() or any(not p.strip() for p in parts):
        raise GridError(f"--grid {text!r}: empty; expected {SYNTAX}, grids joined by ';'")
    found: dict[Candidate, None] = {Candidate(): None}
    for part in parts:
        found.update(dict.fromkeys(_product(part)))
    if len(found) > MAX_CANDIDATES:
        raise GridError(f"--grid {text!r}: {len(found)} candidates; at most {MAX_CANDIDATES}: "
                        "give fewer values, or join smaller grids with ';'")
    return Grid(" ".join(text.split()), tuple(found))


@dataclass(frozen=True)
class Pick:
    """A parsed --pick: the rule and its perplexity bound (None: no bound)."""

    text: str
    rule: str                # "fastest", "smallest" or "best"
    within: float | None

    def __str__(self) -> str:
        return self.text


def parse_pick(text: str) -> Pick:
    """A --pick text (see the module's doc); raises `GridError`."""
    rule, sep, bound = text.strip().partition(":")
    expected = ("fastest-within:F, smallest-within:F (F a perplexity increase such as 0.05), "
                "fastest, smallest or best")
    if rule not in RULES or bool(sep) != rule.endswith("-within"):
        raise GridError(f"--pick {text!r}: unknown rule; expected {expected}")
    if not sep:
        return Pick(text.strip(), rule, None)
    try:
        within = float(bound)
    except ValueError:
        within = math.nan
    if not (math.isfinite(within) and within >= 0):
        raise GridError(f"--pick {text!r}: {bound!r} is not a share >= 0; expected {expected}")
    return Pick(text.strip(), rule.removesuffix("-within"), within)


def _number(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return math.inf
    return float(value)


def choose(rows: Sequence[Mapping[str, Any]], frontier: Sequence[int], reference: int,
           pick: Pick) -> int:
    """The index (into `rows`) of the frontier row `pick` keeps. `reference`
    is the reference row's index; rows carry ``size_bytes``, ``latency_ms``,
    ``perplexity``. Raises ValueError for an empty frontier."""
    if not frontier:
        raise ValueError("no frontier rows to pick from")
    allowed = list(frontier)
    if pick.within is not None:
        bound = _number(rows[reference], "perplexity") * (1 + pick.within)
        allowed = [i for i in frontier if _number(rows[i], "perplexity") <= bound] or allowed
    size, speed, ppl = (lambda i: _number(rows[i], "size_bytes"),
                        lambda i: _number(rows[i], "latency_ms"),
                        lambda i: _number(rows[i], "perplexity"))
    order = {"fastest": lambda i: (speed(i), size(i), i),
             "smallest": lambda i: (size(i), speed(i), i),
             "best": lambda i: (ppl(i), speed(i), i)}[pick.rule]
    return min(allowed, key=order)
