"""The Pareto frontier of measured rows: the rows no other row beats on every
measure at once. Pure, no dependencies.

Every key is minimised (size, latency, perplexity). Row a dominates row b
when a is no worse than b on every key and better on at least one; the
frontier is the rows no row dominates. Two rows with equal measures do not
dominate each other, so both stay. A row with a missing or non-finite value
of some key is left out: it is neither on the frontier nor dominates any
row (it was not measured, so it cannot be ranked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _values(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[float, ...] | None:
    out = []
    for key in keys:
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            return None
        out.append(float(value))
    return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` everywhere and better somewhere
    (lower is better)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and \
        any(x < y for x, y in zip(a, b, strict=True))


def frontier(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[int]:
    """Indices (ascending) of the rows on the frontier over `keys`, all
    minimised. O(n^2): a search has tens of rows."""
    if not keys:
        raise ValueError("frontier needs at least one key")
    points = [_values(r, keys) for r in rows]
    ranked = [(i, p) for i, p in enumerate(points) if p is not None]
    return [i for i, p in ranked if not any(dominates(q, p) for _, q in ranked)]
